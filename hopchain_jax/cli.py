"""The `hopchain` command.

  hopchain synth --out DIR                 procedural HopChain data (no downloads, no weights)
  hopchain synth --images PHOTOS --out DIR --vlm SPEC --sam3 DIR   the paper's model-driven stages on photos
  hopchain export DIR --jsonl FILE         schema-v2 JSON Lines [--calibration F --drop-too-easy --verdicts F]
  hopchain inspect DIR --html OUT.html     gallery of queries with instance outlines
  hopchain import --jsonl MINE.jsonl --out DIR   your image/question/answer data in the same format
  hopchain generate --model CKPT --image IMG --prompt "..." [--greedy --json]
  hopchain serve --model CKPT              OpenAI-compatible chat server over the JAX engine
  hopchain calibrate DIR --model CKPT      a weaker model's pass rate per query (difficulty calibration)
  hopchain eval DIR --model SPEC --out D   accuracy (mean/pass/maj@k) by variant, hops, op, level, length
  hopchain annotate export|import ...      human annotation sheets: people as the solvers
SPEC (--vlm, --solver, --calibrator): a checkpoint directory or MODEL@URL of an OpenAI-compatible endpoint.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from hopchain_jax.variants import ALL_VARIANTS, CHAIN_VARIANTS


def _synth(args: argparse.Namespace) -> int:
    if args.images:
        from hopchain_jax.vlm.photo_cli import run_photos
        args.images_per_shard = args.images_per_shard or 16
        return run_photos(args)
    if not args.out:
        print("hopchain synth: --out DIR is required (where the dataset is written)", file=sys.stderr)
        return 2
    from hopchain_jax.synth.pipeline import format_summary, run_synthesis
    from hopchain_jax.synth.presets import preset
    config = preset(args.preset, seed=args.seed, num_images=args.num_images, images_per_shard=args.images_per_shard or 48)
    if (args.queries_per_image is not None or args.hop_forms) and args.preset != "default":
        print("hopchain synth: --queries-per-image and --hop-forms set the multi-hop composer; the learnable preset "
              "has its own question forms (LearnableConfig)", file=sys.stderr)
        return 2
    if args.queries_per_image is not None:
        config = dataclasses.replace(config, composer=dataclasses.replace(config.composer,
                                                                          queries_per_image=args.queries_per_image))
    if args.hop_forms:
        try:
            composer = dataclasses.replace(config.composer, opt_in_forms=tuple(args.hop_forms))
        except ValueError as e:
            print(f"hopchain synth --hop-forms: {e}", file=sys.stderr)
            return 2
        config = dataclasses.replace(config, composer=composer)
    try:
        summary = run_synthesis(args.out, config, workers=args.workers, progress=not args.no_progress)
    except ValueError as e:
        print(f"hopchain synth: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1) if args.json else format_summary(summary))
    return 0


def _export(args: argparse.Namespace) -> int:
    from hopchain_jax.data.export import export_dataset, format_export_summary
    try:
        summary = export_dataset(args.dir, args.jsonl, png_dir=args.png_dir, variants=tuple(args.variant),
                                 progress=not args.no_progress, calibration=args.calibration,
                                 drop_too_easy=args.drop_too_easy, verdicts=args.verdicts)
    except ValueError as e:
        print(f"hopchain export: {e}", file=sys.stderr)
        return 2
    print(format_export_summary(summary, args.jsonl))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from hopchain_jax.inspect.gallery import write_gallery
    n = write_gallery(args.dir, args.html, limit=args.limit, seed=args.seed, variants=args.variant, ops=args.op,
                      answers=args.answer)
    print(f"wrote a gallery of {n} queries to {args.html}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from hopchain_jax.infer.generate import Generator
    from hopchain_jax.vlm.backends import engine_options
    try:
        gen = Generator(args.model, **engine_options(args), progress=not args.json)
        result = gen(args.prompt, args.image or [], greedy=args.greedy, max_new_tokens=args.max_new_tokens,
                     temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, n=args.n,
                     stop=args.stop or (), seed=args.seed)
    except (ValueError, OSError) as e:
        print(f"hopchain generate: {e}", file=sys.stderr)
        return 2
    if args.json:
        keys = ("input_ids", "image_grid_thw", "output_ids", "text") + (("samples",) if args.n > 1 else ())
        print(json.dumps({k: result[k] for k in keys}))
    else:
        for k, sample in enumerate(result["samples"]):
            print((f"--- sample {k} ({sample['finish_reason']})\n" if args.n > 1 else "") + (sample["text"] or ""))
    return 0


def _import(args: argparse.Namespace) -> int:
    from hopchain_jax.data.importer import format_import_summary, import_jsonl
    try:
        summary = import_jsonl(args.jsonl, args.out, images_root=args.images_root,
                               images_per_shard=args.images_per_shard, progress=not args.no_progress)
    except (ValueError, OSError) as e:
        print(f"hopchain import: {e}", file=sys.stderr)
        return 2
    print(format_import_summary(summary))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hopchain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="synthesize multi-hop queries into a TensorStore dataset")
    s.add_argument("--out", help="dataset directory (created; rerun the same command to resume)")
    s.add_argument("--images", help="a folder of photos: run the paper's model-driven stages on them "
                                     "(needs --vlm and --sam3, see below)")
    s.add_argument("--num-images", type=int, default=240, help="procedural scenes to render (default 240)")
    s.add_argument("--preset", choices=["default", "learnable"], default="default",
                   help="default: the paper's world, 3-6 hop chains with half/single variants; learnable: 2-5 large "
                        "objects, 1-2 hop questions with answers 1..5 (half/single records) that a tiny model can "
                        "learn from (benchmarks/learning.py)")
    s.add_argument("--queries-per-image", type=int,
                   help="most full chains kept per scene (default: ComposerConfig.queries_per_image, 14)")
    s.add_argument("--hop-forms", nargs="+", default=(), metavar="FORM",
                   help="default preset: also compose these hop forms, registered off by default "
                        "(hopchain_jax/synth/hops/, e.g. count_side; docs/extending.md)")
    s.add_argument("--images-per-shard", type=int,
                   help="images per atomic shard; procedural: also the window over which answers are balanced "
                        "(default 48; with --images 16)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=0, help="processes (default: one per core)")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.add_argument("--no-progress", action="store_true")
    from hopchain_jax.vlm.photo_cli import add_photo_args
    add_photo_args(s)
    s.set_defaults(fn=_synth)

    variants = dict(nargs="+", choices=list(ALL_VARIANTS), default=list(ALL_VARIANTS))
    e = sub.add_parser("export", help="write a dataset as schema-v2 JSON Lines")
    e.add_argument("dir")
    e.add_argument("--jsonl", required=True)
    e.add_argument("--png-dir", help="also write each image as PNG here and put its path in the records")
    e.add_argument("--variant", **variants)
    e.add_argument("--calibration", help="a `hopchain calibrate` results file: fill verification.calibration")
    e.add_argument("--drop-too-easy", action="store_true",
                   help="with --calibration: leave out queries the calibration model always solved")
    e.add_argument("--verdicts", help="a `hopchain annotate import` file: apply human verdicts, leave out rejected queries")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(fn=_export)

    i = sub.add_parser("inspect", help="write an HTML gallery of a dataset")
    i.add_argument("dir")
    i.add_argument("--html", required=True)
    i.add_argument("--limit", type=int, default=60, help="cards: a random sample of the matching records (default 60)")
    i.add_argument("--seed", type=int, default=0, help="seed of the random sample (default 0)")
    i.add_argument("--variant", action="extend", nargs="+", choices=list(CHAIN_VARIANTS),
                   help="only these variants (repeatable; default: all)")
    i.add_argument("--op", action="append", help="only records whose program uses this op (repeatable: any of them)")
    i.add_argument("--answer", action="append", type=int, help="only records with this answer (repeatable)")
    i.set_defaults(fn=_inspect)
    m = sub.add_parser("import", help="convert your JSONL (image path, question, numeric answer) to a dataset")
    m.add_argument("--jsonl", required=True, help='one {"image": path, "question": str, "answer": number} per line')
    m.add_argument("--out", required=True, help="dataset directory (rerun the same command to resume)")
    m.add_argument("--images-root", help="folder image paths are relative to (default: the JSONL's folder)")
    m.add_argument("--images-per-shard", type=int, default=64)
    m.add_argument("--no-progress", action="store_true")
    m.set_defaults(fn=_import)

    from hopchain_jax.serve.cli import add_serve_parser
    from hopchain_jax.vlm.backends import add_model_args
    g = sub.add_parser("generate", help="generate with a Qwen2.5-VL / Qwen3-VL checkpoint directory")
    g.add_argument("--model", required=True, help="Hugging Face checkpoint directory (config.json + safetensors)")
    g.add_argument("--image", action="append", help="image file (repeat for several)")
    g.add_argument("--prompt", required=True)
    g.add_argument("--greedy", action="store_true", help="greedy decoding (ignores temperature/top-p/top-k)")
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--temperature", type=float, default=0.7)
    g.add_argument("--top-p", type=float, default=0.8)
    g.add_argument("--top-k", type=int, default=20)
    g.add_argument("--n", type=int, default=1, help="samples per prompt")
    g.add_argument("--stop", action="append", help="stop string (repeatable)")
    g.add_argument("--seed", type=int, default=0)
    add_model_args(g)
    g.add_argument("--json", action="store_true", help="print one JSON object: input_ids, image_grid_thw, output_ids, text")
    g.set_defaults(fn=_generate)

    from hopchain_jax.vlm.annotation_cli import add_annotate_parser
    from hopchain_jax.vlm.calibrate_cli import add_calibrate_parser
    add_serve_parser(sub)
    from hopchain_jax.eval.cli import add_eval_parser
    add_calibrate_parser(sub)
    add_eval_parser(sub)
    add_annotate_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except FileNotFoundError as e:
        print(f"hopchain {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
