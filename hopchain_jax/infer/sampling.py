"""Sampling settings and the per-row token sampler of the engine.

Every sequence draws its randomness from its own key: token c of sample j of stream i uses
fold_in(fold_in(fold_in(PRNGKey(seed), i), j), c) (the engine's stream is the prompt's index in the call,
or a hash of the prompt for a request with its own settings). A sequence's tokens therefore do not depend
on which decode slot it runs in, when it was admitted, or what else shares its batch: the same seed gives
the same samples whatever the pool size or schedule.

A token is drawn by inverse CDF over blocks of the vocabulary (draw_inverse_cdf): two uniforms per row
instead of the V random numbers of a Gumbel-max draw, which dominated an unfiltered decode step's
sampling cost. Logits split over the vocabulary (a tensor-parallel decode) are drawn in place by
vocab_sharded_draw, the same draw as a shard_map with three small collectives.

The settings (temperature, top_k, top_p) are per-row values, traced, not compiled in: a batch may mix
them (greedy rows next to nucleus-sampled ones) and a new value compiles nothing. Only which parts of
the sampler a batch needs at all (SamplerWork: a draw, a top-k search, a top-p search, the candidate
table) is static.

Filters cost passes over the row [B, V]: found by bisection, the top-k and the top-p cutoffs take 32
each (plus a softmax). When rows ask for top-p and every filtering row has a top-k of at most
CANDIDATE_MAX (Qwen's default: top_k 20 + top_p 0.8), the k largest distinct logits are read off one
per pass instead (top_candidates) and both cutoffs come from that small table: k + 1 passes in all.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P


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
            raise ValueError(f"invalid SamplingParams {self}: need temperature >= 0 (0 = greedy), 0 < top_p <= 1, "
                             "top_k >= 0 (0 = off), n >= 1 and max_new_tokens >= 1")


@functools.lru_cache(maxsize=65536)
def seed_key(seed: int) -> tuple[int, int]:
    """The two uint32 words of PRNGKey(seed) (any Python int); cached (a server seeds every request)."""
    hi, lo = (int(x) for x in jax.device_get(jax.random.key_data(jax.random.PRNGKey(seed))))
    return hi, lo


def row_keys(base: jax.Array, stream: jax.Array, sample: jax.Array, count: jax.Array) -> jax.Array:
    """Keys [B, 2] of token `count` of sample `sample` of stream `stream` (each int32 [B]); base: one key
    [2] for every row or one per row [B, 2] (uint32 words of PRNGKey(seed))."""
    base = jnp.broadcast_to(jnp.asarray(base, jnp.uint32), stream.shape + (2,))

    def one(b, p, s, c):
        return jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(b, p), s), c)
    return jax.vmap(one)(base, stream, sample, count)


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


def _per_row(value, rows: int, dtype) -> jax.Array:
    """A scalar or [B] setting as a [B, 1] column."""
    return jnp.broadcast_to(jnp.asarray(value, dtype).reshape(-1, 1), (rows, 1))


def top_k_cutoff(x: jax.Array, k) -> jax.Array:
    """The k-th largest value of each row of x f32 [B, V] (duplicates counted), [B, 1]; k: an int or one
    per row [B] (>= 1; values past V count as V). The value of lax.top_k(x, k)[0][:, -1:], found by
    bisection (on a CPU, lax.top_k over 151,936 logits costs ~55 ms per row, this ~2 ms:
    benchmarks/sampler.py)."""
    k = jnp.minimum(_per_row(k, x.shape[0], jnp.int32), x.shape[-1])
    return _search(x, lambda t: jnp.sum(x >= t, axis=-1, keepdims=True) >= k, smallest=False)


def top_p_cutoff(x: jax.Array, top_p) -> jax.Array:
    """Nucleus cutoff of each row of logits x f32 [B, V] (-inf allowed), [B, 1]; top_p: a float or one per
    row [B]. A token is kept iff x >= cutoff, i.e. iff the probability mass of the tokens with a strictly
    larger logit is < top_p -- the tokens of the sorted nucleus, ties at its edge kept whole. Found by
    bisection, without a sort."""
    top_p = _per_row(top_p, x.shape[0], jnp.float32)
    probs = jax.nn.softmax(x, axis=-1)
    return _search(x, lambda t: jnp.sum(jnp.where(x > t, probs, 0.0), axis=-1, keepdims=True) < top_p,
                   smallest=True)


def top_k_cutoff_by_sort(x: jax.Array, k) -> jax.Array:
    """Reference for top_k_cutoff: the k-th entry of each row sorted in descending order."""
    k = jnp.clip(_per_row(k, x.shape[0], jnp.int32), 1, x.shape[-1])
    return jnp.take_along_axis(jnp.sort(x, axis=-1)[:, ::-1], k - 1, axis=-1)


def top_p_cutoff_by_sort(x: jax.Array, top_p) -> jax.Array:
    """Reference for top_p_cutoff: sort descending, the smallest logit whose preceding mass is < top_p."""
    top_p = _per_row(top_p, x.shape[0], jnp.float32)
    sorted_x = jnp.sort(x, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_x, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs
    return jnp.min(jnp.where(before < top_p, sorted_x, jnp.inf), axis=-1, keepdims=True)


CUTOFFS = {"bisect": (top_k_cutoff, top_p_cutoff), "sort": (top_k_cutoff_by_sort, top_p_cutoff_by_sort)}

# The largest top-k for which the engine reads the candidates off (top_candidates) instead of bisecting.
# One such pass (a count and a masked max) cost ~2.5 bisection passes on a 2-core CPU, so with top-p
# (which the table makes free: 32 passes + a softmax saved) the table won up to k 24-32 and top-k alone
# never did (benchmarks/RESULTS.md). On an H200 the table took top_k 20 + top_p 0.8 at 256 rows from
# 5.04 to 2.11 ms (the GPU suite's sampler stage); larger k is not yet measured there.
CANDIDATE_MAX = 20


def top_candidates(x: jax.Array, k, most: int | None = None) -> tuple[jax.Array, jax.Array]:
    """The largest distinct values of each row of x f32 [B, V] in descending order, one pass over x each,
    until a row's values cover its k largest entries (duplicates counted); k: an int or [B] (1..most).

    Returns (values f32 [B, most], at_least int32 [B, most]): values[:, j] is the row's (j+1)-th largest
    distinct value and at_least[:, j] the number of entries >= it; columns past the last one read hold
    values -inf, at_least V. The first column with at_least >= k holds the k-th largest entry (top-k's
    cutoff), and the columns up to it are exactly the entries top-k keeps. Each pass takes the count
    for the previous value and the next value below it together (one read of x where the compiler fuses
    the two reductions), so a row with k distinct top values costs k + 1 passes; the loop stops when every row is covered. most: the table's
    width (None: CANDIDATE_MAX)."""
    rows, vocab = x.shape
    most = min(CANDIDATE_MAX if most is None else most, vocab)
    k = jnp.clip(_per_row(k, rows, jnp.int32), 1, most)
    values = jnp.full((rows, most), -jnp.inf, x.dtype)
    at_least = jnp.full((rows, most), vocab, jnp.int32)
    columns = jnp.arange(most)[None, :]

    def unfinished(state):
        j, _, count, _, _ = state
        return (j <= most) & ~jnp.all(count >= k)

    def step(state):
        j, prev, _, values, at_least = state   # prev [B, 1]: column j - 1's value (+inf before column 0)
        count = jnp.sum(x >= prev, axis=-1, keepdims=True, dtype=jnp.int32)
        below = jnp.max(jnp.where(x < prev, x, -jnp.inf), axis=-1, keepdims=True)
        at_least = jnp.where(columns == j - 1, count, at_least)
        values = jnp.where(columns == j, below, values)
        return j + 1, below, count, values, at_least

    start = (jnp.int32(0), jnp.full((rows, 1), jnp.inf, x.dtype), jnp.zeros((rows, 1), jnp.int32), values, at_least)
    _, _, _, values, at_least = jax.lax.while_loop(unfinished, step, start)
    return values, at_least


def candidate_cutoffs(x: jax.Array, k, top_p, most: int | None = None) -> tuple[jax.Array, jax.Array]:
    """top_k_cutoff and the nucleus cutoff of what top-k keeps, from top_candidates: x f32 [B, V]; k an int
    or [B] (1..most; None: CANDIDATE_MAX); top_p a float or [B] -> (k cutoff [B, 1], p cutoff [B, 1]).

    The p cutoff is top_p_cutoff of x with the entries below the k cutoff set to -inf, computed on the
    candidate table alone (the kept entries are its columns up to the k cutoff, each value weighted by
    its count), so it costs no pass over x; it is >= the k cutoff (column 0 always qualifies)."""
    values, at_least = top_candidates(x, k, most)
    k = jnp.clip(_per_row(k, x.shape[0], jnp.int32), 1, values.shape[-1])
    edge = jnp.argmax(at_least >= k, axis=-1)[:, None]                     # [B, 1]: the k cutoff's column
    k_cut = jnp.take_along_axis(values, edge, axis=-1)
    kept = jnp.arange(values.shape[-1])[None, :] <= edge
    counts = jnp.diff(at_least, axis=-1, prepend=jnp.zeros_like(at_least[:, :1]))
    finite = kept & (values > -jnp.inf)
    weights = jnp.where(finite, counts * jnp.exp(jnp.where(finite, values - values[:, :1], 0.0)), 0.0)
    probs = weights / jnp.sum(weights, axis=-1, keepdims=True)
    before = jnp.cumsum(probs, axis=-1) - probs                           # mass of the larger values
    p_cut = jnp.min(jnp.where(kept & (before < _per_row(top_p, x.shape[0], jnp.float32)), values, jnp.inf),
                    axis=-1, keepdims=True)
    return k_cut, p_cut


DRAW_BLOCK = 1024   # tokens per block of the two-level inverse CDF (~sqrt of the work of one flat scan)


def _first_above(weights: jax.Array, u: jax.Array) -> jax.Array:
    """Per row of weights f32 [B, n] (>= 0), the first index whose running sum exceeds u [B] (in [0, 1))
    times the row's total, among entries of weight > 0: index i with probability weights[i] / total.
    The weight > 0 condition keeps a zero-weight entry out even where float rounding makes the running
    sum step across it; a row where nothing qualifies (u * total rounded up to the total) gets its last
    entry of weight > 0."""
    return _first_above_cdf(jnp.cumsum(weights, axis=-1), weights > 0, u)


def _first_above_cdf(cdf: jax.Array, positive: jax.Array, u: jax.Array) -> jax.Array:
    """_first_above from the running sums cdf f32 [B, n] (XLA's scan need not be monotone to the last
    bit) and the mask of entries of weight > 0, bool [B, n]."""
    hit = (cdf > u[:, None] * cdf[:, -1:]) & positive
    last = cdf.shape[-1] - 1 - jnp.argmax(positive[:, ::-1], axis=-1)
    return jnp.where(jnp.any(hit, axis=-1), jnp.argmax(hit, axis=-1), last)


def _vocab_groups(vocab: int, most: int = 16) -> int:
    """The largest power of two <= most dividing vocab: the groups draw_inverse_cdf cuts the row into."""
    groups = 1
    while groups < most and vocab % (2 * groups) == 0:
        groups *= 2
    return groups


def _draw_geometry(vocab: int, block: int) -> tuple[int, int, int, int]:
    """(groups, width, blocks per group, block) of draw_inverse_cdf for a row of `vocab` logits: groups of
    width = vocab / groups tokens, each cut into equal blocks of at most `block` (the last one padded)."""
    groups = _vocab_groups(vocab)
    width = vocab // groups
    per_group = -(-width // block)
    return groups, width, per_group, -(-width // per_group)   # blocks as even as the group allows


def _block_weights(logits: jax.Array, top: jax.Array, width: int, per_group: int, block: int) -> jax.Array:
    """exp(logits - top) of logits f32 [B, n * width] (whole groups) as [B, n, per_group, block], the
    padding 0; top [B, 1]: the row's max."""
    rows = logits.shape[0]
    grouped = logits.reshape(rows, -1, width)
    grouped = jnp.pad(grouped, ((0, 0), (0, 0), (0, per_group * block - width)), constant_values=-jnp.inf)
    return jnp.exp(grouped - top[:, :, None]).reshape(rows, grouped.shape[1], per_group, block)


