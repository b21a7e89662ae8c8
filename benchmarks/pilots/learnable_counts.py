"""The learnable world with the scene-count warm-up (session 5): learnable data (seed 0, IMAGES training
images, a 200-image test set of seed 10,000), the trainer's warm-up (`--mode vision`, now with the per-token
`counts` head) for WARM steps, then SFT on the gold rationales with the tower frozen for SFT steps, then
`hopchain eval` with the image control; prints overall accuracy, what needs the image, and accuracy by op.

  learnable_counts.py OUT IMAGES WARM SFT [FORMS]     FORMS: comma-separated LearnableConfig forms kept
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


def main() -> None:
    import dataclasses
    from hopchain_jax.eval.run import EvalSettings, evaluate_dataset
    from hopchain_jax.synth.learnable import HALF_FORMS, SINGLE_FORMS
    from hopchain_jax.synth.pipeline import run_synthesis
    from hopchain_jax.synth.presets import learnable_config
    from hopchain_jax.vlm.engine_backend import EngineChatBackend
    out, images, warm_steps, sft_steps = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    forms = sys.argv[5].split(",") if len(sys.argv) > 5 else None
    kw = {} if forms is None else {"single_forms": tuple(f for f in SINGLE_FORMS if f in forms),
                                   "half_forms": tuple(f for f in HALF_FORMS if f in forms)}
    data, test = out / "data", out / "test"
    if not data.exists():
        run_synthesis(data, learnable_config(seed=0, num_images=images, **kw), workers=2, progress=False)
        run_synthesis(test, learnable_config(seed=10_000, num_images=200, **kw), workers=2, progress=False)
    plan = L.Plan()
    warm = L.run_phase("vision", L._base(plan, 0, data, out / "vision", mode="vision", steps=warm_steps,
                                         prompts_per_step=plan.vision_batch, lr=plan.vision_lr,
                                         eval_every=max(1, warm_steps // 4)), False)
    print("warm-up", json.dumps({k: round(v, 3) for k, v in warm["curve"][-1].items()}), f"{warm['train_seconds']:.0f} s",
          flush=True)
    sft = L.run_phase("sft", L._base(plan, 0, data, out / "sft", mode="sft", steps=sft_steps, model=warm["hf"],
                                     freeze_vision=True, prompts_per_step=plan.sft_batch, lr=plan.sft_lr,
                                     eval_every=max(1, sft_steps // 5)), False)
    print("sft curve", [(c["step"], round(c["eval_accuracy"], 3)) for c in sft["curve"]], f"{sft['train_seconds']:.0f} s",
          flush=True)
    backend = EngineChatBackend(sft["hf"], max_slots=64, cache_dir=out / "eval" / "cache")
    s = evaluate_dataset(test, backend, out / "eval", EvalSettings(max_tokens=plan.max_new_tokens, variants=L.VARIANTS,
                                                                   image_control=True), progress=False)
    acc, ctl = s["overall"]["mean@1"], s["image_control"]["needs_image"]
    print(f"held-out {100 * acc['value']:.1f} [{100 * acc['low']:.1f}, {100 * acc['high']:.1f}] of {s['overall']['items']}; "
          f"needs the image {json.dumps(ctl)}; blind {json.dumps(s['blind']['most_common'])}")
    print("by op", {k: (g["items"], round(100 * g["mean@1"]["value"], 1)) for k, g in s["by"]["op"].items()})


if __name__ == "__main__":
    main()
