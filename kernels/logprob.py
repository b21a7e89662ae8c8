"""Fused LM-head log-probability and entropy: ``logp, entropy = f(h @ w, targets)`` without the logits.

``fused_logprob_entropy(h, w, targets)`` returns, per token, ``log softmax(h @ w)[target]`` and the
entropy of ``softmax(h @ w)``, never writing the [N, V] logits to device memory (Pallas path) or only
one [N, chunk] slab at a time (chunked path). Inputs may be bfloat16; every accumulation is float32.

Math
----
Per row, with z = h @ w over the valid vocabulary, the kernels keep three running statistics:
``m = max z`` (started at -inf, never 0), ``s = sum exp(z - m)`` and ``u = sum exp(z - m) * (z - m)``,
plus the target logit ``zt``. Then ``logp = (zt - m) - log s`` (clamped to <= 0) and
``entropy = log s - u / s`` (clamped to >= 0). Keeping everything relative to the running max avoids
the cancellation of ``lse - E[z]`` for peaked distributions and the f32 ulp of a large ``lse`` (the
backward's residuals are ``m``, ``log s`` and ``u / s`` per row, not ``lse``). Two partial states
merge exactly (flash-attention style), which is how per-program partials, vocabulary chunks and
vocabulary shards are combined.

The backward accepts cotangents for both outputs (``g_lp``, ``g_H``):
``dz_j = g_lp (1[j = y] - p_j) - g_H p_j (z_j - E[z])`` with ``p_j = exp((z_j - m) - log s)``,
``dh = dz @ w^T``, ``dw = h^T @ dz``. It recomputes z one vocabulary chunk at a time (``lax.scan``
over the full chunks plus one static tail chunk, so ``w`` is never padded): per chunk, ``dz`` is
produced (by a Pallas kernel that fuses the matmul with the softmax epilogue, or by XLA in the
chunked variant) and handed to two XLA/cuBLAS matmuls; ``dh`` accumulates in float32 and ``dw`` is
written chunk by chunk into its output buffer. Peak extra memory is O((N + D) * chunk_v): one
[N, chunk_v] slab of ``dz`` in the compute dtype plus the float32 [D, chunk_v] ``dw`` tile. The
custom VJP uses symbolic zeros: an entropy that is not differentiated skips its term, a frozen ``w``
skips the ``dw`` matmul and a frozen ``h`` the ``dh`` matmul.

GPU lowerings: Mosaic GPU on Hopper, Pallas-Triton elsewhere, and what is verified
-----------------------------------------------------------------------------------
There are two GPU versions of the two kernels (forward statistics, backward dz tile); both share
the math above, the residuals and the backward driver, and differ only in how a tile is computed.

* ``impl="mosaic"`` (kernels/logprob_mosaic.py): ``plgpu.kernel`` for Hopper -- TMA streams h and
  w tiles into swizzled SMEM through ``plgpu.emit_pipeline``, ``wgmma`` accumulates in registers,
  the softmax epilogue runs on the accumulator. This is the lowering JAX maintains: from JAX 0.11
  the Triton backend is deprecated and "will be removed in a future version", and ``pallas_call``'s
  default GPU lowering is Mosaic GPU. Its kernels cannot be the generic Pallas body below: Mosaic
  GPU stages BlockSpec blocks whole in SMEM (a [64, 4096] bf16 h block is 512 KiB > 227 KiB), so
  the reduction over D has to be an explicit pipeline. 16-bit inputs only (wgmma on float32 is TF32).
* ``impl="pallas"``: the generic Pallas kernels below (ref slicing with ``pl.ds``, ``jnp.dot`` with
  ``preferred_element_type=float32``, row reductions, iota masks, ``fori_loop``), lowered with the
  **Triton** backend by passing ``jax.experimental.pallas.triton.CompilerParams`` explicitly. Refs
  are pointers there, so the kernel loads [block_n, block_k] x [block_k, block_v] tiles in a loop
  over D (the Triton matmul pattern); it runs on Ampere and Hopper, in interpret mode on CPU, and --
  with ``w_blocked=True`` / ``tiles_per_program=1`` (``TPU_CONFIG``) -- is laid out for Mosaic TPU
  (untested: no TPU).
* ``impl="auto"`` on a GPU probes, once per process, Mosaic GPU (Hopper, 16-bit inputs), then
  Triton, then falls back to the chunked XLA scan, warning for each kernel that does not lower or
  does not match the reference (:func:`auto_kernel`). That order is a prior; a measured one
  replaces it when ``kernels/tuned.json`` has a record for the device (written by
  ``benchmarks/kernels.py --tuned-out`` from the cases that passed its on-device check; see
  :func:`kernels.dispatch.tuned_order` and benchmarks/RESULTS.md).

Verified on CPU (tests/test_kernels_logprob.py, tests/test_kernels_mosaic.py): both kernels'
values and gradients against the reference in their interpreters (Pallas interpret mode; Mosaic
GPU's interpreter with simulated SMEM/TMA/barriers, where the layout primitives ``plgpu.load``,
``layout_cast`` and layout-carrying ``broadcasted_iota`` are replaced by their plain-JAX meaning,
see ``logprob_mosaic._load_rows``), and both full differentiated ops *lowered for CUDA* at the
production shape N=4096, D=4096, V=151,936 (the Triton IR and the Mosaic GPU module, including
Mosaic's register-layout checks and its SMEM budget, are produced on the CPU host), also under
``shard_map(check_vma=True)`` with a vocabulary-sharded w. (JAX 0.11's Triton lowering takes the
target's compute capability from the device, so on a CPU host it lowers under an abstract
"NVIDIA H200" device: ``jax.sharding.use_abstract_mesh`` with an ``AbstractDevice``; JAX 0.10
falls back to sm_90 by itself. From 0.11 ``pallas_call`` with Triton parameters also emits a
DeprecationWarning, "The Pallas Triton backend is deprecated".)

Not verified (no GPU was lent to the sessions that wrote this): PTX compilation and the results on
the device, speed, block tuning (``block_n`` 64/128, ``block_v`` 128/256, ``block_k`` 32/64,
``num_stages`` 2-4, ``tiles_per_program``, the Mosaic forward tile; Triton ``num_warps`` 4/8).
``bash benchmarks/gpu_suite.sh`` on the device runs ``benchmarks/kernels.py``: every
implementation checked on the device against a float32 reference (values and both gradients),
timed, its peak memory measured, and the measured order written for ``impl="auto"``.

Triton constraints honoured: all blocks are powers of two and every matmul dimension is >= 16
(``block_n``, ``block_k``, ``block_v``; checked in :class:`LogprobConfig`); there is no cross-program
reduction (each program writes its own partial statistics, merged in JAX; no atomics, no scratch);
tiles are never loaded out of bounds (N is padded to ``block_n``, D to ``block_k``; V is padded to
``block_v`` only when ``V % block_v != 0`` -- Qwen's 151,936 = 128 x 1187 needs no copy of ``w`` with
``block_v=128`` -- and the padded columns are masked to -inf). Mosaic GPU additionally needs, for
its dz tile (``block_*``) and its forward tile (``mosaic_fwd_block_*``), rows a multiple of 64,
``block_k * itemsize`` in {32, 64, 128} bytes, ``block_v <= 256`` and at most 128 x 128 float32
accumulator elements per warpgroup (checked with errors that name the field); the defaults satisfy
all of it.

Grid order: Pallas grid axis 0 becomes CUDA's fastest-varying block index, so both kernels put the
token tiles on axis 0: the blocks resident at the same time work on the same vocabulary tiles of
``w`` and share them through L2 (w is then read from HBM about once per pass, not N / block_n times).

Sharding
--------
``pallas_call`` is not partitioned by XLA. :func:`sharded_fused_logprob_entropy` wraps the op in
``jax.shard_map``: tokens sharded over ``token_axis``; ``w`` replicated, or vocabulary-sharded over
``vocab_axis`` (partials merged with ``pmax``/``psum``, ``dh`` summed over the vocabulary axis).
Inside your own ``shard_map`` call :func:`fused_logprob_entropy` with ``vocab_axis=`` when ``w`` is
vocabulary-sharded.
"""
from __future__ import annotations

