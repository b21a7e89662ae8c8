"""SAPO loss: custom VJP (XLA) and Pallas (interpret) against autodiff of the reference; stats; the
fused entry from hidden states; sharding over the batch."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from hopchain_jax.kernels import (LogprobConfig, SapoConfig, logprob_entropy_reference, sapo_loss,
                                  sapo_loss_and_stats, sapo_loss_fused, sapo_loss_reference)

SCFG = SapoConfig(block_b=8, block_t=16)
LCFG = LogprobConfig(block_n=16, block_v=64, block_k=16, tiles_per_program=2, chunk_v=128)
IMPLS = ["chunked", "pallas_interpret"]


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _batch(seed, b=6, t=40, spread=0.3):
    rng = np.random.default_rng(seed)
    logp = -np.abs(rng.standard_normal((b, t))).astype(np.float32)
    old = (logp + rng.standard_normal((b, t)) * spread).astype(np.float32)
    adv = rng.standard_normal(b).astype(np.float32)
    adv[2] = 0.0                                   # a zero-advantage sequence
    lens = rng.integers(1, t + 1, b)
    lens[1] = 0                                    # a fully masked sequence
    lens[3] = t                                    # a full one
    mask = (np.arange(t)[None, :] < lens[:, None]).astype(np.float32)
    logp = np.where(mask > 0, logp, np.nan).astype(np.float32)  # garbage where masked
    return jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask)


def _vg(impl, mask, **kw):
    cfg = dict(config=SCFG) if impl == "pallas_interpret" else {}
    return jax.jit(jax.value_and_grad(
        lambda lp, old, a: sapo_loss(lp, old, a, mask, impl=impl, **cfg, **kw), argnums=(0, 1, 2)))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("taus", [(1.0, 1.05), (0.5, 2.0)])
def test_matches_reference(impl, taus):
    logp, old, adv, mask = _batch(100 + int(taus[1] * 10))
    loss, grads = _vg(impl, mask, tau_pos=taus[0], tau_neg=taus[1])(logp, old, adv)
    ref = jax.value_and_grad(
        lambda lp, o, a: sapo_loss_reference(lp, o, a, mask, *taus), argnums=(0, 1, 2))
    loss_r, grads_r = ref(logp, old, adv)
    assert np.isfinite(float(loss))
    assert abs(float(loss) - float(loss_r)) <= 1e-5 * abs(float(loss_r))
    for g, g_r in zip(grads, grads_r):
        assert bool(jnp.all(jnp.isfinite(g)))
        assert _rel(g, g_r) <= 1e-5
    # Masked positions (NaN log-probs) get exactly zero gradient; the empty row contributes 0.
    assert bool(jnp.all(jnp.where(mask > 0, 0.0, grads[0]) == 0.0))


@pytest.mark.parametrize("impl", IMPLS)
def test_on_policy_gradient_is_policy_gradient(impl):
    logp, _, adv, mask = _batch(200)
    logp = jnp.where(mask > 0, logp, 0.0)
    b = logp.shape[0]
    _, (g, _, _) = _vg(impl, mask)(logp, logp, adv)
    n = jnp.maximum(mask.sum(-1), 1.0)
    expected = -adv[:, None] * mask / (n[:, None] * b)
    np.testing.assert_allclose(np.asarray(g), np.asarray(expected), rtol=1e-6, atol=1e-9)


def test_stats_and_empty_batch():
    logp, _, adv, mask = _batch(300)
    logp = jnp.where(mask > 0, logp, 0.0)
    loss, st = sapo_loss_and_stats(logp, logp, adv, mask)
    assert float(st["gate_weight_mean"]) == pytest.approx(1.0)
    assert float(st["ratio_mean"]) == pytest.approx(1.0)
    assert float(st["off_policy_frac"]) == 0.0 and float(st["log_ratio_abs_max"]) == 0.0
    assert float(st["zero_adv_seqs"]) == 1.0 and float(st["empty_seqs"]) == 1.0
    assert float(st["n_valid_tokens"]) == float(mask.sum())
    # On-policy, f(1) = 2/tau: loss = -mean_b(2 A_b / tau_b) over sequences with tokens.
    tau = np.where(np.asarray(adv) > 0, 1.0, 1.05)
    per = np.where(np.asarray(mask).sum(-1) > 0, 2.0 * np.asarray(adv) / tau, 0.0)
    assert float(loss) == pytest.approx(-per.mean(), rel=1e-6)
    # Everything masked: loss 0, gradient 0, no NaN.
    zero_mask = jnp.zeros_like(mask)
    for impl in IMPLS:
        l0, (g0, _, _) = _vg(impl, zero_mask)(logp, logp, adv)
        assert float(l0) == 0.0 and bool(jnp.all(g0 == 0.0))


@pytest.mark.parametrize("impl", IMPLS)
def test_extreme_log_ratios_are_clamped(impl):
    logp, old, adv, mask = _batch(400)
    old = old.at[0, :3].set(old[0, :3] - 50.0).at[3, :2].set(old[3, :2] + 50.0)  # |lr| = 50
    loss, grads = _vg(impl, mask)(logp, old, adv)
    loss_r, grads_r = jax.value_and_grad(
        lambda lp, o, a: sapo_loss_reference(lp, o, a, mask), argnums=(0, 1, 2))(logp, old, adv)
    assert np.isfinite(float(loss)) and abs(float(loss) - float(loss_r)) <= 1e-5 * abs(float(loss_r))
    for g, g_r in zip(grads, grads_r):
        assert bool(jnp.all(jnp.isfinite(g))) and _rel(g, g_r) <= 1e-5
    assert float(grads[0][0, 0]) == 0.0 and float(grads[0][3, 0]) == 0.0  # clamped -> no gradient
    _, st = sapo_loss_and_stats(logp, old, adv, mask)
    assert float(st["log_ratio_abs_max"]) > 20.0 and float(st["clamped_frac"]) > 0.0


def test_bool_mask():
    logp, old, adv, mask = _batch(500)
    a = sapo_loss(logp, old, adv, mask > 0, impl="chunked")
    b = sapo_loss_reference(logp, old, adv, mask)
    assert float(a) == pytest.approx(float(b), rel=1e-6)
    g = jax.grad(lambda lp: sapo_loss(lp, old, adv, mask > 0, impl="chunked"))(logp)
    assert bool(jnp.all(jnp.isfinite(g)))


def _fused_inputs(seed, b=4, t=6, d=32, v=200, lens=(6, 3, 0, 5)):
    rng = np.random.default_rng(seed)
    h = jnp.asarray(rng.standard_normal((b, t, d)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((d, v)) * 0.3, jnp.float32)
    tg = jnp.asarray(rng.integers(0, v, (b, t)), jnp.int32)
    old = logprob_entropy_reference(h, w, tg)[0] + jnp.asarray(rng.standard_normal((b, t)) * 0.2,
                                                                jnp.float32)
    adv = jnp.asarray(rng.standard_normal(b), jnp.float32)
    mask = jnp.asarray(np.arange(t)[None, :] < np.array(lens)[:, None], jnp.float32)
    return h, w, tg, old, adv, mask


@pytest.mark.parametrize("impl", IMPLS)
def test_fused_matches_composition(impl):
    h, w, tg, old, adv, mask = _fused_inputs(600)

    def ref(h, w):
        lp, _ = logprob_entropy_reference(h, w, tg)
        return sapo_loss_reference(lp, old, adv, mask)

    loss_r, (dh_r, dw_r) = jax.value_and_grad(ref, argnums=(0, 1))(h, w)
    f = jax.jit(jax.value_and_grad(
        lambda h, w: sapo_loss_fused(h, w, tg, old, adv, mask, impl=impl, config=LCFG,
                                     with_stats=True), argnums=(0, 1), has_aux=True))
    (loss, st), (dh, dw) = f(h, w)
    assert abs(float(loss) - float(loss_r)) <= 1e-5 * abs(float(loss_r))
    assert _rel(dh, dh_r) <= 1e-5 and _rel(dw, dw_r) <= 1e-5
    ent = logprob_entropy_reference(h, w, tg)[1]
    ent_mean = float(jnp.sum(ent * mask) / jnp.sum(mask))
    assert float(st["entropy_mean"]) == pytest.approx(ent_mean, rel=1e-5)
    assert float(st["empty_seqs"]) == 1.0


@pytest.mark.parametrize("impl", IMPLS)
def test_fused_sharded_over_batch(impl):
    """Sequences sharded over 8 devices (batch_axis), w replicated: equals the unsharded loss."""
    h, w, tg, old, adv, mask = _fused_inputs(700, b=8, t=4, lens=(4, 3, 0, 2, 4, 1, 0, 2))
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))

    def sharded(h, w):
        body = lambda h, w, tg, old, adv, mask: sapo_loss_fused(  # noqa: E731
            h, w, tg, old, adv, mask, impl=impl, config=LCFG, batch_axis="data")
        return jax.shard_map(body, mesh=mesh, in_specs=(P("data"), P(), P("data"), P("data"),
                                                        P("data"), P("data")),
                             out_specs=P(), check_vma=(impl == "chunked"))(h, w, tg, old, adv, mask)

    unsharded = lambda h, w: sapo_loss_fused(h, w, tg, old, adv, mask, impl=impl, config=LCFG)  # noqa: E731
    loss, (dh, dw) = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1)))(h, w)
    loss_u, (dh_u, dw_u) = jax.jit(jax.value_and_grad(unsharded, argnums=(0, 1)))(h, w)
    assert abs(float(loss) - float(loss_u)) <= 1e-5 * abs(float(loss_u))
    assert _rel(dh, dh_u) <= 1e-5 and _rel(dw, dw_u) <= 1e-5
