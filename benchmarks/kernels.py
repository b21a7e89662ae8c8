"""Fused LM-head log-prob + entropy on the device: correctness check, timings and peak memory.

  python benchmarks/kernels.py                          # N=4096, D=4096, V=151,936, bf16: all cases
  python benchmarks/kernels.py --check-only             # only the on-device correctness checks
  python benchmarks/kernels.py --small                  # CPU dry run (tiny shape; kernels skipped)
  python benchmarks/kernels.py --small --interpret      # ... with the kernels in interpret mode
  python benchmarks/kernels.py --impls chunked,mosaic,mosaic:64x128x64x3 --out rows.jsonl \\
      --tuned-out tuned.json                            # Mosaic forward tile variants, record winner

Implementations (--impls): "naive" (the textbook reference: [N, V] float32 logits), "chunked"
(lax.scan over vocabulary chunks, custom VJP), "pallas" (Pallas-Triton kernels), "mosaic" (Mosaic
GPU Hopper kernels), "mosaic:BNxBVxBKxS" (Mosaic with forward tile BN x BV, K slab BK and S
pipeline stages, i.e. LogprobConfig.mosaic_fwd_*), "fused_head" (kernels/fused_head.py's
``sapo_loss_fused_forward``: the SAPO loss with its gradient formed in the forward; skipped when the
module is absent) and "fused_head:CxTxACC" (its chunking: C rows per token chunk, T columns per
vocabulary tile or "V" for one tile, accumulator f32 | bf16; "auto" keeps the module's default for
any of the three, e.g. fused_head:256xVxbf16). A fused head is a training op: it is timed
forward+backward only (its forward alone is the chunked forward).

Cases, each run in its own subprocess with its own timeout (--case-timeout; a case that runs over
is recorded as timed out and the run goes on), each result appended to --out (JSONL) as it finishes:

* env:   device, versions, memory limit, and a bf16 GEMM of the case shape (achievable TFLOP/s).
* probe: each GPU kernel at a tiny shape (kernels.logprob._probe) with ``MOSAIC_GPU_DUMP_PTXAS=1``:
         the ptxas register / spill report of the Mosaic kernels lands in the row.
* check: the implementation against a float32 chunked reference computed on the same device
         (``default_matmul_precision("highest")``: no TF32), on inputs with realistic logits
         (h ~ N(0, 1), w ~ N(0, (logit_std / sqrt(D))^2): logit std --logit-std, default 4), in
         two variants: "lp+ent" (both outputs differentiated with random N(0, 1) cotangents) and
         "lp" (logp only: the SAPO path, entropy term skipped). Pass/fail per quantity:
         max |got - ref| / max |ref| <= TOL (logp, entropy 1e-4; dh, dw 2e-2: the gradients are
         bf16), all finite, logp <= 0, entropy >= 0. The reference itself is checked against the
         textbook formula on the first rows ("ref_vs_textbook").
* time:  per mode, "fwd" (logp and entropy) and "fwd+bwd" (value_and_grad w.r.t. (h, w) of
         sum(logp * g), the training case): compile time, first call, median of --iters calls,
         the matmul floor (2 N D V flop forward, 3x that forward+backward, at --peak-tflops,
         default 790: the H200's measured bf16 GEMM peak) and peak memory from a clean
         baseline: the inputs are made on the host with numpy (bf16 w is device_put, never a
         float32 copy on the device), ``memory_stats()`` is read before and
         after the timed calls and ``peak_bytes`` = peak after - bytes in use before. When the
         peak was already reached before the calls (e.g. by XLA's autotuner at compile time),
         ``peak_exact`` is false and the figure is an upper bound. Also XLA's temp bytes, and the
         peak *extra* memory: peak minus the outputs (dh and dw are results, not scratch), as a
         fraction of the naive float32 logits (N V 4 bytes).
* goal:  per fwd+bwd timing, the issue's goal (GOAL): time <= 1.25x the 3-matmul floor and extra
         memory <= 1/10 of the naive logits (the measured extra when the peak is exact, else XLA's
         temp bytes); the report ends with which implementations meet it.

The parent process never initialises a JAX backend (no GPU memory held while the cases run).
Prints markdown tables at the end; --json writes all rows; --tuned-out merges the fastest
implementations that passed their check into a kernels/tuned.json-style record (what
``impl="auto"`` reads, see kernels/dispatch.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402  (importing jax initialises no backend; only the cases call jax.devices)
import jax.numpy as jnp  # noqa: E402

from hopchain_jax.kernels import LogprobConfig  # noqa: E402
from hopchain_jax.kernels.dispatch import TUNED_KINDS, record_tuned  # noqa: E402

FULL = dict(ns=(4096,), d=4096, v=151_936, dtype="bfloat16")
SMALL = dict(ns=(64,), d=64, v=1000, dtype="bfloat16")
IMPLS = ("naive", "chunked", "pallas", "mosaic", "fused_head")
MODES = ("fwd", "fwd+bwd")
GPU_KERNELS = ("pallas", "mosaic")          # compile only for a GPU (CPU: interpret mode)
TOL = dict(logp=1e-4, entropy=1e-4, loss=1e-4, dh=2e-2, dw=2e-2)
GOAL = dict(x_floor=1.25, extra_vs_naive=0.1)  # fwd+bwd: <= 1.25x the 3-matmul floor, <= 1/10 logits
PEAK_TFLOPS = 790.0                           # measured H200 bf16 GEMM (device tool's KINDS.md)
ACCUM = {"f32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
         "auto": None}
TEXTBOOK_ROWS = 64                            # rows of the reference checked against the textbook
SIGN_SLACK = 1e-6                             # logp <= slack, entropy >= -slack


# ----------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Case:
    """One unit of work run in its own process. kind: env | probe | check | time."""
    kind: str
    impl: str = ""
    mode: str = ""
    n: int = 0
    d: int = 0
    v: int = 0
    dtype: str = "bfloat16"
    opts: dict = dataclasses.field(default_factory=dict)   # iters, logit_std, seed, cfg, ...

    def label(self) -> str:
        return "/".join(x for x in (self.kind, self.impl, self.mode,
                                    f"N={self.n}" if self.n else "") if x)

    def row(self, **extra) -> dict:
        base = dict(kind=self.kind, impl=self.impl, mode=self.mode, n=self.n, d=self.d, v=self.v,
                    dtype=self.dtype)
        return {**base, **extra}


def parse_impl(name: str) -> tuple[str, dict]:
    """"mosaic:128x128x64x4" -> ("mosaic", {mosaic_fwd_block_n: 128, ..., mosaic_fwd_stages: 4});
    "fused_head:256xVxbf16" -> ("fused_head", {chunk_tokens: 256, chunk_vocab: "V",
    dw_accum_dtype: "bfloat16"}) ("V": the whole vocabulary, see :func:`fused_head_kwargs`)."""
    base, _, tile = name.partition(":")
    if base not in IMPLS:
        raise ValueError(f"unknown impl {name!r}; choose from {IMPLS} (mosaic:BNxBVxBKxS for tiles, "
                         "fused_head:CxTxACC for the fused head's chunking)")
    if not tile:
        return base, {}
    parts = tile.lower().split("x")
    if base == "fused_head":
        ok = (len(parts) == 3 and (parts[0].isdigit() or parts[0] == "auto")
              and (parts[1].isdigit() or parts[1] in ("v", "auto")) and parts[2] in ACCUM)
        if not ok or any(p.isdigit() and int(p) < 1 for p in parts[:2]):
            raise ValueError(f"fused_head suffix must be CxTxACC: C rows per chunk, T vocabulary "
                             f"columns per tile or V (one tile), ACC one of {sorted(ACCUM)}; 'auto' "
                             f"keeps a default (e.g. fused_head:256xVxbf16), got {tile!r}")
        c, t, acc = parts
        return base, dict(chunk_tokens=None if c == "auto" else int(c),
                          chunk_vocab="V" if t == "v" else None if t == "auto" else int(t),
                          dw_accum_dtype=ACCUM[acc])
    if base != "mosaic":
        raise ValueError(f"only 'mosaic' and 'fused_head' take a suffix, got {name!r}")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        raise ValueError(f"tile suffix must be BNxBVxBKxS (e.g. mosaic:128x128x64x4), got {tile!r}")
    keys = ("mosaic_fwd_block_n", "mosaic_fwd_block_v", "mosaic_fwd_block_k", "mosaic_fwd_stages")
    return base, dict(zip(keys, map(int, parts)))


def fused_head_kwargs(impl: str, v: int) -> dict:
    """The keyword arguments of ``sapo_loss_fused_forward`` a fused_head impl name stands for
    ({} for plain "fused_head": the module's defaults); chunk_vocab "V" -> v."""
    kw = parse_impl(impl)[1]
    if kw.get("chunk_vocab") == "V":
        kw["chunk_vocab"] = v
    return {k: x for k, x in kw.items() if x is not None}


def make_config(opts: dict, impl: str = "") -> LogprobConfig:
    """LogprobConfig from the case options (opts["cfg"]) plus the impl's tile suffix."""
    base, tile = parse_impl(impl) if impl else ("", {})
    return LogprobConfig(**{**opts.get("cfg", {}), **(tile if base == "mosaic" else {})})


# ----------------------------------------------------------------------------------------------
# Inputs (host-side, cached across case processes)
# ----------------------------------------------------------------------------------------------

def _np_dtype(dtype: str):
    import ml_dtypes
    return {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16, "float32": np.float32}[dtype]


def host_inputs(n: int, d: int, v: int, dtype: str, logit_std: float, seed: int,
                cache_dir: str | None = None) -> dict:
    """numpy inputs: h [n, d] ~ N(0, 1), w [d, v] ~ N(0, (logit_std / sqrt d)^2) (so the logits
    h @ w have std ~ logit_std), targets [n] int32, cotangents glp / gh [n] ~ N(0, 1), all in
    ``dtype`` except targets and cotangents (float32). w (the big one: 1.2 GB at the full bf16
    shape) is cached as .npy in cache_dir so the case processes draw it once."""
    rng = np.random.default_rng(seed)
    out = dict(h=rng.standard_normal((n, d), dtype=np.float32).astype(_np_dtype(dtype)),
               t=rng.integers(0, v, n).astype(np.int32),
               glp=rng.standard_normal(n).astype(np.float32),
               gh=rng.standard_normal(n).astype(np.float32))
    path = None
    if cache_dir:
        path = Path(cache_dir) / f"w_{d}x{v}_{dtype}_std{logit_std:g}_seed{seed}.npy"
        if path.exists():   # stored as raw unsigned ints: .npy cannot describe bfloat16
            out["w"] = np.load(path).view(_np_dtype(dtype))
            return out
    wrng = np.random.default_rng([seed, 1])
    w = np.empty((d, v), _np_dtype(dtype))
    scale = np.float32(logit_std / np.sqrt(d))
    for r0 in range(0, d, 256):   # row blocks: no [d, v] float32 temporary on the host either
        blk = wrng.standard_normal((min(256, d - r0), v), dtype=np.float32)
        blk *= scale
        w[r0:r0 + blk.shape[0]] = blk.astype(w.dtype)
    out["w"] = w
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, w.view(f"u{w.dtype.itemsize}"))
        os.replace(tmp, path)
    return out


