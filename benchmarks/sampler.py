"""Cost of one sampling call of the engine (hopchain_jax/infer/sampling.py) per decode step.

  python benchmarks/sampler.py                              # 8 rows x the Qwen vocabulary, CPU or GPU
  python benchmarks/sampler.py --rows 256 --iters 50        # a full decode batch (GPU)
  python benchmarks/sampler.py --settings plain "mixed per-row"   # just these settings

For each setting (temperature 1 with no filter, top_p 0.95, top_k 50, and Qwen's default top_k 20 +
top_p 0.8; then that default passed as per-row arrays, as the engine passes them, and a batch whose rows
cycle through greedy and the four settings) times sample_tokens on float32 logits [rows, vocab], after
a warm-up call, in milliseconds per call (median of --iters), three ways:
  engine   bisection cutoffs + two-level inverse-CDF draw (2 uniforms per row)
  gumbel   bisection cutoffs + jax.random.categorical (Gumbel-max: V random numbers per row)
  sort     textbook cutoffs (lax.top_k; sort + cumsum) + the inverse-CDF draw
and how many rows' tokens agree between engine and sort (same draw: the kept sets match up to float32
rounding of the nucleus mass). Prints a markdown table for benchmarks/RESULTS.md and, with --json,
writes the rows.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from hopchain_jax.infer.sampling import sample_tokens  # noqa: E402

# name: (temperature, top_k, top_p) for every row, or a list of them cycled over the rows (per-row arrays)
SETTINGS = {"plain": (1.0, 0, 1.0), "top_p=0.95": (1.0, 0, 0.95), "top_k=50": (1.0, 50, 1.0),
            "top_k=20,top_p=0.8": (1.0, 20, 0.8), "top_k=20,top_p=0.8 per-row": [(1.0, 20, 0.8)],
            "mixed per-row": [(0.0, 0, 1.0), (1.0, 0, 1.0), (1.0, 0, 0.95), (1.0, 50, 1.0), (0.7, 20, 0.8)]}


def row_settings(setting, rows: int):
    """(temperature, top_k, top_p) as numbers, or as [rows] arrays for a per-row setting."""
    if isinstance(setting, tuple):
        return setting
    cycle = [setting[i % len(setting)] for i in range(rows)]
    return tuple(np.asarray(col, dtype) for col, dtype in zip(zip(*cycle), (np.float32, np.int32, np.float32)))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=8, help="decode rows per call")
    ap.add_argument("--vocab", type=int, default=151936, help="logits per row (Qwen2.5-VL: 151936)")
    ap.add_argument("--std", type=float, default=3.0, help="standard deviation of the random logits")
    ap.add_argument("--iters", type=int, default=10, help="timed calls per case (median reported)")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), metavar="NAME",
                    help="time only these settings (quote each name): " + "; ".join(SETTINGS))
    ap.add_argument("--json", type=Path, default=None, help="write the rows here")
    return ap.parse_args(argv)


# column: (cutoffs, draw) passed to sample_tokens
VARIANTS = {"engine": ("bisect", "inverse_cdf"), "gumbel": ("bisect", "gumbel"), "sort": ("sort", "inverse_cdf")}


def time_case(logits, keys, settings, variant, iters):
    """settings: numbers (compiled in) or per-row arrays (arguments of the program, as in the engine)."""
    cutoffs, draw = VARIANTS[variant]
    if isinstance(settings[0], np.ndarray):
        fn = jax.jit(lambda x, k, t, tk, tp: sample_tokens(x, k, t, tk, tp, cutoffs=cutoffs, draw=draw))
        args = (logits, keys, *settings)
    else:
        fn = jax.jit(lambda x, k: sample_tokens(x, k, *settings, cutoffs=cutoffs, draw=draw))
        args = (logits, keys)
    t0 = time.perf_counter()
    tokens = jax.block_until_ready(fn(*args))[0]
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3, compile_s, np.asarray(tokens)


def main(argv=None):
    args = parse_args(argv)
    names = args.settings
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise SystemExit(f"--settings: unknown {unknown}; choose from {'; '.join(map(repr, SETTINGS))}")
    logits = jax.random.normal(jax.random.key(0), (args.rows, args.vocab), jnp.float32) * args.std
    keys = jax.random.split(jax.random.key(1), args.rows)
    dev = jax.devices()[0]
    print(f"{args.rows} rows x {args.vocab} logits on {dev.platform} ({dev.device_kind}), jax {jax.__version__}")
    print("| setting | engine ms | gumbel draw ms | sort cutoffs ms | same tokens (engine, sort) |")
    print("|---|---|---|---|---|", flush=True)
    rows = []
    for name in names:   # each row printed as it finishes: a run cut off by a timeout keeps the rows so far
        res = {v: time_case(logits, keys, row_settings(SETTINGS[name], args.rows), v, args.iters) for v in VARIANTS}
        r = dict(setting=name, rows=args.rows, vocab=args.vocab,
                 **{f"{v}_ms": res[v][0] for v in VARIANTS}, **{f"{v}_compile_s": res[v][1] for v in VARIANTS},
                 same_tokens=int((res["engine"][2] == res["sort"][2]).sum()),
                 device=dev.device_kind, platform=dev.platform, jax=jax.__version__,
                 python=platform.python_version())
        rows.append(r)
        print(f"| {r['setting']} | {r['engine_ms']:.2f} | {r['gumbel_ms']:.2f} | {r['sort_ms']:.2f} "
              f"| {r['same_tokens']}/{r['rows']} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
