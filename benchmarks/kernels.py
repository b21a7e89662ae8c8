"""Fused LM-head log-prob + entropy: naive XLA vs chunked XLA vs Pallas-Triton vs Mosaic GPU, next to the matmul floor.

  python benchmarks/kernels.py                       # full shape: N=4096 and 2048, D=4096, V=151,936, bf16
  python benchmarks/kernels.py --small               # tiny shape that runs on CPU (Pallas skipped there)
  python benchmarks/kernels.py --small --interpret   # ... with the kernels in interpret mode (slow, correctness only)
  python benchmarks/kernels.py --profile /tmp/trace  # also write a jax.profiler trace (TensorBoard / Perfetto)

For each implementation and each N it measures
  * fwd:     logp and entropy (both outputs), jitted;
  * fwd+bwd: value_and_grad w.r.t. (h, w) of sum(logp * g) -- the training case (SAPO feeds the
             log-prob cotangent; the entropy is computed as a statistic, not differentiated);
median wall time over --iters runs after a compile/warm-up run, the matmul floor
(2*N*D*V flops forward, 3x that forward+backward, at --peak-tflops, default 989 = H100 SXM dense
bf16) and peak memory: ``device.memory_stats()['peak_bytes_in_use']`` minus the bytes in use before
the case, measured in a fresh subprocess per case (GPU/TPU; --no-isolate to skip), plus XLA's
compiled memory analysis (temp bytes) everywhere, and the relative error against the float32
reference on the first 256 tokens (logp/entropy forward, dh forward+backward). "naive" = the reference (materialises the
[N, V] float32 logits), "chunked" = lax.scan over vocabulary chunks with a custom VJP, "pallas" =
the fused Pallas kernels with the Triton lowering (kernels/logprob.py), "mosaic" = the Mosaic GPU
Hopper kernels (kernels/logprob_mosaic.py; bf16/f16, Hopper only). Prints a markdown table and,
with --json, writes the rows.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kernels import LogprobConfig, fused_logprob_entropy  # noqa: E402
from kernels.dispatch import ACCELERATORS  # noqa: E402

FULL = dict(ns=(4096, 2048), d=4096, v=151_936, dtype="bfloat16")
SMALL = dict(ns=(256, 128), d=256, v=5_000, dtype="bfloat16")
IMPLS = ("naive", "chunked", "pallas", "mosaic")
MODES = ("fwd", "fwd+bwd")


def _impl_kwargs(impl: str, interpret: bool, cfg: LogprobConfig) -> dict:
    if impl == "naive":
        return dict(impl="reference")
    if impl == "chunked":
        return dict(impl="chunked", config=cfg)
    return dict(impl=f"{impl}_interpret" if interpret else impl, config=cfg)


def _make(impl, mode, interpret, cfg):
    kw = _impl_kwargs(impl, interpret, cfg)
    if mode == "fwd":
        def f(h, w, t, g):
            return fused_logprob_entropy(h, w, t, **kw)
    else:
        def loss(h, w, t, g):
            lp, ent = fused_logprob_entropy(h, w, t, **kw)
            return jnp.sum(lp * g), jax.lax.stop_gradient(ent)
        vg = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)

        def f(h, w, t, g):
            return vg(h, w, t, g)
    return jax.jit(f)


def _inputs(n, d, v, dtype, seed=0):
    k = jax.random.split(jax.random.key(seed), 4)
    h = jax.random.normal(k[0], (n, d), jnp.float32).astype(dtype)
    w = (jax.random.normal(k[1], (d, v), jnp.float32) * (1.0 / np.sqrt(d))).astype(dtype)
    t = jax.random.randint(k[2], (n,), 0, v, jnp.int32)
    g = jax.random.normal(k[3], (n,), jnp.float32)
    return h, w, t, g


CHECK_ROWS = 256


def _check_rows(out, mode, h, w, t, g):
    """Max relative error vs the float32 reference on the first CHECK_ROWS tokens (rows are
    independent, so those rows' logp / entropy, or dh, are exactly comparable): logp and entropy
    for "fwd", dh for "fwd+bwd" (dw sums over all tokens, so it is not checked here)."""
    from kernels import logprob_entropy_reference
    k = min(CHECK_ROWS, h.shape[0])
    hk, tk, gk = h[:k].astype(jnp.float32), t[:k], g[:k]
    wf = w.astype(jnp.float32)

    def rel(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))

    if mode == "fwd":
        lp_r, en_r = jax.jit(logprob_entropy_reference)(hk, wf, tk)
        return max(rel(out[0][:k], lp_r), rel(out[1][:k], en_r))
    dh_r = jax.jit(jax.grad(lambda h: jnp.sum(logprob_entropy_reference(h, wf, tk)[0] * gk)))(hk)
    (_, _), (dh, _) = out
    return rel(dh[:k], dh_r)


def _peak_bytes():
    stats = jax.devices()[0].memory_stats()
    if not stats:
        return None, None
    return stats.get("bytes_in_use"), stats.get("peak_bytes_in_use")


def run_case(impl, mode, n, d, v, dtype, iters, interpret, cfg, peak_tflops, profile_dir=None):
    h, w, t, g = _inputs(n, d, v, jnp.dtype(dtype))
    jax.block_until_ready((h, w, t, g))
    in_use0, _ = _peak_bytes()
    f = _make(impl, mode, interpret, cfg)
    row = dict(impl=impl, mode=mode, n=n, d=d, v=v, dtype=dtype)
    try:
        compiled = f.lower(h, w, t, g).compile()
        ma = compiled.memory_analysis()
        row["temp_bytes"] = int(ma.temp_size_in_bytes) if ma is not None else None
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(h, w, t, g))
        row["first_call_s"] = time.perf_counter() - t0
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(h, w, t, g))
            times.append(time.perf_counter() - t0)
        row["ms"] = 1e3 * statistics.median(times)
        if profile_dir:
            with jax.profiler.trace(profile_dir):
                for _ in range(3):
                    with jax.profiler.TraceAnnotation(f"{impl}/{mode}/N={n}"):
                        jax.block_until_ready(compiled(h, w, t, g))
        in_use1, peak1 = _peak_bytes()
        if peak1 is not None and in_use0 is not None:
            row["peak_bytes"] = int(peak1 - in_use0)
        row["rel_err"] = _check_rows(compiled(h, w, t, g), mode, h, w, t, g)
    except Exception as e:  # report and continue (e.g. naive OOM, Pallas lowering missing)
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    flops = 2.0 * n * d * v * (3 if mode == "fwd+bwd" else 1)
    row["floor_ms"] = 1e3 * flops / (peak_tflops * 1e12)
    if "ms" in row:
        row["tflops"] = flops / (row["ms"] * 1e-3) / 1e12
    return row


def _fmt_bytes(b):
    if b is None:
        return "-"
    for unit, s in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(b) >= s:
            return f"{b / s:.2f} {unit}"
    return f"{b} B"


def _fmt_err(e):
    return "-" if e is None else f"{e:.1e}"


def table(rows):
    out = ["| impl | mode | N | D | V | ms (median) | matmul floor ms | % of floor | TFLOP/s | "
           "peak mem (memory_stats) | XLA temp bytes | rel. err vs reference |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "error" in r:
            ms = f"error: {r['error']}"
            pct = tf = "-"
        elif r.get("skipped"):
            ms, pct, tf = f"skipped ({r['skipped']})", "-", "-"
        else:
            ms = f"{r['ms']:.3f}"
            pct = f"{100 * r['floor_ms'] / r['ms']:.1f}%"
            tf = f"{r['tflops']:.2f}"
        out.append(f"| {r['impl']} | {r['mode']} | {r['n']} | {r['d']} | {r['v']} | {ms} | "
                   f"{r['floor_ms']:.3f} | {pct} | {tf} | {_fmt_bytes(r.get('peak_bytes'))} | "
                   f"{_fmt_bytes(r.get('temp_bytes'))} | {_fmt_err(r.get('rel_err'))} |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="tiny shape (N=256/128, D=256, V=5000) for CPU")
    ap.add_argument("--interpret", action="store_true", help="run the Pallas / Mosaic GPU kernels in interpret mode (CPU)")
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--ns", default=None, help="comma-separated token counts (default 4096,2048)")
    ap.add_argument("--d", type=int, default=None)
    ap.add_argument("--v", type=int, default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--peak-tflops", type=float, default=989.0,
                    help="device peak for the floor (989 = H100 SXM dense bf16)")
    ap.add_argument("--profile", default=None, metavar="DIR", help="write a jax.profiler trace here")
    ap.add_argument("--no-isolate", action="store_true",
                    help="do not run each case in its own process (peak memory then accumulates)")
    ap.add_argument("--block-n", type=int, default=64)
    ap.add_argument("--block-v", type=int, default=128)
    ap.add_argument("--block-k", type=int, default=64)
    ap.add_argument("--tiles-per-program", type=int, default=8)
    ap.add_argument("--chunk-v", type=int, default=None)
    ap.add_argument("--num-warps", type=int, default=4)
    ap.add_argument("--num-stages", type=int, default=3)
    ap.add_argument("--json", default=None, help="write the rows here")
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: impl,mode,n
    args = ap.parse_args(argv)

    shape = dict(SMALL if args.small else FULL)
    ns = tuple(int(x) for x in args.ns.split(",")) if args.ns else shape["ns"]
    d, v = args.d or shape["d"], args.v or shape["v"]
    dtype = args.dtype or shape["dtype"]
    iters = args.iters or (5 if args.small else 20)
    chunk_v = args.chunk_v or (1024 if args.small else 16384)
    cfg = LogprobConfig(block_n=args.block_n, block_v=args.block_v, block_k=args.block_k,
                        tiles_per_program=args.tiles_per_program, chunk_v=chunk_v,
                        num_warps=args.num_warps, num_stages=args.num_stages)
    platform_name = jax.default_backend()
    on_accel = platform_name in ACCELERATORS

    if args.case:  # child process: one case, JSON on the last stdout line
        impl, mode, n = args.case.split(",")
        row = run_case(impl, mode, int(n), d, v, dtype, iters, args.interpret, cfg, args.peak_tflops,
                       args.profile)
        print(json.dumps(row))
        return 0

    isolate = on_accel and not args.no_isolate and jax.devices()[0].memory_stats() is not None
    rows = []
    for n in ns:
        for impl in args.impls.split(","):
            for mode in args.modes.split(","):
                if impl in ("pallas", "mosaic") and not on_accel and not args.interpret:
                    rows.append(dict(impl=impl, mode=mode, n=n, d=d, v=v, dtype=dtype,
                                     skipped="CPU: kernels only in interpret mode, pass --interpret",
                                     floor_ms=1e3 * 2.0 * n * d * v * (3 if mode == "fwd+bwd" else 1)
                                     / (args.peak_tflops * 1e12)))
                    continue
                if isolate:
                    cmd = [sys.executable, os.path.abspath(__file__), "--case", f"{impl},{mode},{n}",
                           "--d", str(d), "--v", str(v), "--dtype", dtype, "--iters", str(iters),
                           "--peak-tflops", str(args.peak_tflops), "--block-n", str(args.block_n),
                           "--block-v", str(args.block_v), "--block-k", str(args.block_k),
                           "--tiles-per-program", str(args.tiles_per_program),
                           "--chunk-v", str(chunk_v), "--num-warps", str(args.num_warps),
                           "--num-stages", str(args.num_stages)]
                    if args.interpret:
                        cmd.append("--interpret")
                    if args.profile:
                        cmd += ["--profile", os.path.join(args.profile, f"{impl}_{mode}_{n}")]
                    out = subprocess.run(cmd, capture_output=True, text=True)
                    try:
                        row = json.loads(out.stdout.strip().splitlines()[-1])
                    except Exception:
                        row = dict(impl=impl, mode=mode, n=n, d=d, v=v, dtype=dtype, floor_ms=0.0,
                                   error=f"subprocess failed: {out.stderr.strip()[-300:]}")
                else:
                    prof = os.path.join(args.profile, f"{impl}_{mode}_{n}") if args.profile else None
                    row = run_case(impl, mode, n, d, v, dtype, iters, args.interpret, cfg,
                                   args.peak_tflops, prof)
                rows.append(row)
                print(json.dumps(row), flush=True)

    dev = jax.devices()[0]
    print()
    print(f"device: {dev.device_kind} ({platform_name}); jax {jax.__version__}, "
          f"python {platform.python_version()}; dtype {dtype}; iters {iters}; config {cfg}; "
          f"peak {args.peak_tflops} TFLOP/s")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(device=dev.device_kind, platform=platform_name, jax=jax.__version__,
                           rows=rows), fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
