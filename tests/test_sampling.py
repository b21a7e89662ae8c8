"""The sampler's top-k / top-p cutoffs (bisection, no sort; the candidate table) against lax.top_k and a
float64 nucleus, and its draws."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hopchain_jax.infer.sampling import (CANDIDATE_MAX, SamplerWork, _first_above, _first_above_cdf, _vocab_groups,
                                         candidate_cutoffs, draw_gumbel, draw_inverse_cdf, sample_tokens,
                                         top_candidates, top_k_cutoff, top_k_cutoff_by_sort, top_p_cutoff,
                                         top_p_cutoff_by_sort)


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
    for k, p in ((20, 1.0), (0, 0.3), (50, 0.8), (15, 0.7)):   # (15, 0.7): the candidate table
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
    assert SamplerWork.of(t, k, p) == SamplerWork(True, True, True, candidates=False)
    assert SamplerWork.of([0.0, 1.0], [5, 0], [0.5, 1.0]) == SamplerWork(True, False, False)   # greedy rows ask nothing
    assert SamplerWork.of([0.0, 0.0], [5, 0], [0.5, 1.0]) == SamplerWork(False, False, False)
    assert SamplerWork.of(1.0, 0, 0.9) == SamplerWork(True, False, True)
    # the candidate table: some row asks for top-p, and every filtering row has a top-k of 1..CANDIDATE_MAX
    assert SamplerWork.of([0.0, 1.0, 0.7], [0, 0, 20], [1.0, 1.0, 0.8]) == SamplerWork(True, True, True, True)
    assert SamplerWork.of([1.0, 1.0], [20, 5], [0.8, 1.0]).candidates          # a top-k-only row rides along
    assert not SamplerWork.of([1.0, 1.0], [20, 0], [0.8, 0.9]).candidates      # a top-p row without top-k
    assert not SamplerWork.of(1.0, CANDIDATE_MAX + 1, 0.8).candidates
    assert not SamplerWork.of(1.0, 20, 1.0).candidates                          # top-k alone: bisection
    assert SamplerWork.of([0.0, 1.0], [0, 20], [0.5, 0.8]).candidates          # a greedy row asks nothing


@pytest.mark.parametrize("most", [CANDIDATE_MAX, 64])
@pytest.mark.parametrize("std,ties,neg_inf", [(4.0, False, 0), (8.0, True, 0), (1.0, True, 900), (4.0, False, 30)])
def test_candidate_cutoffs_equal_top_k_then_the_nucleus(most, std, ties, neg_inf):
    """The table's k cutoff is lax.top_k's k-th value and its p cutoff the nucleus of what top-k keeps,
    bit for bit, for fresh random rows: all-negative, peaked, many ties at the edges, rows with fewer
    finite logits than k; and the loop reads only as many values as the largest k needs."""
    rng = np.random.default_rng(int(std) + neg_inf + most)
    for trial in range(3):
        x = _logits(int(rng.integers(1 << 30)), rows=6, vocab=int(rng.integers(neg_inf + most, neg_inf + 1200)), std=std, ties=ties,
                    neg_inf=neg_inf)
        k = rng.integers(1, most + 1, 6).astype(np.int32)
        k[-1] = most
        top_p = rng.choice([0.05, 0.5, 0.8, 0.95, 1.0], 6).astype(np.float32)
        k_cut, p_cut = jax.jit(candidate_cutoffs, static_argnums=3)(jnp.asarray(x), k, top_p, most)
        want_k = top_k_cutoff_by_sort(jnp.asarray(x), k)
        np.testing.assert_array_equal(np.asarray(k_cut), np.asarray(want_k))
        kept = jnp.where(jnp.asarray(x) < want_k, -jnp.inf, jnp.asarray(x))
        live = np.isfinite(np.asarray(kept))   # (top_p 1 keeps every live token; the sort's cut may be -inf)
        np.testing.assert_array_equal(live & (x >= np.asarray(p_cut)),
                                      live & (x >= np.asarray(top_p_cutoff_by_sort(kept, top_p))))
        keep, margin = _nucleus(np.asarray(kept), top_p[:, None])        # and the float64 nucleus
        clear = margin > 2e-6
        np.testing.assert_array_equal((x >= np.asarray(p_cut))[clear], keep[clear])
    # distinct values 9 > 8 > ... > 0, each twice, then -inf: k = 5 needs 3 values and 4 passes
    x = np.full((2, 40), -np.inf, np.float32)
    x[:, :20] = np.repeat(np.arange(9, -1, -1), 2)
    values, at_least = top_candidates(jnp.asarray(x), jnp.asarray([5, 1]), most=8)
    np.testing.assert_array_equal(np.asarray(values)[0, :4], [9, 8, 7, 6])   # the pass after 7 read 6
    np.testing.assert_array_equal(np.asarray(at_least)[0], [2, 4, 6, 40, 40, 40, 40, 40])   # unread: V
    k_cut, p_cut = candidate_cutoffs(jnp.asarray(x), jnp.asarray([5, 1]), jnp.asarray([1.0, 1.0]), 8)
    np.testing.assert_array_equal(np.asarray(k_cut)[:, 0], [7, 9])


def test_engine_cutoffs_take_the_table_and_sample_what_bisection_samples():
    """sample_tokens' default cutoffs use the candidate table when SamplerWork says so (a traced mix of
    greedy, plain and top-k <= CANDIDATE_MAX rows with top-p, as the engine passes them) and give the
    bisection's and the sort's tokens and log-probs; an explicit work with candidates off bisects."""
    settings = [(0.0, 0, 1.0), (1.0, 0, 1.0), (0.7, 20, 0.8), (1.3, 5, 0.5), (1.0, 1, 0.9), (0.9, 20, 0.999),
                (1.0, 12, 1.0), (2.0, 3, 0.3)]
    t, k, p = (np.asarray(col, dtype) for col, dtype in zip(zip(*settings), (np.float32, np.int32, np.float32)))
    work = SamplerWork.of(t, k, p)
    assert work.candidates
    x = jnp.asarray(_logits(5, rows=len(settings), vocab=3000, std=3.0, ties=True, neg_inf=40))
    run = jax.jit(sample_tokens, static_argnums=(5, 6))
    no_keys = jnp.zeros((8, 2), jnp.uint32)
    table, bisect = (run.lower(x, no_keys, t, k, p, c, work).as_text() for c in ("auto", "bisect"))
    assert "while" in table and table.count("while") < bisect.count("while")
    for trial in range(3):
        keys = jax.random.key_data(jax.random.split(jax.random.key(trial), len(settings)))
        got = run(x, keys, t, k, p, "auto", work)
        for cutoffs in ("bisect", "sort"):
            want = run(x, keys, t, k, p, cutoffs, work)
            np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]), err_msg=f"{cutoffs} {trial}")
            np.testing.assert_allclose(np.asarray(got[1]), np.asarray(want[1]), rtol=1e-6)


def _draw_logits(vocab: int) -> np.ndarray:
    """Logits with masked runs (a whole block; for 112, a whole vocabulary group too), scattered masked
    tokens, a dominant token, and tokens of ~1e-4 mass."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=vocab) * 2.0
    x[8:16] = -np.inf
    x[[0, 3, 20, vocab - 1]] = -np.inf
    if vocab == 112:
        x[21:28] = -np.inf                 # group 3 of 16 (7 tokens each)
    x[25 + 30 * (vocab == 112)] = 6.0
    x[[30, 31]] = -4.0
    return x.astype(np.float32)


