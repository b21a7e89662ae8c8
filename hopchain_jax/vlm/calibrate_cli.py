"""`hopchain calibrate DIR`: a weaker model's pass rate on every query (paper stage 4, difficulty).

  hopchain calibrate DIR --model CKPT                          a local checkpoint (EngineChatBackend)
  hopchain calibrate DIR --model NAME@URL                      any OpenAI-compatible server (as synth's flags)
  hopchain calibrate DIR --endpoint URL --endpoint-model NAME  the same, spelt out
      [--samples 8 --temperature 1.0 --max-tokens 4096 --variant full external --batch-size 64
       --cache-dir DIR --out FILE --json --no-progress]

Results go to DIR/calibration-<model>.jsonl (or --out); rerun the same command after a crash or to retry
failed items. Use them with `hopchain export DIR --jsonl OUT --calibration FILE [--drop-too-easy]`.
"""
from __future__ import annotations

import argparse
import json
import sys

from hopchain_jax.vlm.backends import add_local_model_args, engine_options
from hopchain_jax.variants import ALL_VARIANTS

# = calibrate.DEFAULT_VARIANTS; not imported so that building the parser stays cheap (no JAX, no I/O)
DEFAULT_VARIANTS = ("full", "external")

VARIANT_CHOICES = list(ALL_VARIANTS)


def add_calibrate_parser(subparsers) -> None:
    """Add the `calibrate` subcommand to an argparse subparsers object (sets fn=run_calibrate)."""
    c = subparsers.add_parser("calibrate", help="a weaker model's pass rate per query (difficulty calibration)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("dir", help="dataset directory (from `hopchain synth` or `hopchain import`)")
    c.add_argument("--model", help="the model to calibrate with, as `synth --calibrator` takes it: a local Qwen-VL "
                   "checkpoint directory (our JAX engine) or MODEL@URL (an OpenAI-compatible endpoint, e.g. "
                   "Qwen/Qwen2.5-VL-7B-Instruct@http://localhost:8000/v1)")
    c.add_argument("--endpoint", help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1 (or --model MODEL@URL)")
    c.add_argument("--endpoint-model", help="model name the endpoint serves (with --endpoint)")
    c.add_argument("--samples", type=int, default=8, help="answers sampled per query (default 8)")
    c.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    c.add_argument("--max-tokens", type=int, default=4096, help="most tokens per answer (default 4096)")
    c.add_argument("--variant", nargs="+", choices=VARIANT_CHOICES, default=list(DEFAULT_VARIANTS),
                   help="record variants to calibrate (default: full external)")
    c.add_argument("--batch-size", type=int, default=64, help="queries per backend call and per fsync (default 64)")
    c.add_argument("--concurrency", type=int, default=8, help="parallel HTTP requests with --endpoint (default 8)")
    c.add_argument("--cache-dir", help="response cache folder: a rerun repeats no finished call")
    add_local_model_args(c)
    c.add_argument("--out", help="results file (default DIR/calibration-<model>.jsonl)")
    c.add_argument("--json", action="store_true", help="print the summary as JSON")
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(fn=run_calibrate)


def _fail(message: str) -> int:
    print(f"hopchain calibrate: {message}", file=sys.stderr)
    return 2


def _backend(args: argparse.Namespace):
    if args.model:
        from hopchain_jax.vlm.engine_backend import EngineChatBackend  # JAX + weights: only when asked
        return EngineChatBackend(args.model, cache_dir=args.cache_dir, **engine_options(args))
    from hopchain_jax.vlm.openai_backend import OpenAIChatBackend
    return OpenAIChatBackend(args.endpoint, model=args.endpoint_model, cache_dir=args.cache_dir,
                             max_concurrency=args.concurrency)


def run_calibrate(args: argparse.Namespace) -> int:
    """Exit 0 when every selected record is calibrated, 1 when some items failed (rerun to retry them),
    2 on a usage error (nothing was run) or when the run had to stop (what it finished is kept)."""
    from hopchain_jax.data.store import HopChainDataset
    from hopchain_jax.vlm.backends import describe_spec, split_model_at_url
    from hopchain_jax.vlm.calibrate import calibrate_dataset
    if args.model and args.endpoint:
        return _fail("give either --model CKPT (or MODEL@URL) or --endpoint URL, not both")
    if not args.model and not args.endpoint:
        return _fail("say which model calibrates: --model CKPT (a local checkpoint directory), --model MODEL@URL "
                     "or --endpoint URL --endpoint-model NAME (an OpenAI-compatible server)")
    endpoint = split_model_at_url(args.model) if args.model else None
    if endpoint is not None:   # MODEL@URL
        try:
            describe_spec(args.model, "--model")
        except ValueError as e:
            return _fail(str(e))
        args.endpoint_model, args.endpoint = endpoint
        args.model = None
    if args.endpoint and not args.endpoint_model:
        return _fail("--endpoint needs --endpoint-model NAME (the model the server serves)")
    if args.samples < 1 or args.batch_size < 1:
        return _fail("--samples and --batch-size must be >= 1")
    try:
        ds = HopChainDataset(args.dir)  # checked before a model is loaded
    except FileNotFoundError as e:
        return _fail(f"{e}, or convert your own data with `hopchain import --jsonl MINE.jsonl --out {args.dir}`")
    try:
        backend = _backend(args)
    except ImportError as e:
        return _fail(f"--model needs the local engine backend, which could not be loaded ({e}); serve the model "
                     "with an OpenAI-compatible server and use --endpoint URL --endpoint-model NAME instead")
    except (ValueError, OSError) as e:
        return _fail(f"could not load the calibration model: {e}")
    try:
        summary = calibrate_dataset(ds, backend, samples=args.samples, temperature=args.temperature,
                                    max_tokens=args.max_tokens, variants=tuple(args.variant), out=args.out,
                                    batch_size=args.batch_size, progress=not args.no_progress)
    except (ValueError, OSError, RuntimeError) as e:
        return _fail(str(e))
    print(json.dumps(summary, indent=1) if args.json else format_calibration(summary))
    if summary["errors"]:
        print(f"hopchain calibrate: {summary['errors']} items failed (see the error field in {summary['sidecar']}); "
              "rerun the same command to retry them", file=sys.stderr)
        return 1
    return 0


def format_calibration(summary: dict) -> str:
    """The summary as text: counts, then the pass-rate histogram as a table with bars."""
    n, k = summary["calibrated"], summary["samples"]
    lines = [f"calibration by {summary['model']} ({k} samples per query, temperature {summary['temperature']})",
             f"  records ({' '.join(summary['variants'])}): {summary['records']}",
             f"  calibrated: {n} ({summary['new']} in this run), errors: {summary['errors']}",
             f"  too easy (all {k} correct): {summary['too_easy']}"
             + (f" ({100 * summary['too_easy'] / n:.1f}%)" if n else ""),
             f"  results: {summary['sidecar']}",
             "  correct  records  share"]
    top = max(summary["histogram"]) or 1
    for correct, count in enumerate(summary["histogram"]):
        share = f"{100 * count / n:5.1f}%" if n else "    -"
        lines.append(f"  {correct:>3}/{k:<3} {count:>8}  {share}  {'#' * round(30 * count / top)}")
    if n:
        mean = sum(c * m for c, m in enumerate(summary["histogram"])) / (n * k)
        lines.append(f"  mean pass rate: {mean:.3f}")
    return "\n".join(lines)