def _uniforms(keys: jax.Array) -> jax.Array:
    """The draw's two uniforms per row key -> f32 [B, 2] in [0, 1)."""
    return jax.vmap(lambda key: jax.random.uniform(key, (2,)))(keys)


def draw_inverse_cdf(keys: jax.Array, logits: jax.Array, block: int = DRAW_BLOCK) -> jax.Array:
    """One token per row of logits f32 [B, V] with probability softmax(logits) (-inf: never drawn), from
    two uniforms per row key (keys [B] typed or [B, 2] uint32 words) -> int32 [B].

    Inverse CDF in two levels: the vocabulary is cut into blocks of about `block` tokens; the first
    uniform picks a block by its mass, the second a token inside it. The cost is one exp and one sum over
    the row plus two short scans, against the V random numbers a Gumbel-max draw (jax.random.categorical)
    generates: on a CPU, 3.3 ms instead of 38 ms for 8 x 151,936 (benchmarks/sampler.py). Each level
    resolves probabilities to about 2**-24 of its total (a float32 uniform), so a token is resolved to
    ~6e-8 of its block's mass, and the running sums err by a few float32 ulps of that level's total,
    not of the whole row's.

    Blocks never straddle the V / G boundaries (G = _vocab_groups(V): 16 for Qwen's 151,936), so logits
    sharded over the vocabulary in up to G pieces stay where they are: what crosses devices is the block
    masses [B, blocks] and the chosen block's weights [B, block], not the row. (Left to the compiler that
    is still ~20 small collectives; vocab_sharded_draw does the same draw in 3.)"""
    rows, vocab = logits.shape
    groups, width, per_group, block = _draw_geometry(vocab, block)
    weights = _block_weights(logits, jnp.max(logits, axis=-1, keepdims=True), width, per_group, block)
    u = _uniforms(keys)
    chosen = _first_above(jnp.sum(weights, axis=-1).reshape(rows, groups * per_group), u[:, 0])
    # the chosen block's weights by a masked sum over the blocks (no gather along a sharded axis)
    picked = (jnp.arange(groups * per_group) == chosen[:, None]).reshape(rows, groups, per_group, 1)
    inside = jnp.sum(jnp.where(picked, weights, 0.0), axis=(1, 2))
    group, local = chosen // per_group, chosen % per_group
    token = group * width + local * block + _first_above(inside, u[:, 1])
    return jnp.minimum(token, vocab - 1).astype(jnp.int32)   # only a row with no finite logit reaches V


