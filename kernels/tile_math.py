"""The per-tile math every log-prob kernel body shares (Triton, Mosaic GPU, the chunked XLA scan).

Plain ``jnp``/``lax`` on a float32 logit tile z [n, c] and per-row vectors [n]; row vectors are
broadcast with ``lax.broadcast_in_dim`` (what Mosaic GPU's register layouts support), so the same
function traces inside a Pallas-Triton body, a Mosaic GPU ``plgpu.kernel`` and ordinary XLA code.
The statistics are those of kernels/logprob.py: running max m (from -inf), s = sum exp(z - m),
u = sum exp(z - m) (z - m) and the target logit zt.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

NEG_INF = float("-inf")


def vocab_splits(v_padded: int, cfg) -> tuple[int, int, int]:
    """(vocabulary tiles, tiles per program, programs along the vocabulary) of a forward grid.

    The last split may hold surplus tiles (the kernels clamp the tile index and mask them): Qwen's
    151,936 columns are 1187 tiles of 128, a prime, so splits cannot always divide the tiles.
    """
    n_tiles = v_padded // cfg.block_v
    tpp = min(cfg.tiles_per_program, n_tiles)
    return n_tiles, tpp, -(-n_tiles // tpp)


def rows(x, shape):
    """[n] -> [n, c]."""
    return lax.broadcast_in_dim(x, shape, [0])


def online_update(carry, z, valid, is_target):
    """Fold one tile into the running (m, s, u, zt); masked columns (valid False) contribute nothing.

    carry: (m, s, u, zt), each [n] float32 (start: -inf, 0, 0, 0); z: [n, c] float32 logits;
    valid / is_target: [n, c] bool (is_target must imply valid).
    """
    m, s, u, zt = carry
    m_new = jnp.maximum(m, jnp.where(valid, z, NEG_INF).max(axis=1))
    m_safe = jnp.where(m_new == NEG_INF, 0.0, m_new)
    alpha = jnp.exp(m - m_safe)                        # m = -inf -> 0
    shift = jnp.where(m == NEG_INF, 0.0, m - m_safe)
    zs = jnp.where(valid, z - rows(m_safe, z.shape), 0.0)
    p = jnp.where(valid, jnp.exp(zs), 0.0)
    return (m_new, alpha * s + p.sum(axis=1), alpha * (u + s * shift) + (p * zs).sum(axis=1),
            zt + jnp.where(is_target, z, 0.0).sum(axis=1))


def softmax_grad(z, is_target, m, log_s, glp=None, mu=None, gh=None):
    """dz [n, c] float32 = g_lp (1[target] - p) - g_H p (z - E[z]) with p = exp((z - m) - log s).

    m, log_s, mu (= E[z] - m): the forward's per-row residuals; glp / gh: cotangents of logp and
    entropy ([n], None = that term is absent). Masking of padded columns is the caller's.
    """
    zr = z - rows(m, z.shape)
    p = jnp.exp(zr - rows(log_s, z.shape))
    dz = jnp.zeros(z.shape, jnp.float32)
    if glp is not None:
        g = rows(glp, z.shape)
        dz = jnp.where(is_target, g, 0.0) - p * g
    if gh is not None:
        dz = dz - p * rows(gh, z.shape) * (zr - rows(mu, z.shape))
    return dz