def to_device(arrs: dict) -> dict:
    """device_put every host array as is (bf16 stays bf16) and wait for the copies."""
    dev = {k: jax.device_put(x) for k, x in arrs.items()}
    jax.block_until_ready(list(dev.values()))
    return dev


def mem_stats() -> dict | None:
    """bytes_in_use / peak_bytes_in_use / bytes_limit of device 0 (None where not reported: CPU)."""
    stats = jax.devices()[0].memory_stats()
    if not stats:
        return None
    return {k: int(stats[k]) for k in ("bytes_in_use", "peak_bytes_in_use", "bytes_limit")
            if k in stats}


# ----------------------------------------------------------------------------------------------
# Implementations
# ----------------------------------------------------------------------------------------------

def impl_fn(impl: str, cfg: LogprobConfig, interpret: bool):
    """(h, w, targets) -> (logp, entropy) for a log-prob implementation name (not fused_head)."""
    from hopchain_jax.kernels import fused_logprob_entropy
    base, _ = parse_impl(impl)
    if base == "naive":
        kw = dict(impl="reference")
    elif base == "chunked":
        kw = dict(impl="chunked", config=cfg)
    elif base in GPU_KERNELS:
        kw = dict(impl=f"{base}_interpret" if interpret else base, config=cfg)
    else:
        raise ValueError(f"{impl!r} is not a log-prob implementation")
    return lambda h, w, t: fused_logprob_entropy(h, w, t, **kw)