def vocab_sharded_draw(mesh, row_axes: tuple[str, ...], vocab_axis: str, block: int = DRAW_BLOCK):
    """draw_inverse_cdf for logits laid out P(row_axes, vocab_axis) on `mesh`, as a shard_map with three
    collectives: the row max (pmax, [b]), the block masses (all_gather, [b, blocks]) and the token (psum
    from the device holding the chosen block, [b]). Every device then picks the same block from the same
    masses; only the owner of that block looks inside it. The masses are the unsharded draw's (same max,
    same per-block sums), so a seed draws the same tokens as draw_inverse_cdf on the whole row.
    Returns draw(keys [B, ...], logits f32 [B, V]) -> int32 [B]; a vocabulary whose groups do not split
    over the axis (G % shards != 0) falls back to draw_inverse_cdf; rows that do not split over row_axes
    are drawn on every device."""
    shards = mesh.shape[vocab_axis]

    def draw(keys: jax.Array, logits: jax.Array) -> jax.Array:
        rows, vocab = logits.shape
        groups, width, per_group, blk = _draw_geometry(vocab, block)
        if shards == 1 or groups % shards:
            return draw_inverse_cdf(keys, logits, block)
        split = rows % int(np.prod([mesh.shape[a] for a in row_axes])) == 0
        rows_spec = row_axes if split else None   # rows that do not split over row_axes: on every device
        local_blocks = groups // shards * per_group

        def local(keys, x):   # x [b, V / shards]: this device's whole groups
            top = jax.lax.pmax(jnp.max(x, axis=-1, keepdims=True), vocab_axis)
            weights = _block_weights(x, top, width, per_group, blk).reshape(x.shape[0], local_blocks, blk)
            masses = jax.lax.all_gather(jnp.sum(weights, axis=-1), vocab_axis, axis=1, tiled=True)
            u = _uniforms(keys)
            chosen = _first_above(masses, u[:, 0])
            mine = chosen // local_blocks == jax.lax.axis_index(vocab_axis)
            inside = jnp.take_along_axis(weights, (chosen % local_blocks)[:, None, None], axis=1)[:, 0]
            token = (chosen // per_group) * width + (chosen % per_group) * blk + _first_above(inside, u[:, 1])
            return jax.lax.psum(jnp.where(mine, token, 0), vocab_axis)

        token = jax.shard_map(local, mesh=mesh, in_specs=(P(rows_spec), P(rows_spec, vocab_axis)),
                              out_specs=P(rows_spec), check_vma=False)(keys, logits)
        return jnp.minimum(token, vocab - 1).astype(jnp.int32)

    return draw


def draw_gumbel(keys: jax.Array, logits: jax.Array) -> jax.Array:
    """Reference for draw_inverse_cdf: Gumbel-max (jax.random.categorical), V random numbers per row."""
    return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)


