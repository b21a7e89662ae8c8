"""LM head + SAPO (or cross-entropy) loss with the gradient formed in the forward: no logits recompute.

``sapo_loss_fused_forward(h, w, targets, old_logp, advantages, mask)`` returns the SAPO loss (SPEC §4,
the conventions of :mod:`kernels.sapo_loss`) and its statistics; its custom VJP needs no second
pass over the vocabulary. ``ce_loss_fused_forward(h, w, targets, mask)`` is the token-mean
cross-entropy (SFT) on the same machinery.

Why this is possible
--------------------
The recompute path (:func:`kernels.sapo_loss.sapo_loss_fused` over
:func:`kernels.logprob.fused_logprob_entropy`) computes the logits once in the forward for the
statistics and once more in the backward to form ``dz``: four [N, D] x [D, V]-sized matmuls. But
the loss is a sum of per-token terms that depend on the logits only through the token's log-prob
``logp`` and entropy ``H``, and a scalar loss's cotangent ``g`` only scales the gradient. So the
whole gradient can be formed in the forward, one token chunk at a time:

    for each chunk of C tokens (rows of h):
        z   = h_c @ w                                  [C, V] float32        matmul 1
        m, s = max z, sum exp(z - m);  logp = z_y - m - log s;  H = log s - E[z - m]
        c_lp, c_H = d loss / d logp, d loss / d H      per token (below)
        for each vocabulary tile j of T columns:
            dz_j = c_lp (onehot(y) - p) - c_H p (z - E z) on the tile,  p = exp(z - m - log s)
            dh_c     += dz_j @ w_j^T                   [C, D] float32        matmul 2
            dw[:, j] += h_c^T @ dz_j                   [D, T] in place       matmul 3

and the custom VJP's backward is just ``g * dh``, ``g * dw``. Three matmuls, the floor.

Per-token coefficients (``d/d logp`` matches :mod:`kernels.sapo_loss` exactly; tokens are scaled
by ``scale = valid / (n_valid_b * B)``, the seq-mean-token-mean weight of their sequence b):

    SAPO:  lr = clip(logp - old_logp, -20, 20) (0 where masked), r = exp(lr),
           tau = tau_pos if A > 0 else tau_neg, sigma = sigmoid(tau (r - 1)),
           loss_tok = -scale * A * 4 sigma / tau            - entropy_coef * scale * H
           c_lp     = -scale * A * 4 sigma (1 - sigma) r    (0 where |logp - old_logp| > 20)
           c_H      = -scale * entropy_coef
    CE:    scale = valid / max(sum valid, 1);  loss_tok = -scale * logp - entropy_coef * scale * H,
           c_lp = -scale, c_H = -entropy_coef * scale

``d H / d z_j = -p_j (z_j - E[z])`` (= ``-p_j (log p_j + H)``). The loss is ``sum loss_tok``
(summed over the batch axis too, under ``batch_axis``). Masked positions may hold any value,
including -inf/NaN ``old_logp``: they have ``scale = 0`` and every term is selected away with
``where``. The cotangents for ``old_logp`` (``-c_lp``) and the advantages (``-scale * 4 sigma /
tau``, tau held fixed) are returned too, as in :mod:`kernels.sapo_loss`; ``mask`` has none.

Why the chunks are token chunks with the full vocabulary
--------------------------------------------------------
``dz`` of a column needs the row's final normaliser ``log s``, known only after the row's last
vocabulary column. A vocabulary-chunked row pass would have to keep every chunk's logits until
then (the same [C, V] memory) or recompute them (the fourth matmul). So a chunk is C complete rows
and its [C, V] float32 logit slab is the one large scratch buffer; ``dz`` is then formed tile by
tile of T columns from the slab, so it never exists at [C, V], and each tile's dw columns are
updated in place. Ragged N and V need no padding: when C does not divide N the last chunk starts
at N - C and the rows it shares with the previous chunk get weight 0 (the same for the last
vocabulary tile, which starts at V - T, with the shared columns' dz zeroed). That recomputes at
most C - 1 rows' logits (and T - 1 columns' dz) -- the price of keeping one traced matmul each.

Memory
------
Scratch ~ C * V * 4 bytes (the slab) + ~2 * D * T * 4 (the dw tile's matmul output and, on CPU,
a copy of the tile) + O(C * D) (the chunk of h, the dh accumulator) + [N, D] when C does not
divide N (dh rows are gathered from the chunks). Defaults: ``chunk_tokens`` C = the largest
multiple of 8 dividing N up to ~N / 16 (:func:`auto_chunk_tokens`; N = 4096 -> 256) and
``chunk_vocab`` T ~ V / 128 (:func:`auto_chunk_vocab`), so with D <= N the scratch is about
1/16 + 1/64 of the naive float32 logits (N * V * 4 bytes). XLA's compiled ``temp_size_in_bytes``
of value_and_grad on CPU (float32), N = D = 4096, V = 151,936: 208 MB = 0.084 of the naive
2,489 MB (the recompute path with its default chunk_v = 16384: 824 MB = 0.33); the tests check
< 1/10 at that shape. bfloat16 cannot be measured this way on CPU (XLA's CPU backend upcasts
bf16 matmul operands to float32 copies, for both paths).
The dw accumulator is [D, V] in ``dw_accum_dtype``; its default (None) is w's dtype, so for a
bf16 w the gradient is accumulated in place in the bf16 buffer it is returned in and needs no
extra memory. ``dw_accum_dtype=float32`` for a bf16 w adds a D * V * 4-byte accumulator (as large
as the naive logits when D = N: the memory goal is then out of reach) and cuts dw's rounding
error. Measured on CPU (benchmarks/RESULTS.md; bf16 h and w, logit std 4, N = 4096, D = 128,
V = 4096, the device check of benchmarks/kernels.py): dw's max error over max |dw| against the
float32 reference is 0.28% with a float32 accumulator, 0.80% with a bf16 one over 16 chunks of
256 rows and 0.56% over 8 chunks of 512 (tolerance 2%); dh (4.2e-3) and logp are unaffected. The
residuals are the gradients themselves (dh in h's dtype, dw in w's), computed in the forward
instead of the backward: in a trainer the loss is the last op, so they live only until the
backward starts.

One dw update per chunk (``chunk_vocab=V``) is ``dw + h_c^T dz`` with a [D, V] matmul output:
XLA on CPU materialises that output (temp 2.65 GB at the shape above, float32), XLA on GPU can
instead run it as one GEMM with dw as its C operand (beta = 1, in place) -- not verified here
(no GPU). Vocabulary tiles bound the temporary to [D, T] either way.

Cost model and GPU tuning (not measured: no GPU was lent to the session that wrote this)
----------------------------------------------------------------------------------------
Matmul flops are the 3-matmul floor, 6 N D V. What the token chunks cost instead is dw traffic:
each of the N / C chunks reads and writes the whole [D, V] accumulator through K = C matmuls,
about C / 4 flop per byte of accumulator traffic in float32 (C / 2 in bf16). At N = D = 4096,
V = 151,936, C = 256 that is 16 x 5 GB (float32) or 16 x 2.5 GB (bf16) -- roughly 24 / 12 ms at
3.35 TB/s (H100) and 17 / 8 ms at 4.8 TB/s (H200), against a ~15.5 ms matmul floor unless XLA
overlaps the accumulate with the matmul (cuBLAS beta = 1). The recompute path pays 2 N D V flops
(~5 ms) instead, so this op wins only when the dw updates run near compute-bound: bf16
accumulation, C large enough (C / 2 above the device's flop:byte ratio, ~300 on H100, ~200 on
H200), and few, large vocabulary tiles (``chunk_vocab=V`` gives one tile, i.e. ``dw + h^T dz``
per chunk, which XLA on GPU can turn into a single GEMM with the accumulator as its C operand;
the default V / 128 tiles bound memory but mean ~128 x 2 small matmuls and loop steps per chunk).
Memory and speed pull ``chunk_tokens`` and ``chunk_vocab`` in opposite directions. The device
suite sweeps them: ``benchmarks/kernels.py --impls fused_head:CxTxACC`` (e.g. ``256xVxbf16``: C =
256 rows, one vocabulary tile, bf16 accumulator) times each variant, checks it on the device and
reports its peak extra memory against the naive logits; ``TrainConfig.head_chunk_tokens``,
``head_chunk_vocab`` and ``head_dw_accum`` carry the winner into training.

Precision
---------
Logits are accumulated in float32 (``preferred_element_type``) whatever the input dtypes; all row
statistics are float32 and relative to the row max (kernels/logprob.py's ``_finalize``: the max
starts from the data, never from 0, so all-negative logits are exact). ``dz`` is cast to
``grad_dtype`` (default: the wider of h's and w's dtypes, i.e. bf16 for bf16 inputs) for the dh and
dw matmuls, which accumulate in float32; dh accumulates in float32 over the vocabulary tiles and
is stored in h's dtype, dw accumulates over the token chunks in ``dw_accum_dtype`` (default:
w's dtype) and is stored in w's dtype.

Sharding
--------
* Plain ``jax.jit`` with sharded inputs works (GSPMD partitions the scan as it can; with h sharded
  over tokens it may gather h: correct but not scalable).
* ``mesh=`` (the trainer's layout, like :func:`kernels.logprob.sharded_fused_logprob_entropy`):
  the seq-mean-token-mean weights are computed on the global [B, T] arrays, then the op runs under
  ``jax.shard_map`` with the flattened tokens sharded over ``token_axis`` and w replicated or
  vocabulary-sharded over ``vocab_axis``; the statistics are computed outside again.
* Inside your own ``jax.shard_map``: pass ``batch_axis`` (the axes the sequences, rows of [B, T],
  are sharded over; the sequence count and the loss are ``psum``-ed over them) and ``vocab_axis``
  (w's vocabulary shards: each chunk's row statistics -- per-token vectors only -- are merged with
  ``pmax``/``psum`` inside the scan; targets are global ids).
* In both shard_map cases dh is summed over the vocabulary axis and dw over the token axes in the
  forward (``check_vma=True``), or by shard_map's transpose (``check_vma=False``; the replicated
  loss's cotangent is then re-summed in the backward, as in kernels/sapo_loss).
* Only what is differentiated is computed (symbolic zeros): a frozen LM head (w not
  differentiated) skips the dw matmul, a frozen h the dh matmul; without differentiation only the
  logits matmul runs. The returned ``stats['logp']`` / ``stats['entropy']`` are stop-gradient.

Not done: a Pallas/Mosaic version (XLA already fuses the row pass into the slab's elementwise
kernels; the matmuls are cuBLAS/XLA dots), other normalisations than seq-mean-token-mean, and a KL
term (the trainer's ``kl_coef`` needs the recompute path).

CPU timing harness (a sanity check, not the GPU goal)::

    python -c "from hopchain_jax.kernels.fused_head import compare_cpu; print(compare_cpu())"  # N=1024 D=512 V=8192
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from hopchain_jax.kernels import tile_math
from hopchain_jax.kernels.logprob import _finalize, _merge_across, _round_up
from hopchain_jax.kernels.manual_axes import cast_varying, psum_to, union_vary
from hopchain_jax.kernels.sapo_loss import _token_terms_xla, sapo_stats

__all__ = ["sapo_loss_fused_forward", "ce_loss_fused_forward", "auto_chunk_tokens",
           "auto_chunk_vocab", "compare_cpu"]


@dataclasses.dataclass(frozen=True)
class _HeadSpec:
    """Static description of one fused head loss (hashable: a nondiff argument of the custom VJP)."""
    loss: str                    # "sapo" | "ce"
    tau_pos: float
    tau_neg: float
    entropy_coef: float
    chunk_tokens: int | None
    chunk_vocab: int | None
    grad_dtype: Any
    dw_accum_dtype: Any          # None: w's dtype
    batch_axis: tuple = ()        # mesh axes the tokens/sequences are sharded over (shard_map): the
                                  # loss is psum-ed over them
    vocab_axis: Any = None        # mesh axis w's vocabulary is sharded over (inside shard_map)


def _axes(axis) -> tuple:
    if axis is None:
        return ()
    return tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)


def _psum(x, axes: tuple):
    return lax.psum(x, axes) if axes else x


def auto_chunk_tokens(n: int) -> int:
    """Default token chunk: the largest multiple of 8 dividing N up to 1.25 * N / 20 rows (so the
    slab is <= 1/16 of the [N, V] logits: N = 4096 -> 256), or ~N / 20 rows when no such divisor
    of at least N / 40 exists (then the last chunk overlaps and dh rows are gathered: one [N, D]
    copy)."""
    target = max(8, -(-n // 20))
    divisors = [c for c in range(8, min(n, int(1.25 * target)) + 1, 8) if n % c == 0]
    if divisors and 2 * divisors[-1] >= target:
        return divisors[-1]
    return min(n, _round_up(target, 8))


def auto_chunk_vocab(v: int) -> int:
    """Default vocabulary tile of the dz/dh/dw stage: about V / 128 columns, a multiple of 8, so the
    [D, tile] temporaries of the dw update (the matmul output and, on CPU, a copy of the dw tile)
    stay ~1/128 of [D, V] each. Chosen for memory; see the module docstring for GPU tuning."""
    return min(v, max(128, _round_up(-(-v // 128), 8)))


# ----------------------------------------------------------------------------------------------
# Per-token rule: (logp, H) -> loss term and the coefficients d loss / d logp, d loss / d H
# ----------------------------------------------------------------------------------------------

def _token_rule(spec: _HeadSpec, logp, ent, old, adv, scale):
    """All [C] float32. Returns (loss_tok, c_lp, c_H or None, d old_logp, d adv)."""
    valid = scale > 0
    if spec.loss == "sapo":
        # The [B, T]-shaped SAPO terms of kernels.sapo_loss, each token as a length-1 "sequence".
        fa, f, gw = _token_terms_xla(logp[:, None], old[:, None], adv, valid[:, None],
                                     spec.tau_pos, spec.tau_neg)
        loss_tok = -scale * fa[:, 0]
        c_lp = -adv * gw[:, 0] * scale
        d_old, d_adv = -c_lp, -f[:, 0] * scale
    else:
        loss_tok = -scale * jnp.where(valid, logp, 0.0)
        c_lp = -scale
        d_old = d_adv = jnp.zeros_like(scale)
    c_h = None
    if spec.entropy_coef:
        loss_tok = loss_tok - spec.entropy_coef * scale * jnp.where(valid, ent, 0.0)
        c_h = -spec.entropy_coef * scale
    return loss_tok, c_lp, c_h, d_old, d_adv


# ----------------------------------------------------------------------------------------------
# One token chunk: logits (matmul 1), row pass, dz, dh (matmul 2), dw contribution (matmul 3)
# ----------------------------------------------------------------------------------------------

def _row_stats(z, t_local):
    """(m, s, u, zt) per row of a float32 slab z [C, V] (kernels/logprob.py's statistics: m = max z,
    s = sum exp(z - m), u = sum exp(z - m) (z - m), zt = the target logit, 0 when the target is in
    another vocabulary shard). The target logit is gathered, not a masked sum over the slab."""
    v = z.shape[1]
    m = jnp.max(z, axis=1)
    in_shard = (t_local >= 0) & (t_local < v)
    zt = jnp.take_along_axis(z, jnp.clip(t_local, 0, v - 1)[:, None], axis=1)[:, 0]
    zr = z - m[:, None]
    e = jnp.exp(zr)
    return m, jnp.sum(e, axis=1), jnp.sum(e * zr, axis=1), jnp.where(in_shard, zt, 0.0)


def _vocab_tiling(v: int, chunk_vocab: int | None) -> tuple[int, int]:
    """(tiles, columns per tile) of the dz/dh/dw stage; the last tile may overlap its predecessor."""
    if chunk_vocab is None:
        chunk_vocab = auto_chunk_vocab(v)
    if chunk_vocab < 1:
        raise ValueError(f"chunk_vocab must be >= 1, got {chunk_vocab}")
    n_t = max(1, -(-v // int(chunk_vocab)))
    tile = min(v, _round_up(-(-v // n_t), 8))
    return -(-v // tile), tile


def _grad_tiles(spec: _HeadSpec, h_c, w, z, t_c, row, dw, need_dh, need_dw, dz_dtype, axes):
    """dz tile by vocabulary tile of the slab z [C, V], each feeding dh (matmul 2, accumulated in
    float32 over the tiles) and an in-place update of dw's columns (matmul 3).

    row = (m, log_s, mu, c_lp, c_h) per-row residuals and coefficients. The last tile starts at
    V - tile (no padding, no static tail); columns an earlier tile covered are zeroed in its dz.
    One tile (chunk_vocab >= V) is written without the loop and slices: ``dw + h_c^T dz``, the
    form XLA on GPU can run as one GEMM accumulating into dw (beta = 1).
    """
    c, v = z.shape
    n_t, tile = _vocab_tiling(v, spec.chunk_vocab)
    m, log_s, mu, c_lp, c_h = row
    acc = dw.dtype if need_dw else None
    h_mm = h_c.astype(dz_dtype)
    if n_t == 1:
        cols = lax.broadcasted_iota(jnp.int32, (c, v), 1)
        dz = tile_math.softmax_grad(z, cols == t_c[:, None], m, log_s, c_lp, mu,
                                    c_h).astype(dz_dtype)                    # [C, V]
        dh = (lax.dot_general(dz, w.astype(dz_dtype), (((1,), (1,)), ((), ())),
                              preferred_element_type=jnp.float32).astype(h_c.dtype)
              if need_dh else None)
        if need_dw:
            dw = dw + lax.dot_general(h_mm, dz, (((0,), (0,)), ((), ())),
                                      preferred_element_type=acc)            # [D, V]
        return dh, dw

    def body(j, carry):
        dh, dw = carry
        start = j * tile
        off = jnp.minimum(start, v - tile)
        cols = off + lax.broadcasted_iota(jnp.int32, (c, tile), 1)
        dz = tile_math.softmax_grad(lax.dynamic_slice_in_dim(z, off, tile, axis=1),
                                    cols == t_c[:, None], m, log_s, c_lp, mu, c_h)
        dz = jnp.where(cols >= start, dz, 0.0).astype(dz_dtype)              # [C, tile]
        w_t = lax.dynamic_slice_in_dim(w, off, tile, axis=1)
        if need_dh:
            dh = dh + lax.dot_general(dz, w_t.astype(dz_dtype), (((1,), (1,)), ((), ())),
                                      preferred_element_type=jnp.float32)
        if need_dw:
            upd = lax.dot_general(h_mm, dz, (((0,), (0,)), ((), ())),
                                  preferred_element_type=acc)                # [D, tile]
            dw = lax.dynamic_update_slice_in_dim(
                dw, lax.dynamic_slice_in_dim(dw, off, tile, axis=1) + upd, off, axis=1)
        return dh, dw

    dh0 = cast_varying(jnp.zeros((c, h_c.shape[1]), jnp.float32), axes) if need_dh else None
    dh, dw = lax.fori_loop(0, n_t, body, (dh0, dw))
    return (dh.astype(h_c.dtype) if need_dh else None), dw


def _chunk(spec: _HeadSpec, h_c, w, t_c, old_c, adv_c, sc_c, dw, need_dh, need_dw, dz_dtype,
           axes):
    """h_c [C, D], w [D, V], per-token [C], dw [D, V] accumulator | None
    -> (per-token outputs, dh_c [C, D] | None, updated dw | None)."""
    z = jnp.dot(h_c, w, preferred_element_type=jnp.float32)                 # [C, V] float32
    stats = _row_stats(z, t_c)
    if spec.vocab_axis is not None:
        stats = _merge_across(stats, spec.vocab_axis)
    logp, ent, (m, log_s, mu) = _finalize(*stats)
    loss_tok, c_lp, c_h, d_old, d_adv = _token_rule(spec, logp, ent, old_c, adv_c, sc_c)
    per_tok = (loss_tok, logp, ent, d_old, d_adv)
    if not (need_dh or need_dw):
        return per_tok, None, dw
    dh_c, dw = _grad_tiles(spec, h_c, w, z, t_c, (m, log_s, mu, c_lp, c_h), dw, need_dh, need_dw,
                           dz_dtype, axes)
    return per_tok, dh_c, dw


def _run(spec: _HeadSpec, h, w, t, old, adv, scale, need_dh: bool, need_dw: bool):
    """Scan over token chunks. h [N, D]; t/old/adv/scale [N]; w [D, V] (local vocabulary shard).

    ceil(N / C) chunks of C rows; when C does not divide N the last chunk starts at N - C (h is
    never padded or copied) and its rows that the previous chunk covered get weight 0 (no loss, no
    gradient) and are dropped from the per-token outputs.
    Returns (loss, logp [N], entropy [N], d_old [N], d_adv [N], dh [N, D] | None, dw [D, V] | None).
    """
    n, d = h.shape
    v = w.shape[1]
    c = min(n, auto_chunk_tokens(n) if spec.chunk_tokens is None else spec.chunk_tokens)
    if c < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {spec.chunk_tokens}")
    nc = -(-n // c)
    overlap = nc * c - n
    dz_dtype = (jnp.dtype(spec.grad_dtype) if spec.grad_dtype is not None
                else jnp.promote_types(h.dtype, w.dtype))
    t = t.astype(jnp.int32)
    if spec.vocab_axis is not None:
        t = t - lax.axis_index(spec.vocab_axis) * v
    # Only the dw accumulator is cast (to every axis anything varies over): the per-token values
    # stay invariant over the vocabulary axis (their row statistics are merged with pmax/psum), so
    # the loss is replicated there as shard_map(check_vma=True) requires.
    axes = union_vary(h, w, t, old, adv, scale)
    old, adv, scale = (x.astype(jnp.float32) for x in (old, adv, scale))
    acc = jnp.dtype(spec.dw_accum_dtype or w.dtype)
    dw0 = cast_varying(jnp.zeros((d, v), acc), axes) if need_dw else None

    def body(dw, i):
        start = i * c
        off = jnp.minimum(start, n - c)
        sl = lambda x: lax.dynamic_slice_in_dim(x, off, c, axis=0)  # noqa: E731
        fresh = off + lax.iota(jnp.int32, c) >= start                 # rows no chunk did before
        sc = jnp.where(fresh, sl(scale), 0.0)
        per_tok, dh_c, dw = _chunk(spec, sl(h), w, sl(t), sl(old), sl(adv), sc, dw, need_dh,
                                   need_dw, dz_dtype, axes)
        return dw, (per_tok, dh_c)

    dw, (per_tok, dh) = lax.scan(body, dw0, jnp.arange(nc, dtype=jnp.int32))

    def rows(y):  # [nc, C, ...] -> [N, ...]: the last chunk's first `overlap` rows are repeats
        if not overlap:
            return y.reshape((n,) + y.shape[2:])
        return jnp.concatenate([y[:-1].reshape(((nc - 1) * c,) + y.shape[2:]), y[-1, overlap:]])

    loss_tok, logp, ent, d_old, d_adv = (rows(x) for x in per_tok)
    loss = _psum(jnp.sum(loss_tok), spec.batch_axis)
    dh = rows(dh) if need_dh else None
    if need_dw:
        dw = dw.astype(w.dtype)
    return loss, logp, ent, d_old, d_adv, dh, dw


# ----------------------------------------------------------------------------------------------
# Custom VJP: the forward rule runs the 3-matmul pass; the backward scales its results by g
# ----------------------------------------------------------------------------------------------

@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _head_loss(h, w, t, old, adv, scale, spec):
    loss, logp, ent, *_ = _run(spec, h, w, t, old, adv, scale, False, False)
    return loss, logp, ent


def _head_loss_fwd(h, w, t, old, adv, scale, spec):
    need_dh, need_dw = h.perturbed, w.perturbed
    h, w, t, old, adv, scale = (x.value for x in (h, w, t, old, adv, scale))
    loss, logp, ent, d_old, d_adv, dh, dw = _run(spec, h, w, t, old, adv, scale, need_dh, need_dw)
    # Reduce over the mesh axes the gradients vary over but their inputs do not (check_vma=True):
    # dh over the vocabulary shards, dw over the token/batch shards. A no-op outside shard_map.
    dh = psum_to(dh, h) if need_dh else None
    dw = psum_to(dw, w) if need_dw else None
    manual = jnp.zeros((), jnp.int8) if union_vary(h, w, t, old, adv, scale) else None
    dtypes = (jnp.zeros((), old.dtype), jnp.zeros((), adv.dtype), jnp.zeros_like(scale))
    return (loss, logp, ent), (dh, dw, d_old, d_adv, dtypes, manual)


def _head_loss_bwd(spec, res, cts):
    dh, dw, d_old, d_adv, (old0, adv0, zero_scale), manual = res
    g = cts[0]
    if isinstance(g, SymbolicZero):
        g = jnp.zeros((), jnp.float32)
    g = g.astype(jnp.float32)
    g_tok = g
    if manual is None and (spec.batch_axis or spec.vocab_axis is not None):
        # shard_map(check_vma=False): the cotangent of the replicated loss arrives split over the
        # mesh axes, and shard_map's transpose sums each input's cotangent over the axes that input
        # is replicated on. dh (partial over vocabulary shards) and dw (partial over sequence
        # shards) need the whole g; the per-token cotangents are complete on every vocabulary
        # shard, so they keep g's vocabulary split (the transpose's sum restores it).
        g_tok = _psum(g, spec.batch_axis)
        g = lax.psum(g, spec.batch_axis + _axes(spec.vocab_axis))
    scale_by = lambda x: None if x is None else (g * x.astype(jnp.float32)).astype(x.dtype)  # noqa: E731
    return (scale_by(dh), scale_by(dw), None, (g_tok * d_old).astype(old0.dtype),
            (g_tok * d_adv).astype(adv0.dtype), zero_scale)


_head_loss.defvjp(_head_loss_fwd, _head_loss_bwd, symbolic_zeros=True)


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------

def _spec(loss, tau_pos, tau_neg, entropy_coef, chunk_tokens, chunk_vocab, grad_dtype,
          dw_accum_dtype, batch_axis, vocab_axis):
    return _HeadSpec(loss, float(tau_pos), float(tau_neg), float(entropy_coef),
                     None if chunk_tokens is None else int(chunk_tokens),
                     None if chunk_vocab is None else int(chunk_vocab),
                     None if grad_dtype is None else jnp.dtype(grad_dtype).name,
                     None if dw_accum_dtype is None else jnp.dtype(dw_accum_dtype).name,
                     _axes(batch_axis), vocab_axis)


def _flat(h, w, targets):
    """h [B, T, D] or [B * T, D] -> [B * T, D]; checks the shapes against targets [B, T]."""
    if targets.ndim != 2:
        raise ValueError(f"targets must be [B, T], got {targets.shape}")
    b, t = targets.shape
    if h.shape[-1] != w.shape[0]:
        raise ValueError(f"h [..., D] and w [D, V] disagree: {h.shape} vs {w.shape}")
    if h.shape[:-1] not in ((b, t), (b * t,)):
        raise ValueError(f"h must be [B, T, D] or [B*T, D] for targets {targets.shape}, got {h.shape}")
    return h.reshape(b * t, h.shape[-1])


def _call(spec: _HeadSpec, hf, w, t, old, adv, scale, mesh, token_axis, check_vma):
    """The custom-VJP op on token arrays [N]; with ``mesh``, under shard_map (tokens over
    ``token_axis``, w replicated or vocabulary-sharded over ``spec.vocab_axis``)."""
    scale = lax.stop_gradient(scale)
    if mesh is None:
        return _head_loss(hf, w, t, old, adv, scale, spec)
    if spec.batch_axis:
        raise ValueError("pass either mesh= (this function runs shard_map) or batch_axis= (inside "
                         "your own shard_map), not both")
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    tok = token_axis if token_axis is not None else mesh.axis_names
    inner = dataclasses.replace(spec, batch_axis=_axes(tok))
    specs = (P(tok, None), P(None, spec.vocab_axis)) + (P(tok),) * 4
    args = (hf, w, t, old, adv, scale)
    if any(a == AxisType.Explicit for a in getattr(mesh, "axis_types", ())):
        args = tuple(jax.sharding.reshard(x, NamedSharding(mesh, sp)) for x, sp in zip(args, specs))
    return jax.shard_map(lambda *a: _head_loss(*a, inner), mesh=mesh, in_specs=specs,
                         out_specs=(P(), P(tok), P(tok)), check_vma=check_vma)(*args)


def _token_means(stats, logp, ent, valid, batch_axis):
    vf = valid.astype(jnp.float32)
    denom = jnp.maximum(stats["n_valid_tokens"], 1.0)
    stats["entropy_mean"] = _psum(jnp.sum(vf * ent), batch_axis) / denom
    stats["logp_mean"] = _psum(jnp.sum(jnp.where(valid, logp, 0.0)), batch_axis) / denom
    return stats


def sapo_loss_fused_forward(h, w, targets, old_logp, advantages, mask, tau_pos: float = 1.0,
                            tau_neg: float = 1.05, *, entropy_coef: float = 0.0,
                            chunk_tokens: int | None = None, chunk_vocab: int | None = None,
                            grad_dtype=None,
                            dw_accum_dtype=None, batch_axis=None, vocab_axis=None,
                            mesh=None, token_axis=None, check_vma: bool = True):
    """SAPO loss from hidden states with a 3-matmul gradient (dz formed in the forward).

    Args:
      h: [B, T, D] (or [B * T, D]) hidden states, float32 or bfloat16.
      w: [D, V] LM head (the local vocabulary shard under ``vocab_axis`` inside shard_map); any V.
      targets: [B, T] integer token ids (global ids under ``vocab_axis``).
      old_logp: [B, T] behaviour-policy log-probs (nats); any value where masked (-inf/NaN too).
      advantages: [B] per-sequence advantages. mask: [B, T] bool or float (> 0 = a loss token).
      tau_pos / tau_neg: SAPO gate temperatures (SPEC §4).
      entropy_coef: adds ``-entropy_coef * seq-mean-token-mean(entropy)`` to the loss (0: off).
      chunk_tokens: rows per chunk (None: :func:`auto_chunk_tokens`); scratch ~ C * V * 4 bytes.
      chunk_vocab: columns per tile of the dz / dh / dw stage (None: :func:`auto_chunk_vocab`).
      grad_dtype: dtype of dz for the dh / dw matmuls (None: the wider of h's and w's dtypes).
      dw_accum_dtype: dw accumulator over the chunks (None: w's dtype, in place; float32 for a
        16-bit w: half the rounding error, plus a [D, V] float32 buffer and twice the traffic).
      batch_axis / vocab_axis: when called inside ``jax.shard_map``: the mesh axes the sequences
        (rows of [B, T]) and w's vocabulary are sharded over.
      mesh / token_axis / check_vma: run under ``jax.shard_map`` here instead: the flattened tokens
        sharded over ``token_axis`` (default: all mesh axes; B * T must divide), w replicated or
        vocabulary-sharded over ``vocab_axis``. The seq-mean-token-mean weights and the statistics
        are computed outside, on the global [B, T] arrays (GSPMD), as the trainer does.

    Returns:
      (loss, stats): loss = -mean_b(mean_t valid f(r) A) [- entropy term], a float32 scalar,
      differentiable w.r.t. h, w, old_logp and advantages. stats: the :func:`sapo_stats` entries,
      ``entropy_mean``, ``logp_mean``, ``loss`` (scalars) and ``logp`` / ``entropy`` [B, T]
      (float32, stop-gradient; like the loss they come from this one pass).
    """
    b, t = targets.shape
    hf = _flat(h, w, targets)
    if old_logp.shape != (b, t) or mask.shape != (b, t) or advantages.shape != (b,):
        raise ValueError(f"old_logp/mask must be [B, T]={targets.shape} and advantages [B]: "
                         f"{old_logp.shape}, {mask.shape}, {advantages.shape}")
    spec = _spec("sapo", tau_pos, tau_neg, entropy_coef, chunk_tokens, chunk_vocab, grad_dtype,
                 dw_accum_dtype, batch_axis, vocab_axis)
    valid = mask > 0
    n_seq = jnp.maximum(jnp.sum(valid, axis=-1).astype(jnp.float32), 1.0)        # [B]
    b_tot = _psum(jnp.float32(b), spec.batch_axis)
    scale = jnp.where(valid, 1.0 / (n_seq * b_tot)[:, None], 0.0)               # [B, T]
    adv_tok = jnp.broadcast_to(advantages[:, None], (b, t))
    loss, logp, ent = _call(spec, hf, w, targets.reshape(-1), old_logp.reshape(-1),
                            adv_tok.reshape(-1), scale.reshape(-1), mesh, token_axis, check_vma)
    logp, ent = (lax.stop_gradient(x).reshape(b, t) for x in (logp, ent))
    stats = sapo_stats(logp, old_logp, advantages, mask, tau_pos, tau_neg,
                       batch_axis=spec.batch_axis or None)
    stats = _token_means(stats, logp, ent, valid, spec.batch_axis)
    stats.update(loss=lax.stop_gradient(loss), logp=logp, entropy=ent)
    return loss, stats


def ce_loss_fused_forward(h, w, targets, mask, *, entropy_coef: float = 0.0,
                          chunk_tokens: int | None = None, chunk_vocab: int | None = None,
                          grad_dtype=None,
                          dw_accum_dtype=None, batch_axis=None, vocab_axis=None,
                          mesh=None, token_axis=None, check_vma: bool = True):
    """Token-mean cross-entropy ``-sum(valid logp) / max(sum valid, 1)`` (SFT), same machinery.

    Shapes and options as :func:`sapo_loss_fused_forward` (h [B, T, D] or [B*T, D], targets / mask
    [B, T]; ``batch_axis`` may then be any token sharding). Returns (loss, stats) with
    ``entropy_mean``, ``logp_mean``, ``n_valid_tokens``, ``loss`` and ``logp`` / ``entropy`` [B, T]
    (stop-gradient).
    """
    b, t = targets.shape
    hf = _flat(h, w, targets)
    if mask.shape != (b, t):
        raise ValueError(f"mask must be [B, T]={targets.shape}, got {mask.shape}")
    spec = _spec("ce", 1.0, 1.0, entropy_coef, chunk_tokens, chunk_vocab, grad_dtype,
                 dw_accum_dtype, batch_axis, vocab_axis)
    valid = mask > 0
    n_tok = _psum(jnp.sum(valid).astype(jnp.float32), spec.batch_axis)
    scale = jnp.where(valid, 1.0 / jnp.maximum(n_tok, 1.0), 0.0).reshape(-1)
    zeros = jnp.zeros((b * t,), jnp.float32)
    loss, logp, ent = _call(spec, hf, w, targets.reshape(-1), zeros, zeros, scale, mesh,
                            token_axis, check_vma)
    logp, ent = (lax.stop_gradient(x).reshape(b, t) for x in (logp, ent))
    stats = _token_means({"n_valid_tokens": n_tok}, logp, ent, valid, spec.batch_axis)
    stats.update(loss=lax.stop_gradient(loss), logp=logp, entropy=ent)
    return loss, stats


# ----------------------------------------------------------------------------------------------
# CPU timing harness (not a test)
# ----------------------------------------------------------------------------------------------

def compare_cpu(n: int = 1024, d: int = 512, v: int = 8192, *, seq_len: int = 64,
                chunk_tokens: int | None = None, chunk_vocab: int | None = None, iters: int = 5,
                dtype=jnp.float32) -> dict:
    """Median wall time (ms) of value_and_grad w.r.t. (h, w): this op vs the recompute path.

    The recompute path is :func:`kernels.sapo_loss.sapo_loss_fused` with ``impl="chunked"`` (what
    the trainer runs on CPU), with its default vocabulary chunk (16384 >= V here: one chunk, i.e.
    [N, V] slabs) and with chunk_v ~ V / 16 (bounded memory, like this op's default). Also reports
    XLA's compiled temp bytes of each and the naive [N, V] float32 logits' size. Example::

        >>> from hopchain_jax.kernels.fused_head import compare_cpu
        >>> compare_cpu(1024, 512, 8192)        # doctest: +SKIP

    One run on a shared 2-core CPU (float32, median of 7; noisy): recompute 145-150 ms (temp
    101 MB), recompute with chunk_v=512 155-173 ms (5.3 MB); this op with the default chunks
    (C = 64, T = 128: 64 vocabulary tiles per chunk) 239 ms (3.1 MB), with chunk_vocab=V 151 ms
    (19 MB), with chunk_tokens=256 and chunk_vocab=V 124 ms (26 MB), one chunk 119 ms (34 MB) --
    3 of 4 matmuls shows once the tiles are large; the memory-first default pays for its many
    small tiles. Not a GPU prediction.
    """
    import time

    import numpy as np

    from hopchain_jax.kernels.sapo_loss import sapo_loss_fused

    rng = np.random.default_rng(0)
    b = n // seq_len
    h = jnp.asarray(rng.standard_normal((b, seq_len, d)), dtype)
    w = jnp.asarray(rng.standard_normal((d, v)) * (4.0 / np.sqrt(d)), dtype)
    tg = jnp.asarray(rng.integers(0, v, (b, seq_len)), jnp.int32)
    old = jnp.asarray(-rng.exponential(5.0, (b, seq_len)), jnp.float32)
    adv = jnp.asarray(rng.standard_normal(b), jnp.float32)
    mask = jnp.asarray(rng.random((b, seq_len)) < 0.9)

    from hopchain_jax.kernels.logprob import LogprobConfig

    cv = max(128, _round_up(v // 16, 128))
    fns = {
        "recompute": lambda h, w: sapo_loss_fused(h, w, tg, old, adv, mask, impl="chunked"),
        f"recompute_chunk_v{cv}": lambda h, w: sapo_loss_fused(
            h, w, tg, old, adv, mask, impl="chunked", config=LogprobConfig(chunk_v=cv)),
        "fused_forward": lambda h, w: sapo_loss_fused_forward(
            h, w, tg, old, adv, mask, chunk_tokens=chunk_tokens, chunk_vocab=chunk_vocab)[0],
    }
    out = {"shape": dict(n=n, d=d, v=v, dtype=jnp.dtype(dtype).name),
           "naive_logits_bytes": n * v * 4}
    for name, fn in fns.items():
        f = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
        compiled = f.lower(h, w).compile()
        jax.block_until_ready(compiled(h, w))
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(h, w))
            times.append((time.perf_counter() - t0) * 1e3)
        mem = compiled.memory_analysis()
        out[name] = {"ms": float(np.median(times)), "loss": float(compiled(h, w)[0]),
                     "temp_bytes": int(getattr(mem, "temp_size_in_bytes", -1))}
    return out


if __name__ == "__main__":  # pragma: no cover
    import json
    import sys
    print(json.dumps(compare_cpu(**{k: int(v) for k, v in (a.split("=") for a in sys.argv[1:])}),
                     indent=1))
