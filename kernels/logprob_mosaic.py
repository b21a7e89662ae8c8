"""Mosaic GPU (Hopper) kernels for the fused log-prob/entropy: the forward statistics and the dz tile.

These are the ``impl="mosaic"`` pieces of :mod:`kernels.logprob` (same math, same residuals, same
backward driver); this module holds only the two ``plgpu.kernel`` calls.

Why a second GPU lowering
-------------------------
JAX 0.11 deprecates Pallas' Triton backend ("will be removed in a future version"); Mosaic GPU is
the lowering JAX maintains for Hopper. Mosaic GPU stages operands in shared memory explicitly, so
the kernels are written against its own API (``jax.experimental.pallas.mosaic_gpu``), not the
generic Pallas body of the Triton path:

* one warpgroup per CTA; a CTA owns ``block_n`` token rows and walks vocabulary tiles of
  ``block_v`` columns (forward: ``mosaic_fwd_block_n`` x ``mosaic_fwd_block_v``, default
  128 x 128 with a 4-stage pipeline; dz: ``block_n`` x ``block_v``, default 64 x 128; the
  arithmetic intensity of each choice is tabulated in ``LogprobConfig``); for each tile
  ``plgpu.emit_pipeline`` streams [block_n, block_k] tiles of ``h`` and [block_k, block_v] tiles
  of ``w`` from HBM to SMEM with TMA (``num_stages`` buffers,
  128-byte swizzle for bfloat16 with ``block_k = 64``) and ``plgpu.wgmma`` accumulates
  z = h @ w into a float32 register accumulator (one wgmma kept in flight, ``delay_release=1``);
* the epilogue works on the accumulator in registers (WGMMA layout): masked online max / sum of
  exp / sum of exp * (z - max) and the target logit for the forward, the softmax-gradient tile
  ``dz`` for the backward; row vectors (targets, residuals, cotangents) come in through SMEM in the
  WGMMA row layout, results leave through SMEM with TMA stores;
* the grid is (token tiles, vocabulary splits) with token tiles fastest, so CTAs resident together
  read the same ``w`` tiles (served from L2), as in the Triton kernel.

Inputs must be 16-bit (bfloat16/float16): wgmma on float32 operands computes in TF32, which would
silently break the float32 contract of :func:`kernels.logprob.fused_logprob_entropy`; float32
inputs are rejected with an error that names the other implementations.

Verification without a GPU: the tests run both kernels through Mosaic GPU's interpreter on CPU
(``jax._src.pallas.mosaic_gpu.interpret``: simulated warpgroup, SMEM, TMA and barriers; wgmma as a
float32 dot) against the reference, and lower the whole differentiated op for the ``cuda``
platform on CPU (``jit(...).trace(...).lower(lowering_platforms=("cuda",))``), which runs the Mosaic
GPU lowering (register layouts, SMEM allocation, TMA descriptors) up to the serialized
``mosaic_gpu`` custom call. What only a GPU can show -- PTX compilation, runtime results and speed
-- is listed in kernels/logprob.py's docstring and benchmarks/RESULTS.md.

The kernels pin ``LoweringSemantics.Lane`` (explicit per-lane register layouts, the semantics
JAX 0.10's Mosaic GPU kernels use by default and 0.11 still supports) so that the kernel means the
same thing on both JAX versions the project allows.
"""
from __future__ import annotations

import functools
import inspect

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from hopchain_jax.kernels import tile_math
from hopchain_jax.kernels.manual_axes import out_struct

try:
    from jax.experimental.pallas import mosaic_gpu as plgpu
except Exception:  # pragma: no cover - depends on the installed jaxlib
    plgpu = None

_ROWS, _COLS = "rows", "cols"


def available() -> bool:
    """Whether this JAX ships the Mosaic GPU Pallas API."""
    return plgpu is not None


def interpret_params():
    """Parameters that run a ``plgpu.kernel`` in Mosaic GPU's CPU interpreter (private JAX API)."""
    from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams
    return InterpretGPUParams()


def reset_interpreter():
    """The interpreter keeps global state that an exception leaves dirty; JAX asks to reset it."""
    try:
        from jax._src.pallas.mosaic_gpu.interpret import interpret_pallas_call as ipc
        ipc.reset_gpu_interpret_mode_state()
    except Exception:  # pragma: no cover - private API moved
        pass


