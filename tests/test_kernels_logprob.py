"""Fused log-prob + entropy: chunked XLA and Pallas (interpret mode) against the plain-JAX reference.

Shapes are tiny and blocks small so interpret mode stays fast; they still exercise padding of N, D
and V, several vocabulary splits per program, surplus (masked) tiles and the backward's chunk scan
plus its tail.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

from hopchain_jax.kernels import (LogprobConfig, fused_logprob_entropy, logprob_entropy_chunked,
                                  logprob_entropy_pallas, logprob_entropy_reference, resolve_impl,
                                  sharded_fused_logprob_entropy)

CFG = LogprobConfig(block_n=16, block_v=64, block_k=16, tiles_per_program=3, chunk_v=128)
IMPLS = ["chunked", "pallas_interpret"]


def _impl_fn(impl, cfg=CFG):
    if impl == "chunked":
        return lambda h, w, t: logprob_entropy_chunked(h, w, t, config=cfg)
    return lambda h, w, t: logprob_entropy_pallas(h, w, t, config=cfg, interpret=True)


def _rel(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _inputs(seed, n, d, v, dtype=jnp.float32, w_scale=0.3):
    rng = np.random.default_rng(seed)
    h = jnp.asarray(rng.standard_normal((n, d)), dtype)
    w = jnp.asarray(rng.standard_normal((d, v)) * w_scale, dtype)
    t = jnp.asarray(rng.integers(0, v, n), jnp.int32)
    g_lp = jnp.asarray(rng.standard_normal(n), jnp.float32)
    g_h = jnp.asarray(rng.standard_normal(n), jnp.float32)
    return h, w, t, g_lp, g_h


def _value_and_grads(fn, h, w, t, g_lp, g_h, argnums=(0, 1)):
    """Values of both outputs and d/d(h, w) of <g_lp, logp> + <g_h, entropy> (both cotangents)."""
    def f(h, w):
        lp, en = fn(h, w, t)
        return jnp.sum(lp * g_lp) + jnp.sum(en * g_h), (lp, en)
    (_, (lp, en)), grads = jax.jit(jax.value_and_grad(f, argnums=argnums, has_aux=True))(h, w)
    return lp, en, grads


def _check_against_reference(impl, h, w, t, g_lp, g_h, tol):
    lp, en, (dh, dw) = _value_and_grads(_impl_fn(impl), h, w, t, g_lp, g_h)
    lp_r, en_r, (dh_r, dw_r) = _value_and_grads(logprob_entropy_reference, h, w, t, g_lp, g_h)
    assert lp.dtype == jnp.float32 and en.dtype == jnp.float32
    assert dh.dtype == h.dtype and dw.dtype == w.dtype
    assert _rel(lp, lp_r) <= tol, ("logp", _rel(lp, lp_r))
    assert _rel(en, en_r) <= tol, ("entropy", _rel(en, en_r))
    assert _rel(dh, dh_r) <= tol, ("dh", _rel(dh, dh_r))
    assert _rel(dw, dw_r) <= tol, ("dw", _rel(dw, dw_r))
    assert bool(jnp.all(lp <= 0.0)) and bool(jnp.all(en >= 0.0))
    return lp, en


# N=24 (pads to 32), D=40 (pads to 48), V=250 (not a multiple of 64; 4 tiles, 2 splits of 3 tiles
# -> 2 surplus tiles; backward: 1 chunk of 128 + a 122-wide tail). Second shape: V=256 exact.
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("seed,shape", [(11, (24, 40, 250)), (12, (32, 32, 256))])
def test_matches_reference_float32(impl, seed, shape):
    _check_against_reference(impl, *_inputs(seed, *shape), tol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_matches_reference_bfloat16(impl):
    _check_against_reference(impl, *_inputs(21, 24, 40, 250, dtype=jnp.bfloat16), tol=2e-2)


def _float64_truth(h, w, t, g_lp, g_h):
    """Closed-form values and gradients in float64 numpy (the ground truth for hard cases)."""
    h, w = np.asarray(h, np.float64), np.asarray(w, np.float64)
    t = np.asarray(t)
    z = h @ w
    m = z.max(1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(1))
    p = np.exp(z - lse[:, None])
    rows = np.arange(len(t))
    ez = (p * z).sum(1)
    onehot = np.zeros_like(z)
    onehot[rows, t] = 1.0
    glp, gh = np.asarray(g_lp, np.float64)[:, None], np.asarray(g_h, np.float64)[:, None]
    dz = glp * (onehot - p) - gh * p * (z - ez[:, None])
    return z[rows, t] - lse, lse - ez, dz @ w.T, h.T @ dz


@pytest.mark.parametrize("impl", IMPLS)
def test_all_negative_logits(impl):
    """Every logit below -104, where exp() underflows to 0 in float32: a max-reduction started at 0
    instead of -inf would return log(0) = -inf. Checked against float64 ground truth (at |z| ~ 150
    the float32 reference itself carries ~1e-5 rounding, so it is not a fair oracle here)."""
    rng = np.random.default_rng(31)
    n, d, v = 16, 32, 200
    h = jnp.asarray(np.abs(rng.standard_normal((n, d))) * 0.5 + 1.0, jnp.float32)
    w = jnp.asarray(-(np.abs(rng.standard_normal((d, v))) + 3.0), jnp.float32)
    t = jnp.asarray(rng.integers(0, v, n), jnp.int32)
    z = np.asarray(h) @ np.asarray(w)
    assert z.max() < -104.0
    g_lp = jnp.asarray(rng.standard_normal(n), jnp.float32)
    g_h = jnp.asarray(rng.standard_normal(n), jnp.float32)
    lp, en, (dh, dw) = _value_and_grads(_impl_fn(impl), h, w, t, g_lp, g_h)
    truth = _float64_truth(h, w, t, g_lp, g_h)
    for name, got, want in zip(("logp", "entropy", "dh", "dw"), (lp, en, dh, dw), truth):
        assert bool(jnp.all(jnp.isfinite(got))), name
        assert _rel(got, want) <= 1e-5, (name, _rel(got, want))
    assert bool(jnp.all(lp <= 0.0)) and bool(jnp.all(en >= 0.0))


@pytest.mark.parametrize("impl", IMPLS)
def test_peaked_and_uniform_distributions(impl):
    """Peaked rows (target logit 60 above the rest): logp never above 0, entropy never below 0.
    Uniform rows (w = 0): entropy is exactly log V and logp = -log V."""
    n, d, v = 16, 16, 200
    t = jnp.arange(n, dtype=jnp.int32) * 7
    h = jnp.eye(n, d, dtype=jnp.float32) * 60.0
    w = jnp.zeros((d, v), jnp.float32).at[jnp.arange(n), t].set(1.0)
    lp, en = _impl_fn(impl)(h, w, t)
    assert bool(jnp.all(lp <= 0.0)) and bool(jnp.all(en >= 0.0))
    np.testing.assert_allclose(np.asarray(lp), 0.0, atol=1e-6)
    lp0, en0 = _impl_fn(impl)(h, jnp.zeros((d, v), jnp.float32), t)
    np.testing.assert_allclose(np.asarray(en0), math.log(v), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(lp0), -math.log(v), rtol=1e-6)
    assert bool(jnp.all(lp0 <= 0.0)) and bool(jnp.all(en0 >= 0.0))


def test_symbolic_zero_paths_pallas():
    """Only logp differentiated (entropy term skipped), only h, only w: each equals the reference."""
    h, w, t, g_lp, _ = _inputs(41, 24, 32, 200)
    fn = _impl_fn("pallas_interpret")

    def loss(fn):
        return lambda h, w: jnp.sum(fn(h, w, t)[0] * g_lp)

    ref_dh, ref_dw = jax.grad(loss(logprob_entropy_reference), argnums=(0, 1))(h, w)
    dh_only = jax.jit(jax.grad(loss(fn), argnums=0))(h, w)
    dw_only = jax.jit(jax.grad(loss(fn), argnums=1))(h, w)
    assert _rel(dh_only, ref_dh) <= 1e-5
    assert _rel(dw_only, ref_dw) <= 1e-5
    # Entropy only.
    ent_ref = jax.grad(lambda h: jnp.sum(logprob_entropy_reference(h, w, t)[1]))(h)
    ent_got = jax.jit(jax.grad(lambda h: jnp.sum(fn(h, w, t)[1])))(h)
    assert _rel(ent_got, ent_ref) <= 1e-5


def test_tpu_layout_and_leading_dims():
    """w_blocked=True (the TPU layout: w tiled by a BlockSpec, one tile per program) on [B, T, D]."""
    cfg = LogprobConfig(block_n=16, block_v=64, block_k=16, tiles_per_program=1, w_blocked=True,
                        chunk_v=64)
    h, w, t, _, _ = _inputs(51, 24, 32, 250)
    h3, t3 = h.reshape(2, 12, 32), t.reshape(2, 12)
    lp, en = jax.jit(lambda h, w, t: logprob_entropy_pallas(h, w, t, config=cfg, interpret=True))(h3, w, t3)
    lp_r, en_r = logprob_entropy_reference(h3, w, t3)
    assert lp.shape == (2, 12)
    assert _rel(lp, lp_r) <= 1e-5 and _rel(en, en_r) <= 1e-5


def _mesh(shape, names):
    return jax.make_mesh(shape, names, axis_types=(AxisType.Explicit,) * len(shape))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("vocab_sharded", [False, True])
def test_shard_map_matches_unsharded(impl, vocab_sharded):
    """8 simulated devices: tokens over 'data' (w replicated), or 4 x 2 with w vocab-sharded."""
    assert len(jax.devices()) >= 8
    if vocab_sharded:
        mesh, va = _mesh((4, 2), ("data", "vocab")), "vocab"
    else:
        mesh, va = _mesh((8,), ("data",)), None
    h, w, t, g_lp, g_h = _inputs(61 + vocab_sharded, 64, 32, 256)
    sharded = lambda h, w, t: sharded_fused_logprob_entropy(  # noqa: E731
        h, w, t, mesh, token_axis="data", vocab_axis=va, impl=impl, config=CFG)
    lp, en, (dh, dw) = _value_and_grads(sharded, h, w, t, g_lp, g_h)
    lp_u, en_u, (dh_u, dw_u) = _value_and_grads(_impl_fn(impl), h, w, t, g_lp, g_h)
    for a, b in ((lp, lp_u), (en, en_u), (dh, dh_u), (dw, dw_u)):
        assert _rel(a, b) <= 1e-5


def test_dispatch():
    assert resolve_impl("auto", None, "cpu") == ("reference", False)
    assert resolve_impl("auto", True, "cpu") == ("pallas", True)
    assert resolve_impl("auto", None, "gpu") == ("pallas", False)
    assert resolve_impl("auto", None, "tpu") == ("pallas", False)
    assert resolve_impl("pallas_interpret", None, "gpu") == ("pallas", True)
    assert resolve_impl("pallas", True, "cpu") == ("pallas", True)
    assert resolve_impl("chunked", None, "gpu") == ("chunked", False)
    with pytest.raises(ValueError, match="interpret"):
        resolve_impl("pallas", None, "cpu")
    with pytest.raises(ValueError):
        resolve_impl("triton")
    h, w, t, _, _ = _inputs(71, 8, 16, 50)
    lp, en = fused_logprob_entropy(h, w, t)  # auto on CPU -> reference, bit for bit
    lp_r, en_r = logprob_entropy_reference(h, w, t)
    np.testing.assert_array_equal(np.asarray(lp), np.asarray(lp_r))
    np.testing.assert_array_equal(np.asarray(en), np.asarray(en_r))
    with pytest.raises(ValueError):
        fused_logprob_entropy(h, w, t, impl="pallas")


def test_config_validation():
    for bad in (dict(block_n=8), dict(block_v=96), dict(block_k=24),
                dict(w_blocked=True, tiles_per_program=2), dict(chunk_v=100)):
        with pytest.raises(ValueError):
            LogprobConfig(**bad)


def test_auto_probe_and_fallback(monkeypatch):
    """On an accelerator 'auto' probes the kernels once; if none lowers (here: a CPU pretending to
    be a GPU, so the Triton lowering is refused) it warns and uses 'chunked' -- also when called
    inside jit."""
    import hopchain_jax.kernels.logprob as lpm
    assert lpm._kernel_usable("pallas", "cpu", interpret=True)  # the probe passes in interpret mode
    lpm._kernel_usable.cache_clear()
    monkeypatch.setattr(lpm, "current_platform", lambda: "gpu")
    try:
        h, w, t, g_lp, g_h = _inputs(81, 16, 16, 100)
        with pytest.warns(RuntimeWarning, match="unavailable"):
            lp, en, (dh, dw) = _value_and_grads(
                lambda h, w, t: lpm.fused_logprob_entropy(h, w, t, impl="auto"), h, w, t, g_lp, g_h)
        lp_r, en_r, (dh_r, dw_r) = _value_and_grads(logprob_entropy_reference, h, w, t, g_lp, g_h)
        for a, b in ((lp, lp_r), (en, en_r), (dh, dh_r), (dw, dw_r)):
            assert _rel(a, b) <= 1e-5
        assert lpm._kernel_usable("pallas", "gpu") is False
        assert lpm.auto_kernel("gpu", jnp.bfloat16) == "chunked"   # no Hopper here: no mosaic try
    finally:
        lpm._kernel_usable.cache_clear()
