"""One SFT phase of benchmarks/learning.py's setup (its Plan and _base: the tiny model, 112 px, batch 16,
cosine lr) on the dataset in $DATA, with TrainConfig overrides as JSON ("plan": Plan overrides; "model":
"small" is a 4-layer, 128-wide LM with a 4-layer, 64-wide tower, registered by pilot_models.py).

  DATA=DIR sft.py STEPS LR OUT ['{"freeze_vision": true, "model": CKPT, ...}']
"""
import sys, json, os, time, dataclasses
from pathlib import Path
ROOT = Path(__file__).resolve().parents[2]; sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "benchmarks")); sys.path.insert(0, str(ROOT / "benchmarks/pilots"))

import learning as L
import pilot_models  # noqa: F401  (registers "small")
from absl import flags; flags.FLAGS.mark_as_parsed()
steps=int(sys.argv[1]); lr=float(sys.argv[2]); out=Path(sys.argv[3]); extra=json.loads(sys.argv[4]) if len(sys.argv)>4 else {}
planx = extra.pop("plan", {})
plan=L.Plan(**planx)
data=Path(os.environ["DATA"])
cfg=L._base(plan,0,data,out,mode="sft",steps=steps,prompts_per_step=16,lr=lr,eval_every=max(1,steps//10))
extra={k: tuple(v) if isinstance(v, list) else v for k, v in extra.items()}
cfg=dataclasses.replace(cfg, **extra)
ph=L.run_phase("sft",cfg,False)
json.dump(ph,open(out/"phase.json","w"),indent=1)
print([(c["step"],round(c["eval_accuracy"],3)) for c in ph["curve"]], ph["train_seconds"])