import dataclasses
import functools
import threading
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jax.experimental import pallas as pl

from hopchain_jax.kernels import logprob_mosaic, tile_math
from hopchain_jax.kernels.dispatch import ACCELERATORS, current_platform, resolve_impl, tuned_order
from hopchain_jax.kernels.manual_axes import cast_varying, out_struct, psum_to, union_vary, vary
from hopchain_jax.kernels.reference import logprob_entropy_reference

try:  # Triton lowering (GPU). Present in JAX 0.10/0.11; may disappear in a later release.
    from jax.experimental.pallas import triton as _pl_triton
except Exception:  # pragma: no cover - depends on the installed JAX
    _pl_triton = None

_SQUEEZED = getattr(pl, "squeezed", None)
_NEG_INF = float("-inf")

__all__ = [
    "LogprobConfig", "fused_logprob_entropy", "sharded_fused_logprob_entropy", "auto_kernel",
    "logprob_entropy_reference", "logprob_entropy_chunked", "logprob_entropy_pallas",
    "logprob_entropy_mosaic",
]


def _is_pow2(x: int) -> bool:
    return x > 0 and (x & (x - 1)) == 0


@dataclasses.dataclass(frozen=True)
class LogprobConfig:
    """Tiling of the fused log-prob kernels (hashable: it is a static argument).

    block_n / block_v / block_k: token, vocabulary and hidden tiles of the Pallas matmuls (powers of
      two, >= 16).
    tiles_per_program: vocabulary tiles each forward program walks (online merge in registers); the
      forward grid is (ceil(N / block_n), ceil(V / block_v / tiles_per_program)) and writes one set
      of partial statistics per program.
    chunk_v: vocabulary chunk of the backward scan (both the Pallas and chunked variants) and of the
      chunked forward; a multiple of block_v. Peak extra memory ~ N * chunk_v * (4 + itemsize) bytes.
    num_warps / num_stages: Triton compiler parameters (GPU only); num_stages is also the depth of
      the TMA pipeline of the Mosaic GPU dz kernel (SMEM buffers per operand).
    w_blocked: give ``w`` a (D, block_v) BlockSpec instead of a whole-array ref (requires
      tiles_per_program=1). Needed for TPU (VMEM); the GPU default streams tiles from the whole ref.
    grad_dtype: dtype of dz fed to the dh/dw matmuls (None: the dtype of h).
    mosaic_fwd_block_n / mosaic_fwd_block_v / mosaic_fwd_block_k / mosaic_fwd_stages: the tile
      and TMA pipeline depth of the Mosaic GPU *forward* kernel (``impl="mosaic"``; the dz kernel
      uses block_n / block_v / block_k / num_stages). See :func:`mosaic_tile_budget` for what a
      tile costs; the default 128 x 128 x 64 with 4 stages is the largest tile one warpgroup can
      hold (128 float32 accumulator registers per thread) at the highest L2 arithmetic intensity:

        tile (bm x bv)   L2 bytes per k-step (bf16)   flop per k-step   flop / L2 byte
        64 x 128         2 (64 + 128) bk              2 * 64 * 128 bk      42.7
        64 x 256         2 (64 + 256) bk              2 * 64 * 256 bk      51.2
        128 x 128        2 (128 + 128) bk             2 * 128 * 128 bk     64.0
        128 x 256        2 (128 + 256) bk             2 * 128 * 256 bk     85.3 (needs 2 warpgroups)

      i.e. ``bm * bv / (bm + bv)`` flop per byte read from L2 (each CTA streams its h rows and its
      w columns once per vocabulary tile; HBM traffic is lower: w tiles are shared through L2 by
      the CTAs resident together, see "Grid order"). 128 x 256 would need 256 accumulator
      registers per thread in one warpgroup (the limit is 255), so it is rejected. SMEM per stage:
      2 (bm + bv) bk bytes (32 KiB for 128 x 128 x 64; 4 stages = 128 KiB of 227 KiB).
      Which tile is fastest on a device is a measurement: ``benchmarks/kernels.py --impls
      mosaic,mosaic:64x128x64x3,mosaic:64x256x64x4`` (forward tile BN x BV x BK, S stages).
    """
    block_n: int = 64
    block_v: int = 128
    block_k: int = 64
    tiles_per_program: int = 8
    chunk_v: int = 16384
    num_warps: int = 4
    num_stages: int = 3
    w_blocked: bool = False
    grad_dtype: Any = None
    mosaic_fwd_block_n: int = 128
    mosaic_fwd_block_v: int = 128
    mosaic_fwd_block_k: int = 64
    mosaic_fwd_stages: int = 4

    def __post_init__(self):
        for name in ("block_n", "block_v", "block_k", "mosaic_fwd_block_n", "mosaic_fwd_block_v",
                     "mosaic_fwd_block_k"):
            v = getattr(self, name)
            if not _is_pow2(v) or v < 16:
                raise ValueError(f"{name} must be a power of two >= 16 (Triton/MMA), got {v}")
        if self.num_stages < 1 or self.mosaic_fwd_stages < 1:
            raise ValueError("num_stages and mosaic_fwd_stages must be >= 1")
        if self.tiles_per_program < 1:
            raise ValueError("tiles_per_program must be >= 1")
        if self.w_blocked and self.tiles_per_program != 1:
            raise ValueError("w_blocked=True needs tiles_per_program=1")
        if self.chunk_v < self.block_v or self.chunk_v % self.block_v:
            raise ValueError("chunk_v must be a positive multiple of block_v")


    def mosaic_forward(self) -> "LogprobConfig":
        """This config with the Mosaic GPU forward tile in block_n / block_v / block_k / num_stages
        (what :func:`kernels.logprob_mosaic.stats` and the forward's padding read)."""
        bv = self.mosaic_fwd_block_v
        return dataclasses.replace(
            self, block_n=self.mosaic_fwd_block_n, block_v=bv, block_k=self.mosaic_fwd_block_k,
            num_stages=self.mosaic_fwd_stages, chunk_v=_round_up(self.chunk_v, bv),
            w_blocked=False)


