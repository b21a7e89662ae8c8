"""Plain-JAX references: materialise everything, differentiate with autodiff. The test oracle.

Nothing here is clamped or fused; these are the textbook formulas computed in float32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

SAPO_LOG_RATIO_CLAMP = 20.0


def logprob_entropy_reference(h, w, targets, *, vocab_axis: str | None = None):
    """log softmax(h @ w)[target] and the softmax entropy, per row, from the full [N, V] logits.

    ``vocab_axis``: when called inside ``jax.shard_map`` with ``w`` sharded along its vocabulary
    dimension over that mesh axis, combine the shards with collectives (targets are global ids).
    """
    lead = targets.shape
    h2 = h.reshape(-1, h.shape[-1])
    t = targets.reshape(-1).astype(jnp.int32)
    z = jnp.dot(h2, w, preferred_element_type=jnp.float32)  # [N, V] float32
    if vocab_axis is None:
        logp_all = jax.nn.log_softmax(z, axis=-1)
        logp = jnp.take_along_axis(logp_all, t[:, None], axis=-1)[:, 0]
        ent = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
    else:
        v_local = w.shape[-1]
        t_local = t - jax.lax.axis_index(vocab_axis) * v_local
        m = jax.lax.pmax(jax.lax.stop_gradient(jnp.max(z, axis=-1)), vocab_axis)
        lse = m + jnp.log(jax.lax.psum(jnp.sum(jnp.exp(z - m[:, None]), axis=-1), vocab_axis))
        cols = jnp.arange(v_local)[None, :]
        zt = jax.lax.psum(jnp.sum(jnp.where(cols == t_local[:, None], z, 0.0), axis=-1), vocab_axis)
        logp = zt - lse
        p = jnp.exp(z - lse[:, None])
        ent = lse - jax.lax.psum(jnp.sum(p * z, axis=-1), vocab_axis)
    return logp.reshape(lead), ent.reshape(lead)


def sapo_token_terms(logp, old_logp, advantages, mask, tau_pos=1.0, tau_neg=1.05):
    """Per-token pieces of SAPO (SPEC §4). Returns (valid, log_ratio_raw, r, sigma, tau)."""
    valid = mask > 0
    lr_raw = jnp.where(valid, logp.astype(jnp.float32) - old_logp.astype(jnp.float32), 0.0)
    r = jnp.exp(jnp.clip(lr_raw, -SAPO_LOG_RATIO_CLAMP, SAPO_LOG_RATIO_CLAMP))
    a = advantages.astype(jnp.float32)
    tau = jnp.where(a > 0, jnp.float32(tau_pos), jnp.float32(tau_neg))[:, None]
    sig = jax.nn.sigmoid(tau * (r - 1.0))
    return valid, lr_raw, r, sig, tau


def sapo_loss_reference(logp, old_logp, advantages, mask, tau_pos=1.0, tau_neg=1.05):
    """loss = -mean_seq( mean_valid_tokens( sigma(tau (r - 1)) * 4/tau * A ) ), by autodiff."""
    valid, _, r, sig, tau = sapo_token_terms(logp, old_logp, advantages, mask, tau_pos, tau_neg)
    f = sig * 4.0 / tau
    a = advantages.astype(jnp.float32)[:, None]
    n = jnp.sum(valid, axis=-1).astype(jnp.float32)
    per_seq = jnp.sum(jnp.where(valid, f * a, 0.0), axis=-1) / jnp.maximum(n, 1.0)
    return -jnp.mean(per_seq)
