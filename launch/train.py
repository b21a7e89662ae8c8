"""Training entry point, single- or multi-host.

  python launch/train.py --config tiny                         # CPU, default synthesized HopChain data
  python launch/train.py --config tiny_sft                     # SFT on gold rationales
  python launch/train.py --config qwen2_5_vl_3b --model /ckpt/Qwen2.5-VL-3B-Instruct \
      --data /data/rlvr:1.0 --data /data/hopchain:0.3          # mixture weights as in the paper
  python launch/train.py --config tiny --resume                # continue exactly from the last checkpoint
  python launch/train.py --config tiny --mode vision --steps 300 --out runs/warm --export-hf   # perception warm-up
  python launch/train.py --config tiny_sft --model runs/warm/hf --freeze-vision   # SFT on the warmed-up tower

Multi-host: every process runs the same command with --coordinator HOST:PORT --num-processes N
--process-id I (or the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID environment
variables); each process reads its own shard of the data, only process 0 writes logs and metadata.
--local-devices K simulates K CPU devices per process (tests).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

if not __package__:   # run as a script from a checkout (python launch/train.py): the checkout's library
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", help="preset name (configs/train.py) or a config JSON file")
    p.add_argument("--model", help="override: preset name or checkpoint directory")
    p.add_argument("--data", action="append", help="DIR:WEIGHT dataset in the mixture (repeatable)")
    p.add_argument("--mode", choices=["rl", "sft", "vision"])
    p.add_argument("--steps", type=int)
    p.add_argument("--loss", help="policy loss of RL (rl/losses.py): sapo (default), grpo, dr_grpo, gspo")
    p.add_argument("--freeze-vision", action="store_true", default=None,
                   help="keep the vision tower fixed (e.g. after a --mode vision warm-up)")
    p.add_argument("--train-variants", nargs="+", metavar="VARIANT",
                   help="train only on records of these variants (full, half, single, external): the paper's "
                        "ablation; held-out evaluation is not restricted")
    p.add_argument("--out", help="run directory (checkpoints, metrics, config)")
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--max-steps", type=int, help="stop after this many steps in total (the schedule still "
                                                 "follows --steps)")
    p.add_argument("--coordinator", default=os.environ.get("JAX_COORDINATOR_ADDRESS"))
    p.add_argument("--num-processes", type=int, default=int(os.environ.get("JAX_NUM_PROCESSES", "1")))
    p.add_argument("--process-id", type=int, default=int(os.environ.get("JAX_PROCESS_ID", "0")))
    p.add_argument("--local-devices", type=int, help="simulated CPU devices per process")
    p.add_argument("--export-hf", action="store_true",
                   help="after training, write the weights as a Hugging Face checkpoint to OUT/hf (with the tokenizer)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    if args.local_devices:  # must happen before JAX initialises its backends
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.local_devices}")
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    if args.num_processes > 1:
        if not args.coordinator:
            print("launch/train.py: --num-processes > 1 needs --coordinator HOST:PORT", file=sys.stderr)
            return 2
        jax.distributed.initialize(args.coordinator, num_processes=args.num_processes, process_id=args.process_id)
    from absl import flags
    flags.FLAGS.mark_as_parsed()  # Grain's multiprocessing reads absl flags (SPEC §7)

    from hopchain_jax.configs.train import PRESETS
    from hopchain_jax.rl.config import TrainConfig
    from hopchain_jax.rl.trainer import Trainer
    if args.config in PRESETS:
        cfg = PRESETS[args.config]
    elif Path(args.config).is_file():
        cfg = TrainConfig.from_json(json.loads(Path(args.config).read_text()))
    else:
        print(f"launch/train.py: --config {args.config!r} is neither a preset ({sorted(PRESETS)}) nor a JSON file",
              file=sys.stderr)
        return 2
    overrides = {k: v for k, v in (("model", args.model), ("mode", args.mode), ("steps", args.steps),
                                   ("out_dir", args.out), ("seed", args.seed),
                                   ("freeze_vision", args.freeze_vision), ("loss", args.loss),
                                   ("train_variants", tuple(args.train_variants or ()) or None)) if v is not None}
    if args.data:
        try:
            overrides["data"] = tuple((d.rsplit(":", 1)[0], float(d.rsplit(":", 1)[1]) if ":" in d else 1.0)
                                      for d in args.data)
        except ValueError:
            print(f"launch/train.py: --data takes DIR:WEIGHT, got {args.data}", file=sys.stderr)
            return 2
    try:   # a bad option or dataset is named by the config or the trainer: say it, no traceback
        cfg = cfg.replace(**overrides)
        trainer = Trainer(cfg, progress=not args.no_progress)
    except ValueError as e:
        print(f"launch/train.py: {e}", file=sys.stderr)
        return 2
    try:
        if args.resume:
            if trainer.restore():
                print(f"resumed from step {trainer.step}", file=sys.stderr)
            else:
                print(f"--resume: no checkpoint in {cfg.out_dir}/checkpoints, starting fresh", file=sys.stderr)
        elif trainer.checkpointer.latest_step() is not None:
            print(f"launch/train.py: {cfg.out_dir} already holds checkpoints; pass --resume to continue or choose "
                  "a new --out", file=sys.stderr)
            return 2
        history = trainer.train(max_steps=args.max_steps)
        if args.export_hf:
            path = trainer.export_hf()
            if jax.process_index() == 0:
                print(f"wrote a Hugging Face checkpoint to {path}", file=sys.stderr)
        evals = getattr(trainer, "eval_history", [])
        if evals and cfg.mode == "vision" and jax.process_index() == 0:
            first, last_eval = evals[0], evals[-1]
            heads = " ".join(f"{k[5:-9]} {first[k]:.3f} -> {last_eval[k]:.3f}" for k in sorted(last_eval)
                             if k.endswith("_accuracy"))
            print(f"held-out token accuracy ({len(trainer.eval_prompts)} images, OUT/heldout.json), step "
                  f"{first['step']} -> {last_eval['step']}: {heads}", file=sys.stderr)
        elif evals and jax.process_index() == 0:
            first, last_eval = evals[0], evals[-1]
            print(f"held-out greedy accuracy ({len(trainer.eval_prompts)} items, OUT/heldout.json): "
                  f"{first['eval_accuracy']:.3f} at step {first['step']} -> {last_eval['eval_accuracy']:.3f} at step "
                  f"{last_eval['step']} (format failures {last_eval['eval_format_failure']:.3f}, truncated "
                  f"{last_eval['eval_truncated']:.3f})", file=sys.stderr)
        if history:  # every process reports, so a launcher can check they agree
            last = history[-1]
            print(json.dumps({"process": jax.process_index(), "step": trainer.step, "loss": last["loss"],
                              "losses": [h["loss"] for h in history],
                              **{k: last[k] for k in ("reward_mean", "zero_variance_groups", "truncation_rate",
                                                      "dropped_responses") if k in last},
                              **({"eval_accuracy": [e["eval_accuracy"] for e in evals]}
                                 if evals and "eval_accuracy" in evals[0] else {})}))
    finally:
        trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