def mosaic_tile_budget(block_n: int, block_v: int, block_k: int, stages: int,
                       itemsize: int = 2) -> dict:
    """What one Mosaic GPU matmul tile costs (one warpgroup = 128 threads per CTA).

    Returns ``flop_per_l2_byte`` (= bn * bv / ((bn + bv) * itemsize / 2): flop per byte streamed
    from L2 into SMEM by the K pipeline), ``acc_regs_per_thread`` (float32 accumulator registers
    of each of the 128 threads, bn * bv / 128; the hardware limit is 255 per thread in total) and
    ``smem_bytes`` (the pipeline buffers: stages * (bn + bv) * bk * itemsize).
    """
    return dict(flop_per_l2_byte=2.0 * block_n * block_v / ((block_n + block_v) * itemsize),
                acc_regs_per_thread=block_n * block_v // 128,
                smem_bytes=stages * (block_n + block_v) * block_k * itemsize)


DEFAULT_CONFIG = LogprobConfig()
TPU_CONFIG = LogprobConfig(block_n=128, block_v=128, block_k=128, tiles_per_program=1, w_blocked=True)


def _default_config(platform: str) -> LogprobConfig:
    return TPU_CONFIG if platform == "tpu" else DEFAULT_CONFIG


@dataclasses.dataclass(frozen=True)
class _Spec:
    kind: str  # "chunked" | "pallas" (Triton on GPU) | "mosaic" (Mosaic GPU)
    config: LogprobConfig
    interpret: bool
    vocab_axis: Any = None


# ----------------------------------------------------------------------------------------------
# Online statistics: (m, s, u, zt) per row. m = max, s = sum exp(z-m), u = sum exp(z-m)(z-m).
# ----------------------------------------------------------------------------------------------

def _merge_stats(m, s, u, zt, axis=0):
    """Merge partial statistics stacked along ``axis`` (exact; -inf partials contribute nothing)."""
    mx = jnp.max(m, axis=axis)
    mx_safe = jnp.where(mx == _NEG_INF, 0.0, mx)
    mxe = jnp.expand_dims(mx_safe, axis)
    a = jnp.exp(m - mxe)
    shift = jnp.where(m == _NEG_INF, 0.0, m - mxe)
    s_tot = jnp.sum(a * s, axis=axis)
    u_tot = jnp.sum(a * (u + s * shift), axis=axis)
    return mx, s_tot, u_tot, jnp.sum(zt, axis=axis)


def _merge_across(stats, axis_name):
    """Merge per-device statistics over a mesh axis (vocabulary sharding)."""
    m, s, u, zt = stats
    mx = lax.pmax(m, axis_name)
    mx_safe = jnp.where(mx == _NEG_INF, 0.0, mx)
    a = jnp.exp(m - mx_safe)
    shift = jnp.where(m == _NEG_INF, 0.0, m - mx_safe)
    return (mx, lax.psum(a * s, axis_name), lax.psum(a * (u + s * shift), axis_name),
            lax.psum(zt, axis_name))


def _finalize(m, s, u, zt):
    """-> logp (<= 0), entropy (>= 0) and the backward's residuals (m, log s, u / s).

    Everything is kept relative to the row max m (a logit value): with logits around -150 the f32
    ulp of lse itself is ~1e-5, which would leak into p = exp(z - lse) as a 1e-5 relative error;
    (z - m) - log s does not have that problem.
    """
    log_s = jnp.log(s)
    mu = u / s                      # E[z] - m
    m = jnp.where(m == _NEG_INF, 0.0, m)
    logp = jnp.minimum((zt - m) - log_s, 0.0)
    ent = jnp.maximum(log_s - mu, 0.0)
    return logp, ent, (m, log_s, mu)