# (draw, vocab, block): 37 = one group in blocks of 8 (last block ragged); 112 = 16 groups of 7 tokens,
# blocks of 4 (each group padded by one)
@pytest.mark.parametrize("draw,vocab,block", [("inverse_cdf", 37, 8), ("inverse_cdf", 112, 4), ("gumbel", 37, 0)])
def test_draws_follow_the_softmax_and_never_pick_a_masked_token(draw, vocab, block):
    """200,000 draws (each its own key) match the float64 softmax by a chi-square test; the Gumbel-max
    reference is held to the same bound, so the bound is known to be reachable."""
    x = _draw_logits(vocab)
    n = 200_000
    keys = jax.random.split(jax.random.key(3), n)
    fn = (lambda k, l: draw_inverse_cdf(k, l, block=block)) if draw == "inverse_cdf" else draw_gumbel
    tokens = np.asarray(jax.jit(fn)(keys, jnp.broadcast_to(jnp.asarray(x), (n, x.size))))
    p = np.exp(x.astype(np.float64) - x.max())
    p /= p.sum()
    counts = np.bincount(tokens, minlength=x.size)
    assert counts[p == 0].sum() == 0
    live = p > 0
    expected = n * p[live]
    chi2 = float(np.sum((counts[live] - expected) ** 2 / expected))
    dof = int(live.sum()) - 1
    assert chi2 < dof + 6 * np.sqrt(2 * dof), (chi2, dof)     # ~6 sigma: a deterministic test, not flaky
    assert counts[30] + counts[31] > 0                         # the ~1e-4 tokens are drawn too


