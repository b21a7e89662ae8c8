"""Sampling settings and the per-row token sampler of the engine.

Every sequence draws its randomness from its own key: token c of sample j of prompt i uses
fold_in(fold_in(fold_in(PRNGKey(seed), i), j), c). A sequence's tokens therefore do not depend on which
decode slot it runs in, when it was admitted, or what else shares its batch: the same seed gives the same
samples whatever the pool size or schedule.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """temperature 0 = greedy; top_k 0 = off; top_p 1 = off; n samples per prompt (the RL group)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self):
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.n < 1 or self.max_new_tokens < 1:
            raise ValueError(f"invalid SamplingParams {self}")

    def static(self) -> tuple[float, int, float]:
        """(temperature, top_k, top_p): the settings compiled into the sampler."""
        return float(self.temperature), int(self.top_k), float(self.top_p)


def row_keys(base: jax.Array, prompt: jax.Array, sample: jax.Array, count: jax.Array) -> jax.Array:
    """Keys [B, 2] of token `count` of sample `sample` of prompt `prompt` (each int32 [B])."""
    def one(p, s, c):
        return jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(base, p), s), c)
    return jax.vmap(one)(prompt, sample, count)


def sample_tokens(logits: jax.Array, keys: jax.Array, temperature: float, top_k: int, top_p: float):
    """logits f32 [B, V], keys [B, 2] -> (tokens int32 [B], log-probs f32 [B]). Static sampling settings.

    Log-probs are those of the sampled token under log_softmax(logits / T) (before top-k / top-p
    truncation); greedy (T = 0) takes the argmax and reports log_softmax(logits)."""
    scaled = logits / (temperature if temperature > 0 else 1.0)
    logp = jax.nn.log_softmax(scaled, axis=-1)
    if temperature == 0:
        tokens = jnp.argmax(logits, axis=-1)
    else:
        masked = scaled
        if top_k > 0:
            kth = jax.lax.top_k(scaled, top_k)[0][:, -1:]
            masked = jnp.where(scaled < kth, -jnp.inf, masked)
        if top_p < 1.0:
            sorted_logits = jnp.sort(masked, axis=-1)[:, ::-1]
            probs = jax.nn.softmax(sorted_logits, axis=-1)
            before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly before each sorted token
            cutoff = jnp.min(jnp.where(before < top_p, sorted_logits, jnp.inf), axis=-1, keepdims=True)
            masked = jnp.where(masked < cutoff, -jnp.inf, masked)
        tokens = jax.vmap(jax.random.categorical)(keys, masked)
    tokens = tokens.astype(jnp.int32)
    return tokens, jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]