def _block_stats(z, cols, valid, tgt):
    """Statistics of one [n, c] float32 logit block (masked columns excluded)."""
    zm = jnp.where(valid, z, _NEG_INF)
    m = jnp.max(zm, axis=1)
    m_safe = jnp.where(m == _NEG_INF, 0.0, m)
    p = jnp.exp(zm - m_safe[:, None])
    d = jnp.where(valid, z - m_safe[:, None], 0.0)
    s = jnp.sum(p, axis=1)
    u = jnp.sum(p * d, axis=1)
    zt = jnp.sum(jnp.where(valid & (cols == tgt[:, None]), z, 0.0), axis=1)
    return m, s, u, zt


def _merge2(a, b):
    return _merge_stats(*(jnp.stack([x, y]) for x, y in zip(a, b)))


# ----------------------------------------------------------------------------------------------
# Padding helpers
# ----------------------------------------------------------------------------------------------

def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _pad_axis(x, axis, size, value=0):
    extra = size - x.shape[axis]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def _row_spec(bn):
    return pl.BlockSpec((bn,), lambda i, j: (i,))


def _triton_params_type():
    """The Pallas-Triton compiler-parameter class, or None when this JAX has no Triton lowering.

    Current name (JAX 0.10 and 0.11): ``jax.experimental.pallas.triton.CompilerParams``; earlier
    releases spelled it ``jax.experimental.pallas.gpu.TritonCompilerParams`` (deprecated alias).
    """
    if _pl_triton is not None and hasattr(_pl_triton, "CompilerParams"):
        return _pl_triton.CompilerParams
    try:  # pragma: no cover - only on JAX releases older than the project supports
        from jax.experimental.pallas import gpu as _pl_gpu_old
        return getattr(_pl_gpu_old, "TritonCompilerParams", None)
    except Exception:  # pragma: no cover
        return None


def _compiler_params(num_warps: int, num_stages: int, interpret: bool):
    """Triton compiler parameters for every compiled non-TPU call (explicit, so that pallas_call
    never falls through to its default GPU lowering; also what lets CPU tests lower for CUDA)."""
    if interpret or current_platform() == "tpu":
        return None
    params_type = _triton_params_type()
    if params_type is None:
        raise NotImplementedError("this JAX has no Pallas Triton lowering; use impl='mosaic' (Hopper) "
                                  "or impl='chunked'")
    return params_type(num_warps=num_warps, num_stages=num_stages)


# ----------------------------------------------------------------------------------------------
# Pallas forward: grid (token tiles, vocabulary splits); each program walks `tiles_per_program`
# vocabulary tiles, each tile a K-loop of [bn, bk] x [bk, bv] matmuls, and writes partial stats.
# ----------------------------------------------------------------------------------------------

def _fwd_kernel(h_ref, w_ref, t_ref, m_ref, s_ref, u_ref, zt_ref, *, n_k, bk, bv, tpp, n_tiles,
                v_valid, w_blocked):
    bn = h_ref.shape[0]
    split = pl.program_id(1)
    tgt = t_ref[...]

    def tile(t, carry):
        j = split * tpp + t
        jc = jnp.minimum(j, n_tiles - 1)  # never load out of bounds; surplus tiles are masked
        col0 = 0 if w_blocked else jc * bv

        def kstep(k, acc):
            a = h_ref[:, pl.ds(k * bk, bk)]
            b = w_ref[pl.ds(k * bk, bk), pl.ds(col0, bv)]
            return acc + jnp.dot(a, b, preferred_element_type=jnp.float32)

        z = lax.fori_loop(0, n_k, kstep, jnp.zeros((bn, bv), jnp.float32))
        cols = jc * bv + lax.broadcasted_iota(jnp.int32, (bn, bv), 1)
        valid = (cols < v_valid) & (j < n_tiles)
        return tile_math.online_update(carry, z, valid, valid & (cols == tgt[:, None]))

    init = (jnp.full((bn,), _NEG_INF, jnp.float32), jnp.zeros((bn,), jnp.float32),
            jnp.zeros((bn,), jnp.float32), jnp.zeros((bn,), jnp.float32))
    m, s, u, zt = lax.fori_loop(0, tpp, tile, init)
    m_ref[...] = m
    s_ref[...] = s
    u_ref[...] = u
    zt_ref[...] = zt


