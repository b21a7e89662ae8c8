"""Cost of one sampling call of the engine (hopchain_jax/infer/sampling.py) per decode step.

  python benchmarks/sampler.py                              # 8 rows x the Qwen vocabulary, CPU or GPU
  python benchmarks/sampler.py --rows 256 --iters 50        # a full decode batch (GPU)
  python benchmarks/sampler.py --settings plain "mixed per-row"   # just these settings
  python benchmarks/sampler.py --tensor 4 --settings plain  # logits split 4 ways over the vocabulary
                                                            # (on a CPU: 8 simulated devices, data 2 x tensor 4)

For each setting (temperature 1 with no filter, top_p 0.95, top_k 50, and Qwen's default top_k 20 +
top_p 0.8; then that default passed as per-row arrays, as the engine passes them, and a batch whose rows
cycle through greedy and the four settings) times sample_tokens on float32 logits [rows, vocab], after
a warm-up call, in milliseconds per call (median of --iters), four ways:
  engine   the engine's cutoffs (the candidate table when rows ask for top-p and every filtering row has
           top_k <= CANDIDATE_MAX, else bisection) + two-level inverse-CDF draw (2 uniforms per row)
  bisect   bisection cutoffs always (the engine before the candidate table) + the inverse-CDF draw
  gumbel   the engine's cutoffs + jax.random.categorical (Gumbel-max: V random numbers per row)
  sort     textbook cutoffs (lax.top_k; sort + cumsum) + the inverse-CDF draw
and how many rows' tokens agree between engine and sort (same draw: the kept sets match up to float32
rounding of the nucleus mass). Prints a markdown table for benchmarks/RESULTS.md and, with --json,
writes the rows.

--tensor N places the logits as a tensor-parallel decode has them, split N ways over the vocabulary
(rows over the remaining devices), and the engine column is then the engine's draw for that layout
(vocab_sharded_draw, a shard_map); a fourth column, "compiler", is the plain draw left to the compiler's
partitioner. The table then also counts each program's collectives.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
if "--tensor" in " ".join(sys.argv) and "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    # a CPU run simulates 8 devices (before JAX starts); an accelerator's own devices are unaffected
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from hopchain_jax.infer.sampling import SamplerWork, sample_tokens, vocab_sharded_draw  # noqa: E402
from hopchain_jax.models.sharding import make_mesh  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

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
    ap.add_argument("--tensor", type=int, default=1,
                    help="split the logits this many ways over the vocabulary (a tensor-parallel decode)")
    ap.add_argument("--json", type=Path, default=None, help="write the rows here")
    return ap.parse_args(argv)


# column: (cutoffs, draw) passed to sample_tokens; "engine" is the engine's draw for the logits' layout
VARIANTS = {"engine": ("auto", "engine"), "bisect": ("bisect", "engine"), "gumbel": ("auto", "gumbel"),
            "sort": ("sort", "engine"), "compiler": ("auto", "inverse_cdf")}
COLLECTIVE = re.compile(r"= \S+ (?:all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)(?:-start)?\(")


def time_case(logits, keys, settings, variant, iters, engine_draw="inverse_cdf"):
    """settings: numbers (compiled in) or per-row arrays (arguments of the program, as in the engine).
    -> (median ms, compile s, tokens, collectives in the compiled program)."""
    cutoffs, draw = VARIANTS[variant]
    draw = engine_draw if draw == "engine" else draw
    work = SamplerWork.of(*settings)   # from the host values, as the engine decides it
    if isinstance(settings[0], np.ndarray):
        fn = jax.jit(lambda x, k, t, tk, tp: sample_tokens(x, k, t, tk, tp, cutoffs, work, draw))
        args = (logits, keys, *settings)
    else:
        fn = jax.jit(lambda x, k: sample_tokens(x, k, *settings, cutoffs, work, draw))
        args = (logits, keys)
    t0 = time.perf_counter()
    tokens = jax.block_until_ready(fn(*args))[0]
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    collectives = len(COLLECTIVE.findall(fn.lower(*args).compile().as_text()))
    return float(np.median(times)) * 1e3, compile_s, np.asarray(tokens), collectives


def main(argv=None):
    args = parse_args(argv)
    names = args.settings
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise SystemExit(f"--settings: unknown {unknown}; choose from {'; '.join(map(repr, SETTINGS))}")
    logits = jax.random.normal(jax.random.key(0), (args.rows, args.vocab), jnp.float32) * args.std
    keys = jax.random.key_data(jax.random.split(jax.random.key(1), args.rows))
    dev = jax.devices()[0]
    variants, engine_draw, layout = ["engine", "bisect", "gumbel", "sort"], "inverse_cdf", "one device"
    if args.tensor > 1:
        if jax.device_count() % args.tensor or args.vocab % args.tensor:
            raise SystemExit(f"--tensor {args.tensor}: needs a device count ({jax.device_count()}) and a --vocab "
                             f"({args.vocab}) that it divides")
        mesh = make_mesh(data=-1, fsdp=1, tensor=args.tensor)
        row_axis = "data" if args.rows % mesh.shape["data"] == 0 else None
        logits = jax.device_put(logits, NamedSharding(mesh, P(row_axis, "tensor")))
        keys = jax.device_put(keys, NamedSharding(mesh, P(row_axis)))
        variants, engine_draw = variants + ["compiler"], vocab_sharded_draw(mesh, ("data", "fsdp"), "tensor")
        layout = f"mesh {dict(mesh.shape)}, logits P({row_axis!r}, 'tensor')"
    print(f"{args.rows} rows x {args.vocab} logits on {dev.platform} ({dev.device_kind}), {layout}, jax {jax.__version__}")
    heads = ["engine ms", "bisection cutoffs ms", "gumbel draw ms", "sort cutoffs ms"] + (
        ["compiler's draw ms", "collectives (engine, bisect, gumbel, sort, compiler)"] if args.tensor > 1 else [])
    print("| setting | " + " | ".join(heads) + " | same tokens (engine, sort) |")
    print("|---" * (len(heads) + 2) + "|", flush=True)
    rows = []
    for name in names:   # each row printed as it finishes: a run cut off by a timeout keeps the rows so far
        res = {v: time_case(logits, keys, row_settings(SETTINGS[name], args.rows), v, args.iters, engine_draw)
               for v in variants}
        r = dict(setting=name, rows=args.rows, vocab=args.vocab, tensor=args.tensor,
                 **{f"{v}_ms": res[v][0] for v in variants}, **{f"{v}_compile_s": res[v][1] for v in variants},
                 **{f"{v}_collectives": res[v][3] for v in variants},
                 same_tokens=int((res["engine"][2] == res["sort"][2]).sum()),
                 device=dev.device_kind, platform=dev.platform, jax=jax.__version__,
                 python=platform.python_version())
        rows.append(r)
        cells = [f"{r[v + '_ms']:.2f}" for v in variants]
        if args.tensor > 1:
            cells.append(", ".join(str(r[v + "_collectives"]) for v in variants))
        print(f"| {r['setting']} | " + " | ".join(cells) + f" | {r['same_tokens']}/{r['rows']} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