DRAWS = {"inverse_cdf": draw_inverse_cdf, "gumbel": draw_gumbel}


class SamplerWork(NamedTuple):
    """Which parts of the sampler a batch needs (static: each combination is its own program, a handful in
    practice). draw: some row samples (temperature > 0); top_k / top_p: some sampling row filters so;
    candidates: some row asks for top-p and every filtering row has a top-k of 1..CANDIDATE_MAX, so both
    cutoffs come from top_candidates' table (set it only then: a row it does not cover is left
    unfiltered).
    Decided on the host from the rows' settings, so no device-wide reduction sits in the decode loop."""

    draw: bool = True
    top_k: bool = True
    top_p: bool = True
    candidates: bool = False

    @classmethod
    def of(cls, temperature, top_k, top_p) -> SamplerWork:
        """From host values (scalars or [B] arrays) of the settings."""
        t, k, p = np.broadcast_arrays(np.asarray(temperature), np.asarray(top_k), np.asarray(top_p))
        sampled = t > 0
        filter_k, filter_p = sampled & (k > 0), sampled & (p < 1)
        candidates = (bool(filter_p.any()) and not (filter_p & ~filter_k).any()
                      and k[filter_k].max() <= CANDIDATE_MAX)
        return cls(bool(sampled.any()), bool(filter_k.any()), bool(filter_p.any()), bool(candidates))