def _pallas_partials(hp, wp, tp, cfg: LogprobConfig, *, v_valid: int, interpret: bool):
    """Partial (m, s, u, zt), each [n_splits, N_p], from the fused Pallas forward (padded inputs)."""
    n_p, d_p = hp.shape
    v_p = wp.shape[1]
    bn, bv, bk = cfg.block_n, cfg.block_v, cfg.block_k
    n_tiles, tpp, n_splits = tile_math.vocab_splits(v_p, cfg)
    kernel = functools.partial(_fwd_kernel, n_k=d_p // bk, bk=bk, bv=bv, tpp=tpp, n_tiles=n_tiles,
                               v_valid=v_valid, w_blocked=cfg.w_blocked)
    if cfg.w_blocked:
        w_spec = pl.BlockSpec((d_p, bv), lambda i, j: (0, j))
    else:
        w_spec = pl.BlockSpec((d_p, v_p), lambda i, j: (0, 0))
    part_spec = pl.BlockSpec((_SQUEEZED, bn), lambda i, j: (j, i))
    part_shape = out_struct((n_splits, n_p), jnp.float32, hp)
    return pl.pallas_call(
        kernel,
        out_shape=(part_shape,) * 4,
        grid=(n_p // bn, n_splits),
        in_specs=[pl.BlockSpec((bn, d_p), lambda i, j: (i, 0)), w_spec, _row_spec(bn)],
        out_specs=(part_spec,) * 4,
        interpret=interpret,
        compiler_params=_compiler_params(cfg.num_warps, cfg.num_stages, interpret),
        name="fused_logprob_entropy_fwd",
    )(hp, wp, tp)


def _kernel_stats(h, w, t_local, spec: _Spec):
    """Per-row (m, s, u, zt) over the local vocabulary of ``w`` with the forward kernel of
    ``spec.kind``: pad to the tiles (no copy of w when V divides block_v), merge the partials."""
    cfg = spec.config.mosaic_forward() if spec.kind == "mosaic" else spec.config
    n, d = h.shape
    v = w.shape[1]
    n_p, d_p, v_p = _round_up(n, cfg.block_n), _round_up(d, cfg.block_k), _round_up(v, cfg.block_v)
    hp = _pad_axis(_pad_axis(h, 0, n_p), 1, d_p)
    wp = _pad_axis(_pad_axis(w, 0, d_p), 1, v_p)
    tp = _pad_axis(t_local.astype(jnp.int32), 0, n_p)
    partials = logprob_mosaic.stats if spec.kind == "mosaic" else _pallas_partials
    parts = partials(hp, wp, tp, cfg, v_valid=v, interpret=spec.interpret)
    return tuple(x[:n] for x in _merge_stats(*parts, axis=0))


# ----------------------------------------------------------------------------------------------
# Pallas backward tile: dz for one [N, chunk] slab, the matmul fused with the softmax epilogue.
# ----------------------------------------------------------------------------------------------

def _dz_kernel(*refs, n_k, bk, bv, v_valid, has_glp, has_gh):
    h_ref, w_ref, t_ref, m_ref, ls_ref = refs[:5]
    rest = list(refs[5:])
    glp_ref = rest.pop(0) if has_glp else None
    mu_ref, gh_ref = (rest.pop(0), rest.pop(0)) if has_gh else (None, None)
    (dz_ref,) = rest
    bn = h_ref.shape[0]
    j = pl.program_id(1)

    def kstep(k, acc):
        a = h_ref[:, pl.ds(k * bk, bk)]
        b = w_ref[pl.ds(k * bk, bk), :]
        return acc + jnp.dot(a, b, preferred_element_type=jnp.float32)

    z = lax.fori_loop(0, n_k, kstep, jnp.zeros((bn, bv), jnp.float32))
    cols = j * bv + lax.broadcasted_iota(jnp.int32, (bn, bv), 1)
    dz = tile_math.softmax_grad(z, cols == t_ref[...][:, None], m_ref[...], ls_ref[...],
                                glp_ref[...] if has_glp else None,
                                mu_ref[...] if has_gh else None, gh_ref[...] if has_gh else None)
    dz = jnp.where(cols < v_valid, dz, 0.0)
    dz_ref[...] = dz.astype(dz_ref.dtype)


def _pallas_dz(h_p, w_c, t_loc, res, glp, gh, cfg: LogprobConfig, *, v_valid, dz_dtype, interpret):
    """dz [N_p, c] for a vocabulary chunk w_c [D_p, c] (c a multiple of block_v, rows padded)."""
    n_p, d_p = h_p.shape
    c = w_c.shape[1]
    bn, bv, bk = cfg.block_n, cfg.block_v, cfg.block_k
    has_glp, has_gh = glp is not None, gh is not None
    m, log_s, mu = res
    args = [h_p, w_c, t_loc, m, log_s] + ([glp] if has_glp else []) + ([mu, gh] if has_gh else [])
    in_specs = [pl.BlockSpec((bn, d_p), lambda i, j: (i, 0)),
                pl.BlockSpec((d_p, bv), lambda i, j: (0, j))] + [_row_spec(bn)] * (len(args) - 2)
    kernel = functools.partial(_dz_kernel, n_k=d_p // bk, bk=bk, bv=bv, v_valid=v_valid,
                               has_glp=has_glp, has_gh=has_gh)
    return pl.pallas_call(
        kernel,
        out_shape=out_struct((n_p, c), dz_dtype, h_p),
        grid=(n_p // bn, c // bv),
        in_specs=in_specs,
        out_specs=pl.BlockSpec((bn, bv), lambda i, j: (i, j)),
        interpret=interpret,
        compiler_params=_compiler_params(cfg.num_warps, cfg.num_stages, interpret),
        name="fused_logprob_entropy_dz",
    )(*args)


# ----------------------------------------------------------------------------------------------
# XLA chunk pieces (the chunked baseline)
# ----------------------------------------------------------------------------------------------

def _xla_chunk_stats(h, w_c, t_loc, v_valid=None):
    z = jnp.dot(h, w_c, preferred_element_type=jnp.float32)
    cols = lax.broadcasted_iota(jnp.int32, z.shape, 1)
    valid = jnp.ones(z.shape, bool) if v_valid is None else cols < v_valid
    return _block_stats(z, cols, valid, t_loc)


def _xla_dz(h, w_c, t_loc, res, glp, gh, *, dz_dtype):
    m, log_s, mu = res
    z = jnp.dot(h, w_c, preferred_element_type=jnp.float32)
    cols = lax.broadcasted_iota(jnp.int32, z.shape, 1)
    return tile_math.softmax_grad(z, cols == t_loc[:, None], m, log_s, glp, mu, gh).astype(dz_dtype)


def _chunked_stats(h, w, t_local, cfg: LogprobConfig):
    n, _ = h.shape
    v = w.shape[1]
    c = min(cfg.chunk_v, v)
    n_full, tail = divmod(v, c)
    axes = union_vary(h, w, t_local)
    state = tuple(cast_varying(x, axes) for x in (
        jnp.full((n,), _NEG_INF, jnp.float32), jnp.zeros((n,), jnp.float32),
        jnp.zeros((n,), jnp.float32), jnp.zeros((n,), jnp.float32)))

    def body(carry, i):
        off = i * c
        w_c = lax.dynamic_slice_in_dim(w, off, c, axis=1)
        return _merge2(carry, _xla_chunk_stats(h, w_c, t_local - off)), None

    if n_full:
        state, _ = lax.scan(body, state, jnp.arange(n_full, dtype=jnp.int32))
    if tail:
        off = n_full * c
        state = _merge2(state, _xla_chunk_stats(h, w[:, off:], t_local - off))
    return state


# ----------------------------------------------------------------------------------------------
# Backward driver shared by both variants: scan over vocabulary chunks.
# ----------------------------------------------------------------------------------------------

def _backward(h, w, t_local, res, glp, gh, spec: _Spec, need_dh: bool, need_dw: bool):
    cfg = spec.config
    n, d = h.shape
    v = w.shape[1]
    dz_dtype = jnp.dtype(cfg.grad_dtype) if cfg.grad_dtype is not None else h.dtype
    c = min(cfg.chunk_v, _round_up(v, cfg.block_v))
    n_full, tail = divmod(v, c)
    axes = union_vary(h, w, t_local, *res, glp, gh)
    h, w, t_local, glp, gh = (cast_varying(x, axes)
                              for x in (h, w, t_local.astype(jnp.int32), glp, gh))
    res = tuple(cast_varying(x, axes) for x in res)

    if spec.kind in ("pallas", "mosaic"):
        dz_kernel = logprob_mosaic.dz if spec.kind == "mosaic" else _pallas_dz
        bn, bk, bv = cfg.block_n, cfg.block_k, cfg.block_v
        n_p, d_p = _round_up(n, bn), _round_up(d, bk)
        hx = _pad_axis(_pad_axis(h, 0, n_p), 1, d_p)
        wx = _pad_axis(w, 0, d_p)
        rows = lambda x: None if x is None else _pad_axis(x, 0, n_p)  # noqa: E731
        res_x, glp_x, gh_x, t_x = tuple(rows(x) for x in res), rows(glp), rows(gh), rows(t_local)

        def dz_fn(w_c, off, width):
            cw = w_c.shape[1]
            w_cp = _pad_axis(w_c, 1, _round_up(cw, bv))
            dz = dz_kernel(hx, w_cp, t_x - off, res_x, glp_x, gh_x, cfg, v_valid=width,
                           dz_dtype=dz_dtype, interpret=spec.interpret)
            return dz[:, :cw]
    else:
        hx, wx, n_p, d_p = h, w, n, d

        def dz_fn(w_c, off, width):
            return _xla_dz(h, w_c, t_local - off, res, glp, gh, dz_dtype=dz_dtype)

    def chunk_grads(w_c, off, width):
        dz = dz_fn(w_c, off, width)
        dh_c = (lax.dot_general(dz, w_c.astype(dz_dtype), (((1,), (1,)), ((), ())),
                                preferred_element_type=jnp.float32) if need_dh else None)
        dw_c = (lax.dot_general(hx.astype(dz_dtype), dz, (((0,), (0,)), ((), ())),
                                preferred_element_type=jnp.float32).astype(w.dtype)
                if need_dw else None)
        return dh_c, dw_c

    dh = cast_varying(jnp.zeros((n_p, d_p), jnp.float32), axes) if need_dh else None
    dw = cast_varying(jnp.zeros((d_p, v), w.dtype), axes) if need_dw else None

    def body(carry, i):
        dh, dw = carry
        off = i * c
        w_c = lax.dynamic_slice_in_dim(wx, off, c, axis=1)
        dh_c, dw_c = chunk_grads(w_c, off, c)
        if need_dh:
            dh = dh + dh_c
        if need_dw:
            dw = lax.dynamic_update_slice_in_dim(dw, dw_c, off, axis=1)
        return (dh, dw), None

    if n_full:
        (dh, dw), _ = lax.scan(body, (dh, dw), jnp.arange(n_full, dtype=jnp.int32))
    if tail:
        off = n_full * c
        dh_c, dw_c = chunk_grads(wx[:, off:], off, tail)
        if need_dh:
            dh = dh + dh_c
        if need_dw:
            dw = lax.dynamic_update_slice_in_dim(dw, dw_c, off, axis=1)
    if need_dh:
        dh = dh[:n, :d].astype(h.dtype)
    if need_dw:
        dw = dw[:d]
    return dh, dw


# ----------------------------------------------------------------------------------------------
# The custom-VJP op (chunked and Pallas share it; `spec.kind` picks the pieces)
# ----------------------------------------------------------------------------------------------

def _local_targets(targets, w, spec: _Spec):
    t = targets.astype(jnp.int32)
    if spec.vocab_axis is None:
        return t
    return t - lax.axis_index(spec.vocab_axis) * w.shape[1]


def _forward(h, w, targets, spec: _Spec):
    axes = union_vary(h, w, targets)
    h, w, targets = (cast_varying(x, axes) for x in (h, w, targets))
    t_local = _local_targets(targets, w, spec)
    if spec.kind in ("pallas", "mosaic"):
        stats = _kernel_stats(h, w, t_local, spec)
    else:
        stats = _chunked_stats(h, w, t_local, spec.config)
    if spec.vocab_axis is not None:
        stats = _merge_across(stats, spec.vocab_axis)
    return _finalize(*stats), t_local


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _logprob_entropy(h, w, targets, spec):
    (logp, ent, _), _ = _forward(h, w, targets, spec)
    return logp, ent


def _lpe_fwd(h, w, targets, spec):
    (logp, ent, res), t_local = _forward(h.value, w.value, targets.value, spec)
    # None leaves record (statically) which input cotangents the backward must produce.
    flags = (jnp.zeros((), jnp.int8) if h.perturbed else None,
             jnp.zeros((), jnp.int8) if w.perturbed else None)
    return (logp, ent), (h.value, w.value, t_local, res, flags)


def _lpe_bwd(spec, res, cts):
    h, w, t_local, stats, (h_flag, w_flag) = res
    g_lp, g_h = cts
    glp = None if isinstance(g_lp, SymbolicZero) else g_lp.astype(jnp.float32)
    gh = None if isinstance(g_h, SymbolicZero) else g_h.astype(jnp.float32)
    need_dh, need_dw = h_flag is not None, w_flag is not None
    if spec.vocab_axis is not None and spec.vocab_axis not in vary(w):
        # shard_map(check_vma=False): no manual-axis typing. There the cotangent of an output that
        # is replicated over the vocabulary axis arrives split across its shards and psum is its
        # own transpose, so the transpose of the forward's psum-merge is a psum of the cotangents
        # (shard_map then sums dh over the vocabulary axis itself).
        glp = None if glp is None else lax.psum(glp, spec.vocab_axis)
        gh = None if gh is None else lax.psum(gh, spec.vocab_axis)
    if (glp is None and gh is None) or not (need_dh or need_dw):
        return (jnp.zeros_like(h) if need_dh else None, jnp.zeros_like(w) if need_dw else None, None)
    dh, dw = _backward(h, w, t_local, stats, glp, gh, spec, need_dh, need_dw)
    # Inputs that were invariant over a mesh axis the computation varied over get their cotangent
    # summed over it (the transpose of the implicit cast to varying), e.g. a replicated w's dw over
    # the token axis and, under vocabulary sharding, dh over the vocabulary axis.
    return (psum_to(dh, h) if need_dh else None, psum_to(dw, w) if need_dw else None, None)


_logprob_entropy.defvjp(_lpe_fwd, _lpe_bwd, symbolic_zeros=True)


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------

def logprob_entropy_chunked(h, w, targets, *, config: LogprobConfig | None = None,
                            vocab_axis: str | None = None):
    """XLA baseline: lax.scan over vocabulary chunks, custom VJP recomputing each chunk."""
    spec = _Spec("chunked", config or DEFAULT_CONFIG, False, vocab_axis)
    return _call(h, w, targets, spec)


def logprob_entropy_pallas(h, w, targets, *, config: LogprobConfig | None = None,
                           interpret: bool = False, vocab_axis: str | None = None):
    """Fused Pallas forward + Pallas-epilogue backward (GPU: Triton lowering; interpret=True: CPU)."""
    spec = _Spec("pallas", config or _default_config(current_platform()), bool(interpret), vocab_axis)
    return _call(h, w, targets, spec)


def logprob_entropy_mosaic(h, w, targets, *, config: LogprobConfig | None = None,
                           interpret: bool = False, vocab_axis: str | None = None):
    """The same op with the Mosaic GPU (Hopper, wgmma + TMA) kernels of kernels/logprob_mosaic.py.

    h and w must be bfloat16/float16. ``interpret=True`` runs the kernels in Mosaic GPU's CPU
    interpreter; otherwise they compile for an sm_90 GPU (or lower for one, from any host).
    """
    cfg = config or DEFAULT_CONFIG
    logprob_mosaic.check_supported(cfg, h.dtype)
    if w.dtype != h.dtype:
        raise ValueError(f"impl='mosaic' needs h and w of one dtype, got {h.dtype} and {w.dtype}")
    return _call(h, w, targets, _Spec("mosaic", cfg, bool(interpret), vocab_axis))


def _call(h, w, targets, spec: _Spec):
    if h.shape[-1] != w.shape[0]:
        raise ValueError(f"h [..., D] and w [D, V] disagree: {h.shape} vs {w.shape}")
    if h.shape[:-1] != targets.shape:
        raise ValueError(f"targets shape {targets.shape} must equal h.shape[:-1] {h.shape[:-1]}")
    lead = targets.shape
    logp, ent = _logprob_entropy(h.reshape(-1, h.shape[-1]), w, targets.reshape(-1), spec)
    return logp.reshape(lead), ent.reshape(lead)


_KERNELS = {"pallas": logprob_entropy_pallas, "mosaic": logprob_entropy_mosaic}


def _probe(kind: str, platform: str, interpret: bool):
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.standard_normal((128, 128)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((128, 1000)) * 0.1, jnp.bfloat16)
    t = jnp.asarray(rng.integers(0, 1000, 128), jnp.int32)
    cfg = _default_config(platform)
    kernel = _KERNELS[kind]

    def loss(fn):
        def f(h, w):
            lp, en = fn(h, w, t)
            return jnp.sum(lp) + 0.5 * jnp.sum(en), (lp, en)
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))

    got = loss(lambda h, w, t: kernel(h, w, t, config=cfg, interpret=interpret))(h, w)
    want = loss(logprob_entropy_reference)(h, w)

    def rel(a, b):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))

    return max(rel(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))


