"""Screen warm-up settings on the learnable world (session 6): the trainer's `--mode vision` stage only, on
seed-0 learnable data (IMAGES images, made once as OUT/../data<IMAGES>), printing each held-out evaluation's
head accuracies (counts_present_accuracy: the scene count of the categories present, the quantity the count
questions ask for).

  warm_screen.py OUT IMAGES STEPS MODEL LR     MODEL: tiny | small (pilot_models.py: a 4-layer, 64-wide tower)
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks/pilots"))
import pilot_models  # noqa: E402,F401  (registers "small")
import learning as L  # noqa: E402
from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()


def main() -> None:
    from hopchain_jax.synth.pipeline import run_synthesis
    from hopchain_jax.synth.presets import learnable_config
    out, images, steps, model, lr = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
    data = out.parent / f"data{images}"
    if not data.exists():
        run_synthesis(data, learnable_config(seed=0, num_images=images), workers=2, progress=False)
    plan = L.Plan()
    warm = L.run_phase("vision", L._base(plan, 0, data, out, mode="vision", steps=steps, model=model,
                                         prompts_per_step=plan.vision_batch, lr=lr, eval_every=max(1, steps // 4)), False)
    for c in warm["curve"]:
        print(json.dumps({k: round(v, 3) for k, v in c.items() if "accuracy" in k or k == "step"}), flush=True)
    print(f"{warm['train_seconds']:.0f} s")


if __name__ == "__main__":
    main()