def fused_head_module():
    """kernels.fused_head, or None when this checkout does not have it."""
    try:
        from hopchain_jax.kernels import fused_head
    except ImportError:
        return None
    return fused_head if hasattr(fused_head, "sapo_loss_fused_forward") else None


def reference_config(chunk_v: int, v: int) -> LogprobConfig:
    """Chunked config of the float32 reference: vocabulary chunks of chunk_v (at most V, rounded
    up to the 128-column block)."""
    bv = min(128, chunk_v)
    return LogprobConfig(block_v=bv, chunk_v=min(chunk_v, -(-v // bv) * bv))


def reference_fn(chunk_v: int, v: int):
    """The float32 oracle: chunked log-prob on float32 copies of h and w (made inside the jit)."""
    from hopchain_jax.kernels import logprob_entropy_chunked
    cfg = reference_config(chunk_v, v)

    def fn(h, w, t):
        return logprob_entropy_chunked(h.astype(jnp.float32), w.astype(jnp.float32), t, config=cfg)
    return fn


def rel_err(a, b) -> float:
    """max |a - b| / max |b| in float64 (inf when a holds non-finite values)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if not np.all(np.isfinite(a)):
        return float("inf")
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


def value_and_grads(fn, t, glp, gh):
    """jit of (h, w) -> (logp, entropy, dh, dw) for loss sum(logp * glp) [+ sum(entropy * gh)].

    gh=None: the entropy is not differentiated (symbolic-zero cotangent: the SAPO path).
    """
    def loss(h, w):
        lp, en = fn(h, w, t)
        total = jnp.sum(lp * glp) + (0.0 if gh is None else jnp.sum(en * gh))
        return total, (lp, jax.lax.stop_gradient(en))
    vg = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))

    def run(h, w):
        (_, (lp, en)), (dh, dw) = vg(h, w)
        return lp, en, dh, dw
    return run


def compare(got: dict, ref: dict, tol: dict = TOL) -> dict:
    """Errors and pass flags of the quantities in ``got`` against ``ref`` (same keys)."""
    errs = {k: rel_err(got[k], ref[k]) for k in got}
    passed = {k: bool(errs[k] <= tol[k]) for k in errs}
    return dict(errors=errs, passed=passed)


def _signs_ok(lp, en) -> bool:
    lp, en = np.asarray(lp, np.float32), np.asarray(en, np.float32)
    return bool(np.all(lp <= SIGN_SLACK) and np.all(en >= -SIGN_SLACK))


def check_impl(fn, x: dict, *, chunk_v: int = 16384, tol: dict = TOL) -> dict:
    """Check a (h, w, t) -> (logp, entropy) function against the float32 chunked reference.

    x: device arrays h [N, D], w [D, V], t [N], glp [N], gh [N]. Returns {"variants": {"lp+ent":
    {errors, passed, finite, signs}, "lp": ...}, "ref_vs_textbook": err, "ok": bool}.
    """
    ref = reference_fn(chunk_v, x["w"].shape[1])
    h32, w32 = _upcast(x["h"]), _upcast(x["w"])   # float32 inputs: float32 reference gradients
    names = ("logp", "entropy", "dh", "dw")
    out, ok = {}, True
    for variant, gh in (("lp+ent", x["gh"]), ("lp", None)):
        got = dict(zip(names, value_and_grads(fn, x["t"], x["glp"], gh)(x["h"], x["w"])))
        with jax.default_matmul_precision("highest"):
            want = dict(zip(names, value_and_grads(ref, x["t"], x["glp"], gh)(h32, w32)))
        res = compare(got, want, tol)
        res["finite"] = all(bool(np.all(np.isfinite(np.asarray(got[k], np.float32)))) for k in names)
        res["signs"] = _signs_ok(got["logp"], got["entropy"])
        res["ok"] = res["finite"] and res["signs"] and all(res["passed"].values())
        out[variant] = res
        ok = ok and res["ok"]
    ref_err = textbook_err(x, want["logp"], want["entropy"])
    ref_ok = bool(ref_err <= tol["logp"])
    return dict(variants=out, ref_vs_textbook=ref_err, ref_ok=ref_ok, ok=bool(ok and ref_ok))


def textbook_err(x: dict, lp_ref, en_ref) -> float:
    """The chunked reference's logp / entropy against the textbook formula (materialised float32
    logits) on the first TEXTBOOK_ROWS tokens: the oracle checked by an independent one."""
    from hopchain_jax.kernels import logprob_entropy_reference
    k = min(TEXTBOOK_ROWS, x["h"].shape[0])
    def textbook(h, w, t):
        return logprob_entropy_reference(h.astype(jnp.float32), w.astype(jnp.float32), t)
    with jax.default_matmul_precision("highest"):
        lp_t, en_t = jax.jit(textbook)(x["h"][:k], x["w"], x["t"][:k])
    return max(rel_err(lp_ref[:k], lp_t), rel_err(en_ref[:k], en_t))


_upcast = jax.jit(lambda a: a.astype(jnp.float32))


def _sapo_batch(n: int):
    """[B, T] views for the SAPO loss: B = 8 sequences when N allows, 90% of tokens valid,
    old_logp = the reference logp + N(0, 0.05^2) (ratios near 1: the gate gradient is live)."""
    b = 8 if n % 8 == 0 else 1
    rng = np.random.default_rng(7)
    mask = jnp.asarray(rng.random((b, n // b)) < 0.9)
    adv = jnp.asarray(rng.standard_normal(b), jnp.float32)
    return b, mask, adv, jnp.asarray(rng.standard_normal((b, n // b)) * 0.05, jnp.float32)


def check_fused_head(x: dict, *, chunk_v: int = 16384, tol: dict = TOL,
                     head_kwargs: dict | None = None) -> dict:
    """kernels.fused_head.sapo_loss_fused_forward (with ``head_kwargs``: its chunking) against the
    float32 chunked SAPO path (kernels.sapo_loss.sapo_loss_fused, impl="chunked", on float32
    copies): loss, logp and entropy statistics, dh and dw."""
    from hopchain_jax.kernels import sapo_loss_fused
    fh = fused_head_module()
    n, d = x["h"].shape
    b, mask, adv, noise = _sapo_batch(n)
    t2 = x["t"].reshape(b, n // b)
    ref_lp = reference_fn(chunk_v, x["w"].shape[1])
    with jax.default_matmul_precision("highest"):
        lp_r, en_r = jax.jit(ref_lp)(x["h"], x["w"], x["t"])
    old = lp_r.reshape(b, -1) + noise
    cfg = reference_config(chunk_v, x["w"].shape[1])

    def ref_loss(h, w):   # float32 h, w: float32 gradients
        return sapo_loss_fused(h.reshape(b, n // b, d), w, t2, old, adv, mask, impl="chunked",
                               config=cfg)

    def got_loss(h, w):
        loss, stats = fh.sapo_loss_fused_forward(h.reshape(b, n // b, d), w, t2, old, adv, mask,
                                                 **(head_kwargs or {}))
        return loss, (stats["logp"], stats["entropy"])

    with jax.default_matmul_precision("highest"):
        loss_r, (dh_r, dw_r) = jax.jit(jax.value_and_grad(ref_loss, argnums=(0, 1)))(
            _upcast(x["h"]), _upcast(x["w"]))
    (loss, (lp, en)), (dh, dw) = jax.jit(jax.value_and_grad(got_loss, argnums=(0, 1),
                                                            has_aux=True))(x["h"], x["w"])
    got = dict(loss=loss[None], logp=lp.reshape(-1), entropy=en.reshape(-1), dh=dh, dw=dw)
    want = dict(loss=loss_r[None], logp=lp_r, entropy=en_r, dh=dh_r, dw=dw_r)
    res = compare(got, want, tol)
    res["finite"] = all(bool(np.all(np.isfinite(np.asarray(v, np.float32)))) for v in got.values())
    res["signs"] = _signs_ok(lp, en)
    res["ok"] = res["finite"] and res["signs"] and all(res["passed"].values())
    ref_err = textbook_err(x, lp_r, en_r)
    ref_ok = bool(ref_err <= tol["logp"])
    return dict(variants={"sapo": res}, ref_vs_textbook=ref_err, ref_ok=ref_ok,
                ok=bool(res["ok"] and ref_ok))


# ----------------------------------------------------------------------------------------------
# Case bodies (run inside the case process)
# ----------------------------------------------------------------------------------------------

def _device_row() -> dict:
    dev = jax.devices()[0]
    return dict(platform=jax.default_backend(), device=str(dev.device_kind),
                jax=jax.__version__)


def run_env(case: Case) -> dict:
    """Device and versions, memory limit, and a bf16 GEMM [n, d] x [d, v] -> float32 (median of 5)."""
    import jaxlib
    dev = jax.devices()[0]
    row = case.row(status="ok", **_device_row(), jaxlib=jaxlib.__version__,
                   python=platform.python_version(), n_devices=jax.device_count(),
                   compute_capability=getattr(dev, "compute_capability", None), memory=mem_stats())
    o = case.opts   # the same inputs as the other cases: the cached w is drawn once
    x = host_inputs(case.n, case.d, case.v, case.dtype, o.get("logit_std", 4.0), o.get("seed", 1),
                    o.get("cache_dir"))
    h, w = jax.device_put(x["h"]), jax.device_put(x["w"])
    f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32)).lower(h, w).compile()
    jax.block_until_ready(f(h, w))
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        jax.block_until_ready(f(h, w))
        times.append(time.perf_counter() - t0)
    ms = 1e3 * statistics.median(times)
    row.update(gemm_ms=ms, gemm_tflops=2.0 * case.n * case.d * case.v / (ms * 1e-3) / 1e12)
    return row


def run_probe(case: Case) -> dict:
    """kernels.logprob._probe: the kernel lowers, runs and matches the reference at a tiny shape."""
    from hopchain_jax.kernels import logprob as lpm
    err = lpm._probe(case.impl, jax.default_backend(), bool(case.opts.get("interpret")))
    return case.row(status="ok" if err <= 5e-2 else "fail", rel_err=err, **_device_row())


def run_check(case: Case) -> dict:
    """The on-device correctness check of one implementation (see :func:`check_impl`)."""
    o = case.opts
    x = to_device(host_inputs(case.n, case.d, case.v, case.dtype, o.get("logit_std", 4.0),
                              o.get("seed", 1), o.get("cache_dir")))
    chunk_v = make_config(o).chunk_v
    if parse_impl(case.impl)[0] == "fused_head":
        res = check_fused_head(x, chunk_v=chunk_v, head_kwargs=fused_head_kwargs(case.impl, case.v))
    else:
        res = check_impl(impl_fn(case.impl, make_config(o, case.impl), o.get("interpret", False)), x,
                         chunk_v=chunk_v)
    return case.row(status="ok" if res["ok"] else "fail", logit_std=o.get("logit_std", 4.0),
                    tol=TOL, **res, **_device_row())


def _timed_fn(case: Case):
    """The jitted function a time case measures and the names of its input arrays."""
    o = case.opts
    if parse_impl(case.impl)[0] == "fused_head":
        fh = fused_head_module()
        n, d = case.n, case.d
        b, mask, adv, noise = _sapo_batch(n)
        old = jnp.full((b, n // b), -5.0) + noise
        kw = fused_head_kwargs(case.impl, case.v)

        def loss(h, w, t):
            return fh.sapo_loss_fused_forward(h.reshape(b, n // b, d), w, t.reshape(b, n // b),
                                              old, adv, mask, **kw)[0]
        f = loss if case.mode == "fwd" else jax.value_and_grad(loss, argnums=(0, 1))
        return jax.jit(f), ("h", "w", "t")
    fn = impl_fn(case.impl, make_config(o, case.impl), o.get("interpret", False))
    if case.mode == "fwd":
        return jax.jit(lambda h, w, t, g: fn(h, w, t)), ("h", "w", "t", "glp")

    def loss(h, w, t, g):
        lp, en = fn(h, w, t)
        return jnp.sum(lp * g), jax.lax.stop_gradient(en)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)), ("h", "w", "t", "glp")


def run_time(case: Case) -> dict:
    """Compile, then inputs, then the baseline memory reading, then the timed calls."""
    o = case.opts
    row = case.row(**_device_row())
    hx = host_inputs(case.n, case.d, case.v, case.dtype, o.get("logit_std", 4.0), o.get("seed", 1),
                     o.get("cache_dir"))
    f, names = _timed_fn(case)
    t0 = time.perf_counter()
    compiled = f.lower(*(jax.ShapeDtypeStruct(hx[k].shape, hx[k].dtype) for k in names)).compile()
    row["compile_s"] = time.perf_counter() - t0
    ma = compiled.memory_analysis()
    row["temp_bytes"] = int(ma.temp_size_in_bytes) if ma is not None else None
    x = to_device({k: hx[k] for k in names})
    del hx
    args = [x[k] for k in names]
    before = mem_stats()
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    row["first_call_s"] = time.perf_counter() - t0
    row["output_bytes"] = int(sum(a.nbytes for a in jax.tree.leaves(out)))
    del out
    times = []
    for _ in range(int(o.get("iters", 20))):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    after = mem_stats()
    row.update(ms=1e3 * statistics.median(times), ms_min=1e3 * min(times), iters=len(times),
               mem_before=before, mem_after=after)
    if before and after and "peak_bytes_in_use" in after:
        row["peak_bytes"] = after["peak_bytes_in_use"] - before["bytes_in_use"]
        row["peak_exact"] = after["peak_bytes_in_use"] > before["peak_bytes_in_use"]
    flops = 2.0 * case.n * case.d * case.v * (3 if case.mode == "fwd+bwd" else 1)
    row["floor_ms"] = 1e3 * flops / (o.get("peak_tflops", PEAK_TFLOPS) * 1e12)
    row["tflops"] = flops / (row["ms"] * 1e-3) / 1e12
    row.update(goal_fields(row))
    if o.get("profile"):
        with jax.profiler.trace(o["profile"]):
            for _ in range(3):
                with jax.profiler.TraceAnnotation(case.label()):
                    jax.block_until_ready(compiled(*args))
    row["status"] = "ok"
    return row


def goal_fields(row: dict) -> dict:
    """x_floor (time / the matmul floor), extra_bytes (peak minus the outputs), extra_vs_naive
    (that over the naive float32 logits, N V 4 bytes), temp_vs_naive (XLA's temp buffer over the
    same) and, for fwd+bwd, the GOAL verdicts (goal_speed, goal_memory, goal_met). The memory
    verdict uses the measured peak when it is exact, else XLA's temp bytes (the scratch XLA
    allocates per call; a peak set earlier, e.g. by the autotuner at compile time, is only an
    upper bound), and is None when neither is known; goal_memory_from says which."""
    naive = 4 * row["n"] * row["v"]
    f = dict(x_floor=row["ms"] / row["floor_ms"], naive_logits_bytes=naive)
    if row.get("peak_bytes") is not None:
        f["extra_bytes"] = row["peak_bytes"] - row.get("output_bytes", 0)
        f["extra_vs_naive"] = f["extra_bytes"] / naive
    if row.get("temp_bytes") is not None:
        f["temp_vs_naive"] = row["temp_bytes"] / naive
    if row.get("mode") == "fwd+bwd":
        f["goal_speed"] = bool(f["x_floor"] <= GOAL["x_floor"])
        if "extra_vs_naive" in f and row.get("peak_exact", True):
            f["goal_memory_from"], ratio = "peak", f["extra_vs_naive"]
        elif "temp_vs_naive" in f:
            f["goal_memory_from"], ratio = "xla_temp", f["temp_vs_naive"]
        else:
            f["goal_memory_from"], ratio = None, None
        f["goal_memory"] = None if ratio is None else bool(ratio <= GOAL["extra_vs_naive"])
        f["goal_met"] = bool(f["goal_speed"] and f["goal_memory"])
    return f


RUNNERS = {"env": run_env, "probe": run_probe, "check": run_check, "time": run_time}


def run_case(case: Case) -> dict:
    """Run one case in this process; exceptions become status "error" rows (with a traceback)."""
    t0 = time.perf_counter()
    try:
        row = RUNNERS[case.kind](case)
    except Exception as e:  # noqa: BLE001 - report and go on (lowering missing, OOM, ...)
        row = case.row(status="error", error=f"{type(e).__name__}: {str(e)[:1500]}",
                       traceback=traceback.format_exc()[-3000:])
    row["seconds"] = time.perf_counter() - t0
    return row


# ----------------------------------------------------------------------------------------------
# Parent: plan, run each case in a subprocess with a timeout, append JSONL
# ----------------------------------------------------------------------------------------------

def skip_reason(impl: str, kind: str, platform_name: str | None, interpret: bool) -> str | None:
    """Why a case cannot run here (None: it can)."""
    base = parse_impl(impl)[0] if impl else ""
    if base == "fused_head" and fused_head_module() is None:
        return "kernels/fused_head.py not in this checkout"
    if base in GPU_KERNELS and platform_name == "cpu" and not interpret:
        return "needs a GPU: on CPU the Pallas/Mosaic kernels run only in interpret mode (--interpret)"
    if base == "mosaic" and platform_name not in (None, "cpu", "gpu", "cuda"):
        return f"Mosaic GPU kernels do not run on {platform_name}"
    return None


def plan(args, shape: dict) -> list[Case]:
    """env, the probes (GPU kernels), then per implementation in --impls order its check and its
    timings (per N, per mode): with a --budget the first implementations are complete."""
    opts = dict(iters=args.iters, logit_std=args.logit_std, seed=args.seed,
                interpret=args.interpret, cfg=shape["cfg"], peak_tflops=args.peak_tflops,
                cache_dir=args.cache_dir)
    n0 = max(shape["ns"])
    common = dict(d=shape["d"], v=shape["v"], dtype=shape["dtype"], opts=opts)
    cases = [Case("env", n=n0, **common)]
    impls = args.impls.split(",")
    if not args.no_probe:
        cases += [Case("probe", impl=i, **{**common, "d": 0, "v": 0})
                  for i in impls if parse_impl(i)[0] in GPU_KERNELS and ":" not in i]
    checked = impls if args.check_impls is None else args.check_impls.split(",")
    for i in impls:
        if not args.no_check and i in checked:
            cases.append(Case("check", impl=i, n=args.check_n or n0, **common))
        if args.check_only:
            continue
        for n in shape["ns"]:
            for m in args.modes.split(","):
                if m == "fwd" and parse_impl(i)[0] == "fused_head":
                    continue   # a training op: its forward alone is the chunked forward
                case_opts = dict(opts)
                if args.profile:
                    case_opts["profile"] = os.path.join(args.profile,
                                                        f"{i}_{m}_{n}".replace(":", "-"))
                cases.append(Case("time", impl=i, mode=m, n=n, **{**common, "opts": case_opts}))
    return cases


def _ptxas_lines(text: str) -> list[str]:
    """The ptxas register / spill report lines from a case's output (MOSAIC_GPU_DUMP_PTXAS=1)."""
    keys = ("registers", "spill", "ptxas info", "bytes stack frame")
    return [ln.strip()[:300] for ln in text.splitlines() if any(k in ln for k in keys)][:40]


def run_isolated(case: Case, timeout_s: float) -> dict:
    """Run ``case`` in a fresh Python process; a timeout or crash becomes a row, never an exception."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "row.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--case",
               json.dumps(dataclasses.asdict(case)), "--result", str(result)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if case.kind == "probe" and parse_impl(case.impl)[0] == "mosaic":
            env["MOSAIC_GPU_DUMP_PTXAS"] = "1"
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
            out, err, rc = proc.stdout, proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as e:
            dec = lambda b: b.decode(errors="replace") if isinstance(b, bytes) else (b or "")  # noqa: E731
            return case.row(status="timeout", timeout_s=timeout_s,
                            seconds=time.perf_counter() - t0,
                            output_tail=(dec(e.stdout) + dec(e.stderr))[-1500:])
        if result.exists():
            row = json.loads(result.read_text())
        else:
            row = case.row(status="error", error=f"case process exited {rc} without a result",
                           output_tail=(out + err)[-3000:])
        row["rc"] = rc
        if case.kind == "probe":
            row["ptxas"] = _ptxas_lines(out + err)
        if row.get("status") not in ("ok",):
            row.setdefault("output_tail", (out + err)[-1500:])
        return row


def append_jsonl(path: str | None, row: dict) -> None:
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps(row, default=str) + "\n")
            fh.flush()


def execute(cases: list[Case], args) -> list[dict]:
    """Run the plan: env first (its platform decides the skips), each case within --budget."""
    rows, plat, t_start = [], None, time.perf_counter()
    for case in cases:
        left = (args.budget - (time.perf_counter() - t_start)) if args.budget else None
        reason = skip_reason(case.impl, case.kind, plat, args.interpret) if case.kind != "env" else None
        if reason is None and left is not None and left < 10:
            reason = f"run budget of {args.budget:.0f} s spent"
        if reason is not None:
            row = case.row(status="skipped", reason=reason)
        elif args.no_isolate:
            row = run_case(case)
        else:
            tmo = args.case_timeout if left is None else max(5.0, min(args.case_timeout, left - 5))
            row = run_isolated(case, tmo)
        if case.kind == "env" and row.get("status") == "ok":
            plat = row.get("platform")
        rows.append(row)
        append_jsonl(args.out, row)
        print(f"[{time.perf_counter() - t_start:6.1f}s] {case.label()}: {row['status']}"
              + (f" ({row.get('reason') or row.get('error', '')[:200]})"
                 if row["status"] in ("skipped", "error") else ""), flush=True)
    return rows


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------

def _fmt_bytes(b) -> str:
    if b is None:
        return "-"
    for unit, s in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(b) >= s:
            return f"{b / s:.2f} {unit}"
    return f"{b} B"


def check_table(rows: list[dict]) -> str:
    out = ["| impl | N | variant | logp | entropy | dh | dw | loss | finite | signs | pass |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if r["kind"] != "check":
            continue
        if not r.get("variants"):
            out.append(f"| {r['impl']} | {r['n']} | - | {r['status']}: "
                       f"{(r.get('reason') or r.get('error') or '')[:120]} | | | | | | | no |")
            continue
        for name, res in r["variants"].items():
            e = res["errors"]
            def cell(k, e=e, res=res):
                return "-" if k not in e else f"{e[k]:.1e}{'' if res['passed'][k] else ' FAIL'}"
            out.append(f"| {r['impl']} | {r['n']} | {name} | {cell('logp')} | {cell('entropy')} | "
                       f"{cell('dh')} | {cell('dw')} | {cell('loss')} | {res['finite']} | "
                       f"{res['signs']} | {'yes' if res['ok'] else 'no'} |")
    return "\n".join(out)


def time_table(rows: list[dict], gemm_tflops: float | None) -> str:
    out = ["| impl | mode | N | ms (median) | floor ms | x floor | TFLOP/s | % of GEMM | "
           "peak mem | extra mem (of naive logits) | XLA temp (of naive) | checked | goal | "
           "compile s |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    checked = {r["impl"]: r["status"] for r in rows if r["kind"] == "check"}
    for r in rows:
        if r["kind"] != "time":
            continue
        if r["status"] != "ok":
            why = (r.get("reason") or r.get("error") or r.get("status"))[:120]
            out.append(f"| {r['impl']} | {r['mode']} | {r['n']} | {r['status']}: {why} | "
                       "| | | | | | | | | |")
            continue
        gemm = f"{100 * r['tflops'] / gemm_tflops:.1f}%" if gemm_tflops else "-"
        bound = "<= " if r.get("peak_bytes") is not None and not r.get("peak_exact", True) else ""
        peak = bound + _fmt_bytes(r.get("peak_bytes"))
        extra = ("-" if r.get("extra_bytes") is None else
                 f"{bound}{_fmt_bytes(r['extra_bytes'])} ({r['extra_vs_naive']:.3f})")
        goal = "-" if "goal_met" not in r else goal_cell(r)
        x_floor = r.get("x_floor", r["ms"] / r["floor_ms"])
        out.append(f"| {r['impl']} | {r['mode']} | {r['n']} | {r['ms']:.3f} | {r['floor_ms']:.3f} | "
                   f"{x_floor:.2f}x | {r['tflops']:.2f} | {gemm} | {peak} | {extra} | "
                   f"{_temp_cell(r)} | {checked.get(r['impl'], 'no')} | {goal} | "
                   f"{r.get('compile_s', 0):.1f} |")
    return "\n".join(out)


def goal_cell(r: dict) -> str:
    """"met", or what was missed / not measured (CPU backends report no memory)."""
    if r["goal_met"]:
        return "met"
    parts = [f"{k} missed" for k, ok in (("speed", r["goal_speed"]), ("memory", r["goal_memory"]))
             if ok is False]
    return "; ".join(parts + (["memory not measured"] if r["goal_memory"] is None else []))


def _temp_cell(r: dict) -> str:
    t = _fmt_bytes(r.get("temp_bytes"))
    return t if r.get("temp_vs_naive") is None else f"{t} ({r['temp_vs_naive']:.3f})"


def goal_summary(rows: list[dict], peak_tflops: float) -> str:
    """One line: the fwd+bwd timings that meet GOAL (and passed their check), else the closest."""
    passed = {r["impl"] for r in rows if r["kind"] == "check" and r["status"] == "ok"}
    timed = [r for r in rows if r["kind"] == "time" and r["status"] == "ok" and "goal_met" in r]
    head = (f"goal (fwd+bwd <= {GOAL['x_floor']}x the 3-matmul floor at {peak_tflops:g} TFLOP/s, "
            f"extra memory <= {GOAL['extra_vs_naive']} of the naive logits): ")
    if not timed:
        return head + "no fwd+bwd timing"
    met = [r["impl"] for r in timed if r["goal_met"] and r["impl"] in passed]
    best = min(timed, key=lambda r: r["x_floor"])
    return head + (f"met by {', '.join(met)}" if met else "not met") + (
        f"; fastest {best['impl']} at {best['x_floor']:.2f}x"
        + (f" with extra {best['extra_vs_naive']:.3f}" if "extra_vs_naive" in best else ""))


def tuned_timings(rows: list[dict], mode: str) -> tuple[dict, dict]:
    """{impl: ms} of the largest N's ``mode`` timings of implementations that passed their check
    (only the names "auto" can pick: chunked / pallas / mosaic with the default config), and the
    env row."""
    env = next((r for r in rows if r["kind"] == "env" and r["status"] == "ok"), {})
    passed = {r["impl"] for r in rows if r["kind"] == "check" and r["status"] == "ok"}
    timed = [r for r in rows if r["kind"] == "time" and r["status"] == "ok" and r["mode"] == mode
             and r["impl"] in TUNED_KINDS and r["impl"] in passed]
    if not timed:
        return {}, env
    n = max(r["n"] for r in timed)
    return {r["impl"]: r["ms"] for r in timed if r["n"] == n}, env


def write_tuned(rows: list[dict], path: str, mode: str) -> dict | None:
    ms, env = tuned_timings(rows, mode)
    if not ms or not env:
        print(f"tuned record: nothing to record (no {mode} timing with a passed check)")
        return None
    r0 = next(r for r in rows if r["kind"] == "time" and r["impl"] in ms)
    rec = record_tuned(path, env["platform"], env["device"], r0["dtype"], ms, mode=mode,
                       shape=[r0["n"], r0["d"], r0["v"]])
    print(f"tuned record -> {path}: {env['platform']}|{env['device']}|{r0['dtype']} "
          f"order {rec['order']}")
    return rec


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="CPU dry-run shape (N=64, D=64, V=1000)")
    ap.add_argument("--interpret", action="store_true",
                    help="run the Pallas / Mosaic GPU kernels in interpret mode (CPU)")
    ap.add_argument("--impls", default="mosaic,chunked,pallas,fused_head,naive",
                    help="comma-separated, most wanted first (a --budget cuts the tail)")
    ap.add_argument("--modes", default="fwd+bwd,fwd")
    ap.add_argument("--n", "--ns", dest="n", default=None,
                    help="token count(s), comma-separated (default 4096; --small 64)")
    ap.add_argument("--d", type=int, default=None)
    ap.add_argument("--v", type=int, default=None)
    ap.add_argument("--dtype", default=None, choices=("bfloat16", "float16", "float32"))
    ap.add_argument("--iters", type=int, default=None, help="timed calls per case (20; --small 3)")
    ap.add_argument("--logit-std", type=float, default=4.0, help="std of the check's logits")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--check-only", action="store_true", help="env, probes and checks; no timings")
    ap.add_argument("--no-check", action="store_true", help="skip the correctness checks")
    ap.add_argument("--no-probe", action="store_true", help="skip the kernel probes")
    ap.add_argument("--check-impls", default=None,
                    help="comma-separated subset of --impls to check (default: all of them; "
                         "names not in --impls are ignored)")
    ap.add_argument("--check-n", type=int, default=None, help="tokens of the check (default: N)")
    ap.add_argument("--out", default=None, help="append one JSON line per case here")
    ap.add_argument("--json", default=None, help="also write all rows as one JSON document")
    ap.add_argument("--tuned-out", default=None,
                    help="merge the measured order of chunked/pallas/mosaic into this record file")
    ap.add_argument("--tuned-mode", default="fwd+bwd", choices=MODES)
    ap.add_argument("--case-timeout", type=float, default=None,
                    help="seconds per case process (default 150; --small 60)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for the whole run: later cases are skipped, never cut short")
    ap.add_argument("--cache-dir", default=None,
                    help="where the host inputs are cached across cases (default: a temp dir)")
    ap.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS,
                    help="device peak for the floor (790: the H200's measured bf16 GEMM; the "
                         "H100/H200 SXM datasheet says 989)")
    ap.add_argument("--profile", default=None, metavar="DIR", help="write a jax.profiler trace here")
    ap.add_argument("--no-isolate", action="store_true",
                    help="run the cases in this process (no per-case timeout; peaks accumulate)")
    ap.add_argument("--block-n", type=int, default=64)
    ap.add_argument("--block-v", type=int, default=128)
    ap.add_argument("--block-k", type=int, default=64)
    ap.add_argument("--tiles-per-program", type=int, default=8)
    ap.add_argument("--chunk-v", type=int, default=None, help="default 16384; --small 256")
    ap.add_argument("--num-warps", type=int, default=4)
    ap.add_argument("--num-stages", type=int, default=3)
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)     # internal: one case (JSON)
    ap.add_argument("--result", default=None, help=argparse.SUPPRESS)   # internal: its row file
    return ap.parse_args(argv)


def resolve_shape(args) -> dict:
    base = SMALL if args.small else FULL
    ns = tuple(int(x) for x in args.n.split(",")) if args.n else base["ns"]
    chunk_v = args.chunk_v or (256 if args.small else 16384)
    cfg = dict(block_n=args.block_n, block_v=args.block_v, block_k=args.block_k,
               tiles_per_program=args.tiles_per_program, chunk_v=chunk_v,
               num_warps=args.num_warps, num_stages=args.num_stages)
    LogprobConfig(**cfg)   # validate before launching anything
    for i in args.impls.split(","):
        parse_impl(i)
    stray = set((args.check_impls or "").split(",")) - set(args.impls.split(",")) - {""}
    if stray:   # a note, not an error: a rerun may narrow --impls and keep the suite's list
        print(f"--check-impls: {sorted(stray)} not in --impls {args.impls!r}: not run")
    bad = [m for m in args.modes.split(",") if m not in MODES]
    if bad:
        raise SystemExit(f"--modes: unknown {bad}; choose from {MODES}")
    return dict(ns=ns, d=args.d or base["d"], v=args.v or base["v"],
                dtype=args.dtype or base["dtype"], cfg=cfg)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.case:   # child: one case, row to --result
        row = run_case(Case(**json.loads(args.case)))
        Path(args.result).write_text(json.dumps(row, default=str))
        return 0
    shape = resolve_shape(args)
    args.iters = args.iters or (3 if args.small else 20)
    args.case_timeout = args.case_timeout or (60.0 if args.small else 150.0)
    own_cache = args.cache_dir is None
    if own_cache:
        args.cache_dir = tempfile.mkdtemp(prefix="kbench_")
    try:
        rows = execute(plan(args, shape), args)
    finally:
        if own_cache:
            import shutil
            shutil.rmtree(args.cache_dir, ignore_errors=True)
    env = next((r for r in rows if r["kind"] == "env" and r["status"] == "ok"), {})
    print(f"\ndevice: {env.get('device', '?')} ({env.get('platform', '?')}); jax {env.get('jax', '?')}; "
          f"python {env.get('python', '?')}; shape N={shape['ns']} D={shape['d']} V={shape['v']} "
          f"{shape['dtype']}; GEMM {env.get('gemm_tflops', float('nan')):.3g} TFLOP/s; "
          f"config {shape['cfg']}; peak {args.peak_tflops} TFLOP/s")
    print("\nCorrectness (max |got - ref| / max |ref| vs float32 chunked reference; tolerances "
          f"{TOL}):\n" + check_table(rows))
    print("\nTimings:\n" + time_table(rows, env.get("gemm_tflops")))
    print("\n" + goal_summary(rows, args.peak_tflops))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(rows=rows, shape=shape), indent=1, default=str))
    if args.tuned_out:
        write_tuned(rows, args.tuned_out, args.tuned_mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