@functools.lru_cache(maxsize=None)
def _kernel_usable(kind: str, platform: str, interpret: bool = False) -> bool:
    """One-time probe: does the ``kind`` kernel lower, run and match the reference on this device?

    bfloat16, V = 1000 (padded and masked), both outputs differentiated. It runs in a worker
    thread: JAX's trace state is thread-local, so the probe executes eagerly even when the caller
    is being traced by jit.
    """
    result: dict = {}

    def work():
        try:
            result["err"] = _probe(kind, platform, interpret)
        except Exception as e:  # lowering unavailable (e.g. Triton removed) or compile failure
            result["exc"] = e

    thread = threading.Thread(target=work, name=f"{kind}-probe")
    thread.start()
    thread.join()
    if "exc" in result:
        e = result["exc"]
        warnings.warn(f"{kind} fused log-prob unavailable on {platform} ({type(e).__name__}: "
                      f"{str(e).splitlines()[0][:300] if str(e) else ''}); impl='auto' tries the "
                      "next implementation.", RuntimeWarning, stacklevel=3)
        return False
    if not result["err"] <= 5e-2:
        warnings.warn(f"{kind} fused log-prob differs from the reference on {platform} (relative "
                      f"error {result['err']:.3g}); impl='auto' tries the next implementation.",
                      RuntimeWarning, stacklevel=3)
        return False
    return True