def check_supported(cfg, dtype) -> None:
    """Raise a ValueError naming the setting to change when ``cfg``/``dtype`` cannot use Mosaic GPU.

    Both tiles are checked: the forward's (``cfg.mosaic_fwd_block_*``) and the dz kernel's
    (``cfg.block_*``).
    """
    if plgpu is None:
        raise NotImplementedError("this JAX has no Mosaic GPU Pallas API "
                                  "(jax.experimental.pallas.mosaic_gpu); use impl='chunked'")
    dtype = jnp.dtype(dtype)
    if dtype not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        raise ValueError(f"impl='mosaic' needs bfloat16/float16 h and w (wgmma on {dtype} would run "
                         "in TF32); cast the inputs or use impl='chunked'/'pallas'")
    for prefix, (bn, bv, bk) in (("", (cfg.block_n, cfg.block_v, cfg.block_k)),
                                 ("mosaic_fwd_", (cfg.mosaic_fwd_block_n, cfg.mosaic_fwd_block_v,
                                                  cfg.mosaic_fwd_block_k))):
        _check_tile(prefix, bn, bv, bk, dtype.itemsize)


def _check_tile(prefix: str, bn: int, bv: int, bk: int, itemsize: int) -> None:
    """One warpgroup's wgmma tile: rows in 64s, a swizzle-sized K slab, N <= 256 and an
    accumulator of at most 128 float32 registers per thread (bn * bv / 128 threads)."""
    name = f"LogprobConfig.{prefix}block"
    if bn % 64:
        raise ValueError(f"impl='mosaic' needs {name}_n a multiple of 64 (one warpgroup's wgmma "
                         f"rows), got {bn}")
    if bk * itemsize not in (32, 64, 128):
        raise ValueError(f"impl='mosaic' needs {name}_k * itemsize in (32, 64, 128) bytes (the "
                         f"SMEM swizzle), got {name}_k={bk}")
    if bv > 256:
        raise ValueError(f"impl='mosaic' needs {name}_v <= 256 (wgmma N), got {bv}")
    if bn * bv > 128 * 128:
        raise ValueError(f"impl='mosaic' runs one warpgroup per CTA: {name}_n x {name}_v = "
                         f"{bn} x {bv} needs {bn * bv // 128} float32 accumulator registers per "
                         "thread (at most 128 fit next to the epilogue); use 128 x 128 or 64 x 256")


