"""Attention with masks built from per-token ids, never from a materialised [T, S] mask.

    out = attention(q, k, v, q_segment=..., kv_segment=..., q_pos=..., kv_pos=..., causal=True)

Shapes: q [B, T, H, D]; k, v [B, S, KV, D] with H % KV == 0 (grouped-query attention).
  q_segment int32 [B, T], kv_segment int32 [B, S]: a query attends to a key only if their segment ids
    are equal and the key's id is >= 0 (padding keys carry -1). Packed images, windows, and padding
    are all expressed this way.
  q_pos int32 [B, T], kv_pos int32 [B, S]: positions compared by the causal rule (key pos <= query pos);
    only read when causal=True.
Returns [B, T, H, D] in q's dtype. A query row with no allowed key returns zeros.

impl:
  "flash"      blocked online-softmax attention in plain JAX with a custom VJP (forward keeps only the
               output and the log-sum-exp; the backward recomputes each key block); the biggest score
               tensor is [B, KV, G, T, block_k] (G = H // KV; k/v are never repeated over heads).
               Runs everywhere (jit, remat, scan bodies, GSPMD-sharded inputs); the default.
  "reference"  the textbook softmax over the full [B, H, T, S] score tensor (tests only).
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp


def attention_reference(q, k, v, *, q_segment, kv_segment, q_pos=None, kv_pos=None, causal=False):
    """Textbook attention, materialising [B, H, T, S] scores and the mask (float32 softmax)."""
    b, t, h, d = q.shape
    kvh = k.shape[2]
    qg = q.reshape(b, t, kvh, h // kvh, d)
    scores = jnp.einsum("bqkgd,bskd->bkgqs", qg, k, preferred_element_type=jnp.float32) * (d ** -0.5)
    allowed = (q_segment[:, :, None] == kv_segment[:, None, :]) & (kv_segment[:, None, :] >= 0)
    if causal:
        allowed &= kv_pos[:, None, :] <= q_pos[:, :, None]
    allowed = allowed[:, None, None]
    scores = jnp.where(allowed, scores, -jnp.inf)
    m = jnp.max(scores, axis=-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.where(allowed, jnp.exp(scores - m), 0.0)
    denom = jnp.sum(p, axis=-1, keepdims=True)
    probs = (p / jnp.where(denom > 0, denom, 1.0)).astype(v.dtype)
    out = jnp.einsum("bkgqs,bskd->bqkgd", probs, v, preferred_element_type=jnp.float32)
    return out.reshape(b, t, h, d).astype(q.dtype)


def attention(q, k, v, *, q_segment, kv_segment, q_pos=None, kv_pos=None, causal=False,
              impl: str = "flash", block_k: int = 512):
    """See the module docstring. block_k: keys per block of the flash path (S is padded up to a multiple)."""
    if impl == "reference":
        return attention_reference(q, k, v, q_segment=q_segment, kv_segment=kv_segment, q_pos=q_pos,
                                   kv_pos=kv_pos, causal=causal)
    if impl != "flash":
        raise ValueError(f"unknown attention impl {impl!r}")
    if causal and (q_pos is None or kv_pos is None):
        raise ValueError("causal attention needs q_pos and kv_pos")
    if not causal:  # positions are never read; placeholders keep the custom_vjp signature fixed
        q_pos, kv_pos = jnp.zeros_like(q_segment), jnp.zeros_like(kv_segment)
    b, t, h, d = q.shape
    s, kvh = k.shape[1], k.shape[2]
    if h % kvh or v.shape != k.shape or k.shape[0] != b or k.shape[3] != d:
        raise ValueError(f"bad shapes q {q.shape} k {k.shape} v {v.shape}")
    bk = min(int(block_k), s)
    pad = -s % bk
    if pad:  # padded keys carry segment -1, so they are never allowed
        k = jnp.pad(k, ((0, 0), (0, pad), (0, 0), (0, 0)))
        v = jnp.pad(v, ((0, 0), (0, pad), (0, 0), (0, 0)))
        kv_segment = jnp.pad(kv_segment, ((0, 0), (0, pad)), constant_values=-1)
        kv_pos = jnp.pad(kv_pos, ((0, 0), (0, pad)))
    out = _flash(causal, bk, q, k, v, q_segment.astype(jnp.int32), kv_segment.astype(jnp.int32),
                 q_pos.astype(jnp.int32), kv_pos.astype(jnp.int32))
    return out


# ----------------------------------------------------------------------------------------------------------
# Flash path. Inside: q [B, T, H, D]; k, v [B, Sp, KV, D] with Sp a multiple of bk; ids as in the docstring.
# Per-block layouts: scores/probs [B, KV, G, T, bk]; row statistics [B, KV, G, T]; blocks are stacked on a
# leading axis ([nb, B, bk, ...]) so jax.lax.scan walks them.


def _blocks(x, bk):
    """[B, Sp, ...] -> [nb, B, bk, ...]."""
    return jnp.moveaxis(x.reshape(x.shape[0], x.shape[1] // bk, bk, *x.shape[2:]), 1, 0)


def _unblock(x):
    """[nb, B, bk, ...] -> [B, nb * bk, ...]."""
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])


def _allowed(causal, q_segment, q_pos, kvseg_blk, kvpos_blk):
    """[B, T] query ids, [B, bk] block key ids -> bool [B, 1, 1, T, bk]."""
    ok = (q_segment[:, :, None] == kvseg_blk[:, None, :]) & (kvseg_blk[:, None, :] >= 0)
    if causal:
        ok &= kvpos_blk[:, None, :] <= q_pos[:, :, None]
    return ok[:, None, None]


def _flash_fwd_impl(causal, bk, q, k, v, q_segment, kv_segment, q_pos, kv_pos):
    """Returns out [B, T, H, D] (q.dtype) and the row log-sum-exp [B, KV, G, T] (float32)."""
    b, t, h, d = q.shape
    kvh = k.shape[2]
    g = h // kvh
    scale = d ** -0.5
    qg = q.reshape(b, t, kvh, g, d)

    def step(carry, blk):
        m, l, acc = carry  # [B, KV, G, T], [B, KV, G, T], [B, KV, G, T, D]
        kb, vb, segb, posb = blk  # [B, bk, KV, D] x2, [B, bk] x2
        sc = jnp.einsum("bqkgd,bskd->bkgqs", qg, kb, preferred_element_type=jnp.float32) * scale
        ok = _allowed(causal, q_segment, q_pos, segb, posb)
        sc = jnp.where(ok, sc, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(sc, axis=-1))
        m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # rows with nothing allowed yet stay at 0
        p = jnp.where(ok, jnp.exp(sc - m_safe[..., None]), 0.0)
        corr = jnp.exp(m - m_safe)  # m = -inf -> 0
        l = l * corr + jnp.sum(p, axis=-1)
        pv = jnp.einsum("bkgqs,bskd->bkgqd", p.astype(v.dtype), vb, preferred_element_type=jnp.float32)
        return (m_new, l, acc * corr[..., None] + pv), None

    init = (jnp.full((b, kvh, g, t), -jnp.inf, jnp.float32), jnp.zeros((b, kvh, g, t), jnp.float32),
            jnp.zeros((b, kvh, g, t, d), jnp.float32))
    xs = (_blocks(k, bk), _blocks(v, bk), _blocks(kv_segment, bk), _blocks(kv_pos, bk))
    (m, l, acc), _ = jax.lax.scan(step, init, xs)
    l_safe = jnp.where(l > 0, l, 1.0)  # fully masked rows: acc = 0 -> out = 0
    out = acc / l_safe[..., None]
    lse = jnp.where(jnp.isfinite(m), m, 0.0) + jnp.log(l_safe)
    out = jnp.moveaxis(out, 3, 1).reshape(b, t, h, d).astype(q.dtype)  # [B,KV,G,T,D] -> [B,T,H,D]
    return out, lse


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _flash(causal, bk, q, k, v, q_segment, kv_segment, q_pos, kv_pos):
    return _flash_fwd_impl(causal, bk, q, k, v, q_segment, kv_segment, q_pos, kv_pos)[0]


def _flash_fwd(causal, bk, q, k, v, q_segment, kv_segment, q_pos, kv_pos):
    out, lse = _flash_fwd_impl(causal, bk, q, k, v, q_segment, kv_segment, q_pos, kv_pos)
    return out, (q, k, v, out, lse, q_segment, kv_segment, q_pos, kv_pos)


def _flash_bwd(causal, bk, res, dout):
    """Standard flash backward: recompute each key block's probabilities from the saved lse."""
    q, k, v, out, lse, q_segment, kv_segment, q_pos, kv_pos = res
    b, t, h, d = q.shape
    kvh = k.shape[2]
    g = h // kvh
    scale = d ** -0.5
    qg = q.reshape(b, t, kvh, g, d)
    dog = dout.reshape(b, t, kvh, g, d)
    dsum = jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # [B, T, H]
    dsum = jnp.moveaxis(dsum.reshape(b, t, kvh, g), 1, 3)  # [B, KV, G, T]

    def step(dq, blk):
        kb, vb, segb, posb = blk
        sc = jnp.einsum("bqkgd,bskd->bkgqs", qg, kb, preferred_element_type=jnp.float32) * scale
        ok = _allowed(causal, q_segment, q_pos, segb, posb)
        p = jnp.where(ok, jnp.exp(sc - lse[..., None]), 0.0)  # [B, KV, G, T, bk]
        dv_b = jnp.einsum("bkgqs,bqkgd->bskd", p.astype(dout.dtype), dog, preferred_element_type=jnp.float32)
        dp = jnp.einsum("bqkgd,bskd->bkgqs", dog, vb, preferred_element_type=jnp.float32)
        ds = p * (dp - dsum[..., None])
        dq = dq + jnp.einsum("bkgqs,bskd->bqkgd", ds.astype(k.dtype), kb,
                             preferred_element_type=jnp.float32) * scale
        dk_b = jnp.einsum("bkgqs,bqkgd->bskd", ds.astype(q.dtype), qg, preferred_element_type=jnp.float32) * scale
        return dq, (dk_b.astype(k.dtype), dv_b.astype(v.dtype))

    xs = (_blocks(k, bk), _blocks(v, bk), _blocks(kv_segment, bk), _blocks(kv_pos, bk))
    dq, (dk, dv) = jax.lax.scan(step, jnp.zeros((b, t, kvh, g, d), jnp.float32), xs)
    return (dq.reshape(b, t, h, d).astype(q.dtype), _unblock(dk), _unblock(dv), None, None, None, None)


_flash.defvjp(_flash_fwd, _flash_bwd)
