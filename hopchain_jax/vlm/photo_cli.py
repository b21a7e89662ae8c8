"""`hopchain synth --images PHOTOS --out DIR --vlm SPEC --sam3 SAM3_DIR [...]`: flags and the run.

    hopchain synth --images photos/ --out data/photos \\
        --vlm Qwen/Qwen3-VL-235B-A22B-Thinking@http://localhost:8000/v1 \\
        --sam3 checkpoints/sam3 --calibrator checkpoints/Qwen2.5-VL-7B-Instruct

SPEC: a checkpoint directory (run on our JAX engine) or MODEL@URL (any OpenAI-compatible endpoint).
--vlm serves stages 1 and 3 and, unless --solver is given, the solvers of stage 4 (then the summary warns
that the writer grades its own queries; it warns too when no --calibrator is given).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hopchain_jax.vlm.backends import SPEC_HELP


def add_photo_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model-driven stages (with --images)")
    g.add_argument("--vlm", help=f"stage 1 + 3 model (and default solver): {SPEC_HELP}")
    g.add_argument("--sam3", help="SAM3 checkpoint directory (transformers Sam3Model) for stage 2")
    g.add_argument("--solver", action="append", help="stage-4 solver model (repeatable; default: --vlm)")
    g.add_argument("--calibrator", help="weaker model for difficulty calibration (default: none, no calibration)")
    g.add_argument("--solver-samples", type=int, default=4,
                   help="solver answers per query, each its own request and seed (default 4, the paper's four)")
    g.add_argument("--solvers-required", type=int,
                   help="how many of them must give the query's answer (default: all, the paper's unanimity)")
    g.add_argument("--calibration-samples", type=int, default=8, help="calibrator samples per query (default 8)")
    g.add_argument("--combos-per-image", type=int, default=4, help="sets of 3-6 instances offered per image (default 4)")
    g.add_argument("--sam3-score", type=float, default=0.5, help="SAM3 instance score threshold (default 0.5)")
    g.add_argument("--max-image-side", type=int, default=2048, help="downscale larger photos to this side (px)")
    g.add_argument("--cache-dir", help="model response cache (default OUT/vlm-cache): a rerun repeats no call")
    g.add_argument("--max-tokens", type=int, default=4096, help="answer budget of every model call (default 4096)")
    g.add_argument("--engine-max-pixels", type=int,
                   help="checkpoint models: cap on resized image pixels (fewer image tokens)")


def run_photos(args: argparse.Namespace) -> int:
    """Build the four stages from the flags and run them (see photo_pipeline)."""
    missing = [flag for flag, value in (("--out", args.out), ("--vlm", args.vlm), ("--sam3", args.sam3)) if not value]
    if missing:
        print(f"hopchain synth --images: {', '.join(missing)} required. Example:\n  hopchain synth --images PHOTOS "
              "--out data/photos --vlm MODEL@http://localhost:8000/v1 --sam3 SAM3_DIR\n"
              f"(--vlm: {SPEC_HELP}; --sam3: a transformers Sam3Model checkpoint directory)", file=sys.stderr)
        return 2
    from hopchain_jax.vlm.backends import BackendPool, describe_spec
    from hopchain_jax.vlm.categories import VLMCategoryIdentifier
    from hopchain_jax.vlm.photo_pipeline import (PhotoStages, PhotoSynthConfig, format_photo_summary,
                                                 run_photo_synthesis)
    from hopchain_jax.vlm.query_writer import VLMQueryWriter
    from hopchain_jax.vlm.solvers import AgreementVerifier
    try:
        solvers = args.solver or [args.vlm]
        specs = [("--vlm", args.vlm)] + [("--solver", s) for s in solvers] + (
            [("--calibrator", args.calibrator)] if args.calibrator else [])
        for flag, spec in specs:  # every flag checked before any model loads
            describe_spec(spec, flag)
        if not Path(args.sam3, "config.json").exists():
            raise ValueError(f"--sam3 {args.sam3}: no config.json there; give a transformers Sam3Model checkpoint "
                             "directory")
        if args.solver_samples < 1 or args.calibration_samples < 1 or args.combos_per_image < 1:
            raise ValueError("--solver-samples, --calibration-samples and --combos-per-image must be >= 1")
        required = args.solver_samples if args.solvers_required is None else args.solvers_required
        if not 1 <= required <= args.solver_samples:
            raise ValueError(f"--solvers-required {required}: must lie in 1..--solver-samples ({args.solver_samples})")
        models = {"categories": args.vlm, "segmentation": str(Path(args.sam3).resolve()), "queries": args.vlm,
                  "solvers": solvers, "solver_samples": args.solver_samples, "calibrator": args.calibrator,
                  "calibration_samples": args.calibration_samples, "combos_per_image": args.combos_per_image,
                  "sam3_score": args.sam3_score, "max_tokens": args.max_tokens,
                  "engine_max_pixels": args.engine_max_pixels,
                  # only when set: the default (all agree) is what runs made before the flag used, so they resume
                  **({"solvers_required": required} if args.solvers_required is not None else {})}
        config = PhotoSynthConfig(images=str(Path(args.images).resolve()), seed=args.seed,
                                  images_per_shard=args.images_per_shard, max_image_side=args.max_image_side,
                                  models=models)
        pool = BackendPool(args.cache_dir or Path(args.out) / "vlm-cache", max_pixels=args.engine_max_pixels)
        from hopchain_jax.vlm.sam3 import Sam3Segmenter
        vlm = pool.get(args.vlm, "--vlm")
        stages = PhotoStages(
            identifier=VLMCategoryIdentifier(vlm, max_tokens=args.max_tokens),
            segmenter=Sam3Segmenter.from_pretrained(args.sam3, score_threshold=args.sam3_score),
            writer=VLMQueryWriter(vlm, combos_per_image=args.combos_per_image, max_tokens=args.max_tokens),
            verifier=AgreementVerifier([pool.get(s, "--solver") for s in solvers],
                                       solver_samples=args.solver_samples, required=required,
                                       calibrator=pool.get(args.calibrator, "--calibrator") if args.calibrator else None,
                                       calibration_samples=args.calibration_samples, max_tokens=args.max_tokens))
        summary = run_photo_synthesis(args.out, config, stages, progress=not args.no_progress)
    except (ValueError, OSError) as e:
        print(f"hopchain synth --images: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1) if args.json else format_photo_summary(summary))
    if summary.get("pending"):   # not final: a rerun of the same command retries exactly the unwritten shards
        print(f"hopchain synth --images: {summary['pending']['items']} items could not reach the model: rerun the "
              "same command to retry", file=sys.stderr)
        return 1
    return 0