def test_draw_keeps_vocabulary_sharded_logits_in_place():
    """Logits sharded over the vocabulary (tensor = 4) draw the tokens they draw unsharded, and no
    collective of the compiled draw moves more than one block per row (never the row)."""
    import re

    from jax.sharding import NamedSharding, PartitionSpec as P

    from hopchain_jax.models.sharding import make_mesh
    vocab, rows = 16 * 1000, 8
    x = jnp.asarray(_logits(5, rows=rows, vocab=vocab, std=3.0))
    keys = jax.random.key_data(jax.random.split(jax.random.key(1), rows))
    mesh = make_mesh(data=2, fsdp=1, tensor=4)
    xs = jax.device_put(x, NamedSharding(mesh, P("data", "tensor")))
    ks = jax.device_put(keys, NamedSharding(mesh, P("data")))
    draw = jax.jit(draw_inverse_cdf)
    np.testing.assert_array_equal(np.asarray(draw(ks, xs)), np.asarray(draw(keys, x)))
    hlo = draw.lower(ks, xs).compile().as_text()
    moved = re.findall(r"= \w+\[([\d,]*)\]\S* (?:all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)\(", hlo)
    assert moved and all(int(d) <= 1000 for shape in moved for d in shape.split(",") if d), moved


def test_vocab_sharded_draw_takes_three_collectives_and_draws_the_same_tokens():
    """vocab_sharded_draw (the engine's draw on a tensor-parallel layout) gives draw_inverse_cdf's tokens
    with three collectives: the row max [b], the block masses [b, blocks] and the token [b]. Rows that do
    not split over the row axes are drawn on every device; a vocabulary whose groups do not split over
    the axis falls back to the plain draw."""
    import re

    from jax.sharding import NamedSharding, PartitionSpec as P

    from hopchain_jax.infer.sampling import vocab_sharded_draw
    from hopchain_jax.models.sharding import make_mesh
    mesh = make_mesh(data=2, fsdp=1, tensor=4)
    draw = jax.jit(vocab_sharded_draw(mesh, ("data", "fsdp"), "tensor", block=100))
    collective = r"= \w+\[([\d,]*)\]\S* (all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)\("
    for rows, vocab in ((8, 16 * 1000), (3, 16 * 1000), (8, 1002)):   # 1002 = 2 x 501: not split 4 ways
        x = _logits(6, rows=rows, vocab=vocab, std=3.0)
        x[0, : vocab // 2] = -np.inf                 # the row's mass on the other half of the devices
        x[1, vocab // 4 + 7] = 40.0                  # nearly all the mass on one token of device 1
        x = jnp.asarray(x)
        keys = jax.random.key_data(jax.random.split(jax.random.key(rows), rows))
        xs = jax.device_put(x, NamedSharding(mesh, P("data" if rows % 2 == 0 else None,
                                                     "tensor" if vocab % 4 == 0 else None)))
        got = np.asarray(draw(keys, xs))
        np.testing.assert_array_equal(got, np.asarray(jax.jit(draw_inverse_cdf, static_argnums=2)(keys, x, 100)))
        assert got[0] >= vocab // 2 and got[1] == vocab // 4 + 7
        moved = re.findall(collective, draw.lower(keys, xs).compile().as_text())
        if _vocab_groups(vocab) % 4 == 0:
            assert [kind for _, kind in moved] == ["all-reduce", "all-gather", "all-reduce"], moved
            assert all(int(d) <= 16 * 10 for shape, _ in moved for d in shape.split(",") if d), moved
        else:
            assert not moved, moved


def test_first_above_ends_and_zero_weights():
    """u = 0 picks the first entry of weight > 0, u just below 1 the last, and u * total landing exactly
    on a running sum the next entry of weight > 0; rounding in the scan never selects a zero weight."""
    w = jnp.asarray([[0.0, 0.0, 1.0, 0.0, 2.0, 0.0, 1.0, 0.0]] * 5, jnp.float32)
    u = jnp.asarray([0.0, np.nextafter(np.float32(1), np.float32(0)), 0.25, 0.75, 0.2499], jnp.float32)
    # running sums 1, 1, 3, 3, 4: u * 4 = 1 and 3 sit exactly on them -> the next positive entry
    np.testing.assert_array_equal(np.asarray(_first_above(w, u)), [2, 6, 4, 6, 2])
    # a scan rounded so that the running sum steps up across a zero-weight entry: that entry is skipped;
    # with no entry above the target, the last entry of weight > 0 is taken
    cdf = jnp.asarray([[1.0, 1.0000001, 1.0000001, 3.0], [1.0, 2.0, 2.0000002, 2.0000002]], jnp.float32)
    positive = jnp.asarray([[True, False, False, True], [True, True, False, False]])
    u = jnp.asarray([1.00000005 / 3.0, 0.9999999], jnp.float32)
    np.testing.assert_array_equal(np.asarray(_first_above_cdf(cdf, positive, u)), [3, 1])
    everything_masked = draw_inverse_cdf(jax.random.split(jax.random.key(0), 2),
                                         jnp.full((2, 10), -jnp.inf, jnp.float32), block=4)
    assert all(0 <= int(t) < 10 for t in everything_masked)   # in range even with nothing drawable


def test_sampler_benchmark_on_a_tensor_parallel_layout(tmp_path):
    """benchmarks/sampler.py --tensor 4 times the engine's draw for vocabulary-split logits beside the
    compiler-partitioned one, counts their collectives and writes the rows."""
    import importlib.util
    import json
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("sampler_bench", Path(__file__).resolve().parents[1]
                                                  / "benchmarks" / "sampler.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "rows.json"
    rows = bench.main(["--rows", "8", "--vocab", "1600", "--iters", "1", "--tensor", "4", "--settings", "plain",
                       "--json", str(out)])
    (row,) = json.loads(out.read_text())
    assert row == rows[0] and row["tensor"] == 4 and row["same_tokens"] == 8
    assert 0 < row["engine_collectives"] < row["compiler_collectives"], row
    assert all(row[f"{v}_ms"] > 0 for v in ("engine", "gumbel", "sort", "compiler"))


def test_suppressed_ids_are_never_sampled_nor_the_argmax():
    """The engine's vision-id mask: banned columns that hold the largest logits are never drawn (any filter,
    greedy included), and the other columns are left as they are."""
    from hopchain_jax.infer.sampling import suppress_ids
    seed = int(np.random.SeedSequence().entropy % 2 ** 31)   # fresh inputs every run
    rng = np.random.default_rng(seed)
    x = _logits(seed, rows=8, vocab=512)
    banned = sorted(rng.choice(512, 5, replace=False).tolist())
    x[:, banned] = x.max() + 10.0                      # the banned tokens would win every draw
    masked = suppress_ids(jnp.asarray(x), banned)
    assert np.isneginf(np.asarray(masked)[:, banned]).all(), seed
    keep = np.setdiff1d(np.arange(512), banned)
    np.testing.assert_array_equal(np.asarray(masked)[:, keep], x[:, keep])
    assert np.array_equal(np.asarray(suppress_ids(jnp.asarray(x), ())), x)
    for temperature, top_k, top_p in ((1.0, 0, 1.0), (0.7, 20, 0.8), (0.0, 0, 1.0), (1.5, 100, 0.95)):
        for _ in range(4):
            keys = jnp.asarray(rng.integers(0, 2 ** 32, size=(8, 2), dtype=np.uint32))
            tokens, logp = sample_tokens(masked, keys, temperature, top_k, top_p)
            assert not np.isin(np.asarray(tokens), banned).any(), (seed, temperature)
            assert np.isfinite(np.asarray(logp)).all()