def _epilogue_transforms(bv: int, dtype) -> tuple:
    """SMEM tiling + swizzle for a [bm, bv] WGMMA-layout tile stored before its TMA copy out: the
    widest swizzle that bv fills. Without them JAX 0.12's Mosaic GPU finds no bank-conflict-free store
    plan for the untiled tile (TransferPlanDerivationError); 0.10 and 0.11 lower it either way."""
    row_bytes = bv * jnp.dtype(dtype).itemsize
    swizzle = next(b for b in (128, 64, 32) if row_bytes % b == 0)
    return (plgpu.TilingTransform((8, swizzle // jnp.dtype(dtype).itemsize)), plgpu.SwizzleTransform(swizzle))


def _compiler_params():
    return plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Lane)


def _load_takes_idx() -> bool:
    """plgpu.load(ref, idx, ...) with a required idx: JAX 0.10. JAX 0.11 makes it optional (deprecated in
    favour of ref.at[...]) and 0.12 removes it."""
    if plgpu is None:
        return False
    idx = inspect.signature(plgpu.load).parameters.get("idx")
    return idx is not None and idx.default is inspect.Parameter.empty


_LOAD_TAKES_IDX = _load_takes_idx()


def _load_rows(ref, interpret: bool):
    """[block_n] SMEM vector -> registers in the layout of a WGMMA accumulator's row reductions.

    Mosaic GPU's interpreter (JAX 0.10) has no rules for the layout primitives (``plgpu.load`` with
    a layout, ``layout_cast``, ``broadcasted_iota`` with a layout); it ignores layouts anyway, so in
    interpret mode these helpers use the plain JAX op. The compiled path is checked by lowering.
    """
    if interpret:
        return ref[...]
    layout = plgpu.Layout.WGMMA.reduce(1)
    if _LOAD_TAKES_IDX:  # JAX 0.10
        return plgpu.load(ref, (), layout=layout)
    return plgpu.load(ref, layout=layout)


def _row_vector(value, bm: int, interpret: bool):
    """A [bm] float32 constant in the WGMMA row layout (the interpreter has no layout_cast rule)."""
    x = jnp.full((bm,), value, jnp.float32)
    return x if interpret else plgpu.layout_cast(x, plgpu.Layout.WGMMA.reduce(1))


def _column_ids(shape, interpret: bool):
    """[bm, bv] int32 column index within the tile, in the WGMMA accumulator layout."""
    if interpret:
        return lax.broadcasted_iota(jnp.int32, shape, 1)
    return plgpu.broadcasted_iota(jnp.int32, shape, 1, layout=plgpu.Layout.WGMMA)


def _tile_matmul(h_gmem, w_gmem, row_block, col_block, *, bm, bv, bk, n_k, stages):
    """z [bm, bv] float32 = h[row_block] @ w[:, col_block], K streamed through SMEM into wgmma."""
    swizzle = bk * jnp.dtype(h_gmem.dtype).itemsize
    transforms = (plgpu.TilingTransform((8, bk)), plgpu.SwizzleTransform(swizzle))
    stages = max(1, min(stages, n_k))
    overlap = stages >= 2   # keep one wgmma in flight while the next tiles land

    def body(acc_ref):
        def step(_, h_smem, w_smem):
            plgpu.wgmma(acc_ref, h_smem, w_smem)
            plgpu.wgmma_wait(1 if overlap else 0)

        release = 1 if overlap else 0
        plgpu.emit_pipeline(
            step, grid=(n_k,), max_concurrent_steps=stages,
            in_specs=[plgpu.BlockSpec((bm, bk), lambda k: (row_block, k), transforms=transforms,
                                      delay_release=release),
                      plgpu.BlockSpec((bk, bv), lambda k: (k, col_block), transforms=transforms,
                                      delay_release=release)],
        )(h_gmem, w_gmem)
        return acc_ref[...]   # reading the accumulator waits for the outstanding wgmma

    return pl.run_scoped(body, plgpu.ACC((bm, bv), jnp.float32))


def _stage_in(copies, barriers):
    """Start TMA copies GMEM -> SMEM (one barrier each) and wait for all of them."""
    for k, (src, dst) in enumerate(copies):
        plgpu.copy_gmem_to_smem(src, dst, barriers.at[k])
    for k in range(len(copies)):
        plgpu.barrier_wait(barriers.at[k])


# ----------------------------------------------------------------------------------------------
# Forward: per-CTA partial statistics over `tpp` vocabulary tiles.
# ----------------------------------------------------------------------------------------------

def stats(hp, wp, tp, cfg, *, v_valid: int, interpret: bool):
    """Partial (m, s, u, zt), each [n_splits, N_p] float32, for padded h [N_p, D_p] / w [D_p, V_p].

    ``cfg`` is the forward view of the user's config (``LogprobConfig.mosaic_forward()``: its
    block_* are the ``mosaic_fwd_*`` tile). N_p is a multiple of block_n, D_p of block_k and V_p
    of block_v; columns >= ``v_valid`` are
    masked. Split k covers vocabulary tiles [k * tpp, (k + 1) * tpp); surplus tiles of the last
    split re-read the last tile fully masked (1187 tiles of 128 columns for Qwen's 151,936 is
    prime, so splits cannot always divide it). Inputs are validated by the caller
    (:func:`check_supported`, from ``kernels.logprob.logprob_entropy_mosaic``).
    """
    n_p, d_p = hp.shape
    v_p = wp.shape[1]
    bm, bv, bk = cfg.block_n, cfg.block_v, cfg.block_k   # the forward tile (cfg.mosaic_forward())
    n_tiles, tpp, n_splits = tile_math.vocab_splits(v_p, cfg)
    matmul = functools.partial(_tile_matmul, bm=bm, bv=bv, bk=bk, n_k=d_p // bk,
                               stages=cfg.num_stages)

    def kernel(h_gmem, w_gmem, t_gmem, out_gmem, t_smem, out_smem, barriers):
        i = lax.axis_index(_ROWS)
        split = lax.axis_index(_COLS)
        rows = pl.ds(i * bm, bm)
        _stage_in([(t_gmem.at[rows], t_smem)], barriers)
        tgt = tile_math.rows(_load_rows(t_smem, interpret), (bm, bv))

        def tile(tt, carry):
            j = split * tpp + tt
            jc = jnp.minimum(j, n_tiles - 1)   # never read past w; surplus tiles are masked below
            z = matmul(h_gmem, w_gmem, i, jc)
            cols = jc * bv + _column_ids((bm, bv), interpret)
            valid = cols < jnp.where(j < n_tiles, jnp.int32(v_valid), jnp.int32(0))
            return tile_math.online_update(carry, z, valid, valid & (cols == tgt))

        init = tuple(_row_vector(v, bm, interpret) for v in (tile_math.NEG_INF, 0.0, 0.0, 0.0))
        results = lax.fori_loop(0, tpp, tile, init)
        for k, x in enumerate(results):
            out_smem.at[k][...] = x
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(out_smem, out_gmem.at[split, :, rows])
        plgpu.wait_smem_to_gmem(0)

    out = plgpu.kernel(
        kernel,
        out_type=out_struct((n_splits, 4, n_p), jnp.float32, hp),
        scratch_types=dict(t_smem=plgpu.SMEM((bm,), jnp.int32),
                           out_smem=plgpu.SMEM((4, bm), jnp.float32),
                           barriers=plgpu.Barrier(num_barriers=1)),
        grid=(n_p // bm, n_splits), grid_names=(_ROWS, _COLS),
        compiler_params=_compiler_params(),
        interpret=interpret_params() if interpret else None,
    )(hp, wp, tp)
    return tuple(out[:, k] for k in range(4))


# ----------------------------------------------------------------------------------------------
# Backward: dz for one [N_p, c] vocabulary chunk, the matmul fused with the softmax epilogue.
# ----------------------------------------------------------------------------------------------

def dz(hp, w_c, t, res, glp, gh, cfg, *, v_valid: int, dz_dtype, interpret: bool):
    """dz [N_p, c] in ``dz_dtype`` for padded h [N_p, D_p] and a chunk w_c [D_p, c].

    ``res`` = (m, log s, E[z] - m) per row from the forward; ``glp`` / ``gh`` are the cotangents of
    logp / entropy (None: that term is skipped). ``t`` are chunk-local targets; columns >=
    ``v_valid`` get dz = 0. c is a multiple of block_v.
    """
    n_p, d_p = hp.shape
    c = w_c.shape[1]
    bm, bv, bk = cfg.block_n, cfg.block_v, cfg.block_k
    m, log_s, mu = res
    vectors = [m, log_s] + ([glp] if glp is not None else []) + ([mu, gh] if gh is not None else [])
    rows_in = jnp.stack([x.astype(jnp.float32) for x in vectors])        # [R, N_p]
    n_vec = rows_in.shape[0]
    has_glp, has_gh = glp is not None, gh is not None
    matmul = functools.partial(_tile_matmul, bm=bm, bv=bv, bk=bk, n_k=d_p // bk,
                               stages=cfg.num_stages)

    def kernel(h_gmem, w_gmem, vec_gmem, t_gmem, dz_gmem, vec_smem, t_smem, dz_smem, barriers):
        i = lax.axis_index(_ROWS)
        j = lax.axis_index(_COLS)
        rows = pl.ds(i * bm, bm)
        _stage_in([(vec_gmem.at[:, rows], vec_smem), (t_gmem.at[rows], t_smem)], barriers)
        z = matmul(h_gmem, w_gmem, i, j)
        shape = (bm, bv)
        vec = [_load_rows(vec_smem.at[k], interpret) for k in range(n_vec)]
        cols = j * bv + _column_ids(shape, interpret)
        glp = vec.pop(2) if has_glp else None
        mu, gh = (vec[2], vec[3]) if has_gh else (None, None)
        is_target = (cols == tile_math.rows(_load_rows(t_smem, interpret), shape)
                     if has_glp else None)
        grad = tile_math.softmax_grad(z, is_target, vec[0], vec[1], glp, mu, gh)
        grad = jnp.where(cols < v_valid, grad, 0.0)
        dz_smem[...] = grad.astype(dz_smem.dtype)
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(dz_smem, dz_gmem.at[rows, pl.ds(j * bv, bv)])
        plgpu.wait_smem_to_gmem(0)

    return plgpu.kernel(
        kernel,
        out_type=out_struct((n_p, c), dz_dtype, hp),
        scratch_types=dict(vec_smem=plgpu.SMEM((n_vec, bm), jnp.float32),
                           t_smem=plgpu.SMEM((bm,), jnp.int32),
                           dz_smem=plgpu.SMEM((bm, bv), dz_dtype, transforms=_epilogue_transforms(bv, dz_dtype)),
                           barriers=plgpu.Barrier(num_barriers=2)),
        grid=(n_p // bm, c // bv), grid_names=(_ROWS, _COLS),
        compiler_params=_compiler_params(),
        interpret=interpret_params() if interpret else None,
    )(hp, w_c, rows_in, t.astype(jnp.int32))
