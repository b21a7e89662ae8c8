"""The sampler's top-k / top-p cutoffs (bisection, no sort) against lax.top_k and a float64 nucleus."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hopchain_jax.infer.sampling import (SamplerWork, sample_tokens, top_k_cutoff, top_k_cutoff_by_sort,
                                         top_p_cutoff, top_p_cutoff_by_sort)


def _logits(seed, rows=6, vocab=1000, std=4.0, ties=False, neg_inf=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, vocab)) * std
    x[0] = -np.abs(x[0]) - 3.0                     # all negative
    x[1, :5] += 12.0                               # peaked: a few tokens hold most of the mass
    if ties:
        x = np.round(x)                            # many exact ties, at the cutoffs too
    if neg_inf:
        x[:, rng.choice(vocab, neg_inf, replace=False)] = -np.inf   # masked by an earlier filter
    return x.astype(np.float32)


def _nucleus(x, top_p):
    """Reference keep mask (float64): a token stays iff the mass of strictly larger logits is < top_p;
    also returns how far the closest token's mass is from top_p (to skip rounding-level boundaries)."""
    x = x.astype(np.float64)
    p = np.exp(x - x.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    above = np.array([[p[r][x[r] > v].sum() for v in x[r]] for r in range(x.shape[0])])
    return above < top_p, np.abs(above - top_p).min(-1)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("k", [1, 7, 50, 1000, 5000])
def test_top_k_cutoff_is_the_kth_largest(k, ties):
    x = _logits(k, ties=ties, neg_inf=30)
    got = np.asarray(jax.jit(top_k_cutoff, static_argnums=1)(jnp.asarray(x), k))
    want = np.asarray(top_k_cutoff_by_sort(jnp.asarray(x), k))
    np.testing.assert_array_equal(want, -np.sort(-x, -1)[:, min(k, x.shape[1]) - 1:][:, :1])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("std,ties,neg_inf", [(1.0, False, 0), (4.0, False, 0), (8.0, True, 0), (4.0, False, 500)])
@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.999])
def test_top_p_keeps_exactly_the_nucleus(top_p, std, ties, neg_inf):
    x = _logits(int(top_p * 1000) + int(std), std=std, ties=ties, neg_inf=neg_inf)
    cut = np.asarray(jax.jit(top_p_cutoff, static_argnums=1)(jnp.asarray(x), top_p))
    keep, margin = _nucleus(x, top_p)
    clear = margin > 2e-6                    # rows whose boundary is not at float32 rounding level
    assert clear.sum() >= 3, margin
    np.testing.assert_array_equal((x >= cut)[clear], keep[clear])
    by_sort = np.asarray(top_p_cutoff_by_sort(jnp.asarray(x), top_p))      # the sort-based reference
    np.testing.assert_array_equal((x >= by_sort)[clear], keep[clear])
    assert np.all(np.isfinite(cut)) and np.all((x >= cut).sum(-1) >= 1)
    # the cutoff is one of the row's logits: the smallest kept one
    assert all(c in row for c, row in zip(cut[:, 0], x))


def test_sampled_tokens_stay_inside_the_filters():
    x = _logits(3, rows=8, vocab=4000, std=3.0)
    keys = jax.random.split(jax.random.key(0), 8)
    for k, p in ((20, 1.0), (0, 0.3), (50, 0.8)):
        kth = np.sort(x, -1)[:, -k][:, None] if k else np.full((8, 1), -np.inf, np.float32)
        filtered = np.where(x < kth, -np.inf, x)
        keep = _nucleus(filtered, p)[0] if p < 1 else np.isfinite(filtered)
        for trial in range(5):
            tokens, logp = sample_tokens(jnp.asarray(x), jax.random.split(keys[trial], 8), 1.0, k, p)
            tokens = np.asarray(tokens)
            assert keep[np.arange(8), tokens].all(), (k, p, trial)
            ref = jax.nn.log_softmax(x, -1)[np.arange(8), tokens]
            np.testing.assert_allclose(np.asarray(logp), ref, rtol=1e-6)
    top1, _ = sample_tokens(jnp.asarray(x), keys, 0.7, 1, 1.0)
    greedy, _ = sample_tokens(jnp.asarray(x), keys, 0.0, 0, 1.0)
    np.testing.assert_array_equal(np.asarray(top1), np.argmax(x, -1))
    np.testing.assert_array_equal(np.asarray(greedy), np.argmax(x, -1))


def test_per_row_settings_sample_each_row_as_it_would_alone():
    """One batch mixing greedy, plain, top-k, top-p and both (traced [B] settings, jitted) gives each row
    the token and log-prob it gets sampled alone with its settings as numbers; the sort reference agrees;
    SamplerWork leaves out only what no sampling row asks for."""
    settings = [(0.0, 0, 1.0), (1.0, 0, 1.0), (0.7, 5, 1.0), (1.0, 0, 0.6), (1.3, 40, 0.8), (0.5, 1, 0.5),
                (0.0, 7, 0.2), (2.0, 3000, 0.999)]
    x = jnp.asarray(_logits(7, rows=len(settings), vocab=4000, std=3.0))
    t, k, p = (np.asarray(col, dtype) for col, dtype in zip(zip(*settings), (np.float32, np.int32, np.float32)))
    for trial in range(2):
        keys = jax.random.split(jax.random.key(trial), len(settings))
        alone = [sample_tokens(x[i:i + 1], keys[i:i + 1], *s) for i, s in enumerate(settings)]
        ref_tokens = np.asarray([int(a[0][0]) for a in alone])
        for cutoffs in ("bisect", "sort"):
            tokens, logp = jax.jit(lambda x, keys, t, k, p: sample_tokens(x, keys, t, k, p, cutoffs))(x, keys, t, k, p)
            np.testing.assert_array_equal(np.asarray(tokens), ref_tokens, err_msg=f"{cutoffs} trial {trial}")
            np.testing.assert_allclose(np.asarray(logp), [float(a[1][0]) for a in alone], rtol=1e-6)
        assert [ref_tokens[i] for i in (0, 5, 6)] == [int(jnp.argmax(x[i])) for i in (0, 5, 6)]  # greedy, top_k 1
    assert SamplerWork.of(t, k, p) == SamplerWork(True, True, True)
    assert SamplerWork.of([0.0, 1.0], [5, 0], [0.5, 1.0]) == SamplerWork(True, False, False)   # greedy rows ask nothing
    assert SamplerWork.of([0.0, 0.0], [5, 0], [0.5, 1.0]) == SamplerWork(False, False, False)
    assert SamplerWork.of(1.0, 0, 0.9) == SamplerWork(True, False, True)