def suppress_ids(logits: jax.Array, ids: Sequence[int]) -> jax.Array:
    """logits [..., V] with the columns `ids` set to -inf (never sampled, never the argmax). One compare
    per id against an iota, elementwise: a vocabulary-sharded layout stays in place."""
    if not ids:
        return logits
    col = lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    hit = functools.reduce(jnp.logical_or, [col == int(i) for i in ids])
    return jnp.where(hit, -jnp.inf, logits)


def sample_tokens(logits: jax.Array, keys: jax.Array, temperature, top_k, top_p, cutoffs: str = "auto",
                  work: SamplerWork | None = None, draw="inverse_cdf"):
    """logits f32 [B, V], keys [B, 2] -> (tokens int32 [B], log-probs f32 [B]).

    temperature, top_k, top_p: numbers (every row) or [B] arrays (one per row; traced, so a new setting
    compiles nothing). Log-probs are those of the sampled token under log_softmax(logits / T) (before
    top-k / top-p truncation); a greedy row (T = 0) takes the argmax and reports log_softmax(logits).
    top-k (0 = off) keeps the tokens >= the k-th largest logit, then top-p (1 = off) keeps the nucleus of
    what is left (top_p_cutoff). work: the parts the rows need (SamplerWork.of their settings; work a
    batch does not need is left out of the program); None: derived from the settings when they are host
    values, everything when they are traced.
    cutoffs: "auto" (the engine's: the candidate table when work.candidates, else bisection), "bisect"
    (always bisection), or "sort" (the textbook reference, benchmarks/sampler.py's baseline).
    draw: "inverse_cdf" (the engine's), "gumbel" (jax.random.categorical; the reference), or a function
    (keys, logits) -> tokens, e.g. vocab_sharded_draw(...) for vocabulary-sharded logits."""
    if cutoffs not in ("auto", *CUTOFFS):
        raise ValueError(f"cutoffs={cutoffs!r}: use 'auto', 'bisect' or 'sort'")
    k_cutoff, p_cutoff = CUTOFFS["bisect" if cutoffs == "auto" else cutoffs]
    draw_fn = draw if callable(draw) else DRAWS[draw]
    if work is None:
        traced = any(isinstance(v, jax.Array) for v in (temperature, top_k, top_p))
        work = SamplerWork() if traced else SamplerWork.of(temperature, top_k, top_p)
    rows = logits.shape[0]
    temperature = _per_row(temperature, rows, jnp.float32)
    top_k, top_p = _per_row(top_k, rows, jnp.int32), _per_row(top_p, rows, jnp.float32)
    greedy = temperature == 0
    scaled = logits / jnp.where(greedy, 1.0, temperature)
    logp = jax.nn.log_softmax(scaled, axis=-1)
    tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    table = work.candidates and cutoffs == "auto"   # every filtering row has a small top-k
    if work.draw:
        masked = scaled
        if table:
            use_k = ~greedy & (top_k > 0)
            k_cut, p_cut = candidate_cutoffs(scaled, jnp.where(use_k, top_k, 1), top_p)
            cut = jnp.where(~greedy & (top_p < 1), p_cut, k_cut)
            masked = jnp.where(use_k & (scaled < cut), -jnp.inf, scaled)
        elif work.top_k:   # rows that filter: tokens below their k-th largest logit -> -inf
            use = ~greedy & (top_k > 0)
            masked = jnp.where(use & (scaled < k_cutoff(scaled, jnp.maximum(top_k, 1))), -jnp.inf, masked)
        if work.top_p and not table:
            use = ~greedy & (top_p < 1)
            masked = jnp.where(use & (masked < p_cutoff(masked, top_p)), -jnp.inf, masked)
        drawn = draw_fn(keys, masked)
        tokens = jnp.where(greedy[:, 0], tokens, drawn)
    return tokens, jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]
