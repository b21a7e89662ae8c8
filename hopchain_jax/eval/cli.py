"""`hopchain eval DATASET --model SPEC --out DIR`: accuracy of a model on a dataset, and where it fails.

  hopchain eval data/hop --model runs/tiny_rl/hf --greedy --out runs/eval        a local checkpoint (our engine)
  hopchain eval data/hop --model Qwen/Qwen2.5-VL-7B-Instruct@http://localhost:8000/v1 --samples 8 \\
      --temperature 1.0 --out runs/eval-7b                                         any OpenAI-compatible endpoint
  hopchain eval mine.jsonl --model CKPT --out runs/eval-mine                       your JSONL (imported first)
      [--localize --image-control --variant full half single external --limit N --max-tokens 1024 --count-truncated --batch-size 32
       --cache-dir DIR --dtype --mesh --decode-mesh --max-pixels --json --no-progress]

DATASET: a `hopchain synth` / `hopchain import` directory, or a JSONL file of {"image", "question",
"answer"} lines (imported into OUT/dataset first). Prints overall mean@k / pass@k / maj@k with 95%
intervals and the breakdowns (--image-control: also the accuracy with every image swapped for another
record's, and the difference: how much of it needs the image); writes OUT/summary.json, OUT/summary.md and OUT/items.jsonl. Kill it and
rerun the same command: finished items are kept, the response cache (OUT/cache) repeats no model call.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hopchain_jax.vlm.backends import add_local_model_args
from hopchain_jax.variants import ALL_VARIANTS

VARIANT_CHOICES = list(ALL_VARIANTS)


def add_eval_parser(subparsers) -> None:
    """Add the `eval` subcommand to an argparse subparsers object (sets fn=run_eval)."""
    e = subparsers.add_parser("eval", help="accuracy of a model on a dataset, by variant / hops / op / level / length",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("dataset", help="dataset directory (hopchain synth / import) or a JSONL file to import")
    e.add_argument("--model", required=True, help="a local Qwen-VL checkpoint directory (our JAX engine) or MODEL@URL "
                   "(an OpenAI-compatible endpoint)")
    e.add_argument("--out", required=True, help="results folder (rerun the same command to continue)")
    e.add_argument("--samples", type=int, help="responses per record, k (default 1; 1 with --greedy)")
    e.add_argument("--temperature", type=float, help="sampling temperature (default 1.0 when --samples > 1)")
    e.add_argument("--greedy", action="store_true", help="greedy decoding, one response per record (the default "
                   "when neither --samples nor --temperature is given)")
    e.add_argument("--variant", nargs="+", choices=VARIANT_CHOICES, default=["full", "external"],
                   help="record variants to evaluate (default: full external)")
    e.add_argument("--limit", type=int, default=0, help="most records (a fixed sample; 0: all)")
    e.add_argument("--max-tokens", type=int, default=1024, help="token limit per response (default 1024)")
    e.add_argument("--count-truncated", action="store_true", help="score responses that hit --max-tokens (default: "
                   "wrong, as the RL reward)")
    e.add_argument("--batch-size", type=int, default=32, help="records per backend call and per fsync (default 32)")
    e.add_argument("--cache-dir", help="response cache (default OUT/cache)")
    add_local_model_args(e)
    e.add_argument("--localize", action="store_true", help="for every wrong full chain, ask each hop again with the "
                   "earlier hops solved, and report the first hop it gets wrong (by kind, op and level)")
    e.add_argument("--image-control", action="store_true", help="also ask every record with another record's image "
                   "and report how much of the accuracy needs the true image (OUT/control.jsonl)")
    e.add_argument("--json", action="store_true", help="print the summary as JSON")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(fn=run_eval)


def _fail(message: str) -> int:
    print(f"hopchain eval: {message}", file=sys.stderr)
    return 2


def settings_from_args(args: argparse.Namespace):
    """EvalSettings from the flags (ValueError with the fix on a bad combination)."""
    from hopchain_jax.eval.run import EvalSettings
    if args.greedy and ((args.samples or 1) > 1 or (args.temperature or 0) > 0):
        raise ValueError("--greedy gives one response per record at temperature 0: drop --samples/--temperature "
                         "or --greedy")
    samples = args.samples or 1
    temperature = 0.0 if args.greedy else (args.temperature if args.temperature is not None
                                           else (1.0 if samples > 1 else 0.0))
    return EvalSettings(samples=samples, temperature=temperature, max_tokens=args.max_tokens,
                        variants=tuple(args.variant), limit=args.limit, count_truncated=args.count_truncated,
                        image_control=args.image_control)


def _dataset(args: argparse.Namespace):
    """The dataset to evaluate: a directory, or a JSONL file imported into OUT/dataset (resumable)."""
    from hopchain_jax.data.store import HopChainDataset
    path = Path(args.dataset)
    if path.is_file() and path.suffix == ".jsonl":
        from hopchain_jax.data.importer import import_jsonl
        target = Path(args.out) / "dataset"
        import_jsonl(path, target, progress=not args.no_progress)
        return HopChainDataset(target), str(path)
    try:
        return HopChainDataset(path), str(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}; give a dataset directory (hopchain synth / hopchain import) or a JSONL file "
                                "of {\"image\", \"question\", \"answer\"} lines") from None


def run_eval(args: argparse.Namespace) -> int:
    """Exit 0 when every record was evaluated, 1 when some items failed (rerun to retry them), 2 on a usage
    error or a failed run (what it finished is kept)."""
    from hopchain_jax.vlm.backends import BackendPool, describe_spec, engine_options
    try:
        settings = settings_from_args(args)
        describe_spec(args.model, "--model")
        if args.batch_size < 1:
            raise ValueError("--batch-size must be >= 1")
        ds, name = _dataset(args)
    except (ValueError, OSError) as e:
        return _fail(str(e))
    from hopchain_jax.eval.run import evaluate_dataset, format_markdown
    try:
        pool = BackendPool(args.cache_dir or Path(args.out) / "cache", **engine_options(args))
        backend = pool.get(args.model, "--model")
    except ImportError as e:
        return _fail(f"--model needs the local engine backend, which could not be loaded ({e}); serve the model with "
                     "an OpenAI-compatible server and pass MODEL@URL instead")
    except (ValueError, OSError) as e:
        return _fail(f"could not load the model: {e}")
    try:
        summary = evaluate_dataset(ds, backend, args.out, settings, batch_size=args.batch_size,
                                   progress=not args.no_progress, dataset_name=name, localize=args.localize)
    except (ValueError, OSError, RuntimeError) as e:
        return _fail(str(e))
    print(json.dumps(summary, indent=1) if args.json else format_markdown(summary, f"hopchain eval: {backend.model}"))
    if summary["errors"]:
        print(f"hopchain eval: {summary['errors']} items failed (see the error field in {args.out}/items.jsonl); "
              "rerun the same command to retry them", file=sys.stderr)
        return 1
    return 0
