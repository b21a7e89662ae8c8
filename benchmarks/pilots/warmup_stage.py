"""The trainer's perception warm-up (`--mode vision`, rl/vision_warmup.py) with benchmarks/learning.py's
settings (its Plan and _base: the tiny model, 112 px images), on a `hopchain synth` dataset; prints the
held-out token accuracy of each head every steps / 6 steps and exports OUT/hf (the start of a frozen-tower
SFT: pilots/sft.py with '{"model": "OUT/hf", "freeze_vision": true}').

  warmup_stage.py DATA OUT STEPS LR BATCH
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import learning as L  # noqa: E402
from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()
data, out, steps, lr, batch = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
cfg = L._base(L.Plan(), 0, data, out, mode="vision", steps=steps, prompts_per_step=batch, lr=lr,
              eval_every=max(1, steps // 6))
phase = L.run_phase("vision", cfg, False)
json.dump(phase, open(out / "phase.json", "w"), indent=1)
for point in phase["curve"]:
    print({k: round(v, 3) for k, v in point.items()})
print(f"{phase['train_seconds']:.0f} s of training")
