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


def _ordered(x: jax.Array) -> jax.Array:
    """float32 -> uint32 with the same order (-inf < ... < -0 < +0 < ... < +inf); no NaNs expected."""
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))


def _unordered(u: jax.Array) -> jax.Array:
    """The inverse of _ordered."""
    bits = jnp.where(u >> 31 == 1, u & jnp.uint32(0x7FFFFFFF), ~u)
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def _search(x: jax.Array, keep_above, smallest: bool) -> jax.Array:
    """Bisection over the 2**32 float32 values between each row's min and max of x [B, V].

    keep_above(t [B, 1]) -> bool [B, 1] must be monotone in t: False then True when `smallest` (the
    smallest t where it holds is returned), True then False otherwise (the largest t where it holds).
    32 halvings pin the exact float32 value; each costs one pass over x, no sort."""
    lo = _ordered(jnp.min(x, axis=-1, keepdims=True))
    hi = _ordered(jnp.max(x, axis=-1, keepdims=True))

    def halve(_, bounds):
        lo, hi = bounds
        if smallest:     # answer in [lo, hi]; keep_above(hi) holds
            mid = lo + (hi - lo) // 2
            ok = keep_above(_unordered(mid))
            return jnp.where(ok, lo, mid + 1), jnp.where(ok, mid, hi)
        mid = hi - (hi - lo) // 2  # answer in [lo, hi]; keep_above(lo) holds
        ok = keep_above(_unordered(mid))
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

    lo, hi = jax.lax.fori_loop(0, 32, halve, (lo, hi))
    return _unordered(lo if smallest else hi)


def top_k_cutoff(x: jax.Array, k: int) -> jax.Array:
    """The k-th largest value of each row of x f32 [B, V] (duplicates counted), [B, 1]: the value of
    lax.top_k(x, k)[0][:, -1:], found by bisection (on a CPU, lax.top_k over 151,936 logits costs ~55 ms
    per row, this ~2 ms: benchmarks/sampler.py)."""
    k = min(int(k), x.shape[-1])
    return _search(x, lambda t: jnp.sum(x >= t, axis=-1, keepdims=True) >= k, smallest=False)


def top_p_cutoff(x: jax.Array, top_p: float) -> jax.Array:
    """Nucleus cutoff of each row of logits x f32 [B, V] (-inf allowed), [B, 1]: a token is kept iff
    x >= cutoff, i.e. iff the probability mass of the tokens with a strictly larger logit is < top_p --
    the tokens of the sorted nucleus, ties at its edge kept whole. Found by bisection, without a sort."""
    probs = jax.nn.softmax(x, axis=-1)
    return _search(x, lambda t: jnp.sum(jnp.where(x > t, probs, 0.0), axis=-1, keepdims=True) < top_p,
                   smallest=True)


def top_k_cutoff_by_sort(x: jax.Array, k: int) -> jax.Array:
    """Reference for top_k_cutoff: lax.top_k."""
    return jax.lax.top_k(x, min(int(k), x.shape[-1]))[0][:, -1:]


def top_p_cutoff_by_sort(x: jax.Array, top_p: float) -> jax.Array:
    """Reference for top_p_cutoff: sort descending, the smallest logit whose preceding mass is < top_p."""
    sorted_x = jnp.sort(x, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_x, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs
    return jnp.min(jnp.where(before < top_p, sorted_x, jnp.inf), axis=-1, keepdims=True)


CUTOFFS = {"bisect": (top_k_cutoff, top_p_cutoff), "sort": (top_k_cutoff_by_sort, top_p_cutoff_by_sort)}


def sample_tokens(logits: jax.Array, keys: jax.Array, temperature: float, top_k: int, top_p: float,
                  cutoffs: str = "bisect"):
    """logits f32 [B, V], keys [B, 2] -> (tokens int32 [B], log-probs f32 [B]). Static sampling settings.

    Log-probs are those of the sampled token under log_softmax(logits / T) (before top-k / top-p
    truncation); greedy (T = 0) takes the argmax and reports log_softmax(logits). top-k keeps the
    tokens >= the k-th largest logit, then top-p keeps the nucleus of what is left (top_p_cutoff).
    cutoffs: "bisect" (the engine's) or "sort" (the textbook reference, benchmarks/sampler.py's baseline)."""
    k_cutoff, p_cutoff = CUTOFFS[cutoffs]
    scaled = logits / (temperature if temperature > 0 else 1.0)
    logp = jax.nn.log_softmax(scaled, axis=-1)
    if temperature == 0:
        tokens = jnp.argmax(logits, axis=-1)
    else:
        masked = scaled
        if top_k > 0:
            masked = jnp.where(scaled < k_cutoff(scaled, top_k), -jnp.inf, masked)
        if top_p < 1.0:
            masked = jnp.where(masked < p_cutoff(masked, top_p), -jnp.inf, masked)
        tokens = jax.vmap(jax.random.categorical)(keys, masked)
    tokens = tokens.astype(jnp.int32)
    return tokens, jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]