def _is_hopper() -> bool:
    cc = str(getattr(jax.devices()[0], "compute_capability", "") or "")
    return cc.split(".")[0] == "9"


def _device_kind() -> str:
    return str(jax.devices()[0].device_kind)


def auto_kernel(platform: str, dtype, w_dtype=None) -> str:
    """What ``impl="auto"`` runs on an accelerator: the first kernel that passes its probe.

    The order is the measured one when ``kernels/tuned.json`` has a record for this platform,
    device kind and dtype (:func:`kernels.dispatch.tuned_order`, written by
    ``benchmarks/kernels.py --tuned-out``); "chunked" in it is taken as is, kernels are probed.
    Without a record, the built-in prior:
    GPU: Mosaic GPU on Hopper when h and w share a 16-bit dtype (the lowering JAX maintains), then
    Pallas-Triton (deprecated from JAX 0.11; the path for other GPUs and float32), then the chunked
    XLA scan.
    TPU: Pallas (Mosaic TPU), then chunked.
    """
    sixteen_bit = (jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
                   and jnp.dtype(w_dtype or dtype) == jnp.dtype(dtype))
    mosaic_ok = (platform in ("gpu", "cuda") and logprob_mosaic.available() and sixteen_bit
                 and _is_hopper())
    same_dtype = jnp.dtype(w_dtype or dtype) == jnp.dtype(dtype)
    order = tuned_order(platform, _device_kind(), dtype) if same_dtype else None
    if order is None:
        order = (("mosaic",) if mosaic_ok else ()) + ("pallas", "chunked")
    for kind in order:
        if kind == "chunked":
            return "chunked"
        if kind == "mosaic" and not mosaic_ok:
            continue
        if _kernel_usable(kind, platform):
            return kind
    return "chunked"


def fused_logprob_entropy(h, w, targets, *, impl: str = "auto", interpret: bool | None = None,
                          config: LogprobConfig | None = None, vocab_axis: str | None = None):
    """Per-token log-probability of ``targets`` and softmax entropy under logits ``h @ w``.

    Args:
      h: [..., D] hidden states (float32 or bfloat16; "mosaic" needs 16-bit).
      w: [D, V] LM head (same dtype family). V need not be a multiple of the vocabulary block.
      targets: [...] integer token ids in [0, V) (global ids, also under ``vocab_axis``).
      impl: "reference" | "chunked" | "pallas" | "pallas_interpret" | "mosaic" |
        "mosaic_interpret" | "auto" (see kernels.dispatch and :func:`auto_kernel`).
      interpret: run the Pallas kernels in interpret mode (CPU); implied by "*_interpret".
      config: tiling (:class:`LogprobConfig`); defaults suit an H100 (TPU: ``TPU_CONFIG``).
      vocab_axis: mesh-axis name when called inside ``shard_map`` with ``w`` vocabulary-sharded.

    Returns:
      (logp, entropy), both float32 with the shape of ``targets``; logp <= 0, entropy >= 0
      (the kernels clamp the rounding; the reference is the unclamped textbook formula).
      Differentiable w.r.t. h and w with cotangents for both outputs.
    """
    platform = current_platform()
    kind, interp = resolve_impl(impl, interpret, platform)
    if impl == "auto" and kind == "pallas" and not interp and platform in ACCELERATORS:
        kind = auto_kernel(platform, h.dtype, w.dtype)
    if kind == "reference":
        return logprob_entropy_reference(h, w, targets, vocab_axis=vocab_axis)
    if kind == "chunked":
        return logprob_entropy_chunked(h, w, targets, config=config, vocab_axis=vocab_axis)
    return _KERNELS[kind](h, w, targets, config=config, interpret=interp, vocab_axis=vocab_axis)


def sharded_fused_logprob_entropy(h, w, targets, mesh, *, token_axis="data", vocab_axis=None,
                                  check_vma: bool | None = None, **kwargs):
    """``fused_logprob_entropy`` under ``jax.shard_map``.

    h [N, D] and targets [N] are sharded over ``token_axis`` (a mesh axis name or a tuple of names);
    w [D, V] is replicated, or vocabulary-sharded over ``vocab_axis``. Outputs are sharded like
    targets. Gradients: dh sharded like h; dw reduced over the token axes (shard_map's transpose of
    the replicated input) and sharded like w.

    ``check_vma`` (shard_map's manual-axis type checking) defaults to True, except for Pallas in
    interpret mode: JAX's interpreters for pallas_call / plgpu.kernel (0.10.2) start their loop
    carries from untyped buffers and fail the check, so those paths run with check_vma=False (the
    custom VJP handles both conventions).
    """
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    def body(h, w, targets):
        return fused_logprob_entropy(h, w, targets, vocab_axis=vocab_axis, **kwargs)

    specs = (P(token_axis, None), P(None, vocab_axis), P(token_axis))
    if any(t == AxisType.Explicit for t in getattr(mesh, "axis_types", ())):
        # Explicit-axis meshes (jax.make_mesh's default) type-check shard_map's in_specs against the
        # arrays' shardings: move the inputs to the layout the kernel expects first.
        h, w, targets = (jax.sharding.reshard(x, NamedSharding(mesh, s))
                         for x, s in zip((h, w, targets), specs))
    if check_vma is None:
        kind, interp = resolve_impl(kwargs.get("impl", "auto"), kwargs.get("interpret"))
        check_vma = not (kind in ("pallas", "mosaic") and interp)
    return jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=(P(token_axis), P(token_axis)),
                         check_vma=check_vma)(h, w, targets)
