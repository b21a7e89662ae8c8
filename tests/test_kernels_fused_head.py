"""Fused-forward LM head + SAPO / CE loss (kernels/fused_head.py): values and gradients against a
float64 autodiff reference, the 3-matmul structure, no [N, V] buffer, bounded scratch, sharding.

Inputs are fresh random draws per test (fixed seeds for reproducibility); logits have std >= 4,
V is ragged (not a multiple of anything), N is ragged w.r.t. chunk_tokens (padded rows), masks
include an empty sequence and -inf / NaN old log-probs at masked positions.
"""
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from hopchain_jax.kernels import (LogprobConfig, ce_loss_fused_forward, sapo_loss_fused,
                                  sapo_loss_fused_forward, sapo_loss_reference)
from hopchain_jax.kernels.fused_head import auto_chunk_tokens, auto_chunk_vocab

CHUNK = 16          # rows per token chunk in the small tests
LCFG = LogprobConfig(block_n=16, block_v=64, block_k=16, chunk_v=128)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


def _logits64(h, w):
    return np.einsum("btd,dv->btv", np.asarray(h, np.float64), np.asarray(w, np.float64))


def _inputs(seed, b=5, t=7, d=40, v=250, *, logit_std=5.0, negative=False, dtype=jnp.float32,
            on_policy=False):
    """h [B, T, D], w [D, V], targets, old_logp, advantages, mask. B*T = 35: ragged vs CHUNK."""
    rng = np.random.default_rng(seed)
    if negative:   # every logit below -100: exp() underflows in float32 without the max shift
        h = np.abs(rng.standard_normal((b, t, d))) * 0.5 + 1.0
        w = -(np.abs(rng.standard_normal((d, v))) + 3.0)
    else:
        h = rng.standard_normal((b, t, d))
        w = rng.standard_normal((d, v)) * (logit_std / np.sqrt(d))
    h, w = jnp.asarray(h, dtype), jnp.asarray(w, dtype)
    tg = rng.integers(0, v, (b, t))
    mask = rng.random((b, t)) < 0.75
    mask[0] = True                 # a full sequence
    mask[1] = False                # a fully masked sequence
    adv = rng.standard_normal(b)
    adv[2] = 0.0                   # a zero-advantage sequence
    z = _logits64(h, w)
    lse = z.max(-1) + np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1))
    logp = np.take_along_axis(z, tg[..., None], -1)[..., 0] - lse
    old = logp if on_policy else logp + rng.standard_normal((b, t)) * 0.3
    if not on_policy:
        old[0, 0] -= 30.0          # |log-ratio| > 20: clamped, no gradient
        old[0, 1] += 30.0
    old = np.where(mask, old, np.where(np.arange(t)[None, :] % 2 == 0, -np.inf, np.nan))
    return (h, w, jnp.asarray(tg, jnp.int32), jnp.asarray(old, jnp.float32),
            jnp.asarray(adv, jnp.float32), jnp.asarray(mask))


def _reference64(h, w, tg, old, adv, mask, entropy_coef=0.0, loss="sapo"):
    """Float64 autodiff of sapo_loss_reference (or token-mean CE) on log-probs from full logits.

    Returns (loss, logp, entropy, (dh, dw, d_old, d_adv)) as numpy float64."""
    with jax.enable_x64(True):
        f64 = lambda x: jnp.asarray(np.asarray(x, np.float64))  # noqa: E731
        tg, mask = jnp.asarray(np.asarray(tg)), jnp.asarray(np.asarray(mask))

        def f(h, w, old, adv):
            z = jnp.einsum("btd,dv->btv", h, w)
            lsm = jax.nn.log_softmax(z, axis=-1)
            logp = jnp.take_along_axis(lsm, tg[..., None], axis=-1)[..., 0]
            ent = -jnp.sum(jnp.exp(lsm) * lsm, axis=-1)
            vf = mask.astype(jnp.float64)
            if loss == "sapo":
                out = sapo_loss_reference(logp, old, adv, mask)
                n = jnp.maximum(vf.sum(-1), 1.0)
                out = out - entropy_coef * jnp.mean(jnp.sum(vf * ent, -1) / n)
            else:
                n = jnp.maximum(vf.sum(), 1.0)
                out = -jnp.sum(vf * logp) / n - entropy_coef * jnp.sum(vf * ent) / n
            return out, (logp, ent)

        (val, (lp, en)), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3), has_aux=True))(
            f64(h), f64(w), f64(old), f64(adv))
        return float(val), np.asarray(lp), np.asarray(en), tuple(np.asarray(g) for g in grads)


@functools.lru_cache(maxsize=None)
def _fused_vg(**kw):
    """jit(value_and_grad) w.r.t. (h, w, old_logp, advantages), cached: tests share compilations."""
    def f(h, w, old, adv, tg, mask):
        return sapo_loss_fused_forward(h, w, tg, old, adv, mask, **kw)
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3), has_aux=True))


@pytest.mark.parametrize("case,entropy_coef,one_tile", [
    ("wide", 0.0, False), ("wide", 0.25, False), ("wide", 0.25, True), ("negative", 0.0, False),
    ("negative", 0.0, True)])
def test_matches_float64_reference(case, entropy_coef, one_tile):
    """Vocabulary tiles (the default, ragged: V = 250 in tiles of 128) and one tile (chunk_vocab
    >= V: the loop-free single dw GEMM per chunk)."""
    h, w, tg, old, adv, mask = _inputs(10 + len(case) + int(entropy_coef * 8) + one_tile,
                                       negative=(case == "negative"))
    z = _logits64(h, w)
    if case == "negative":
        assert z.max() < -100.0
    else:
        assert z.std() >= 4.0
    (loss, st), grads = _fused_vg(entropy_coef=entropy_coef, chunk_tokens=CHUNK,
                                  chunk_vocab=w.shape[1] if one_tile else None)(
        h, w, old, adv, tg, mask)
    loss_r, lp_r, en_r, grads_r = _reference64(h, w, tg, old, adv, mask, entropy_coef)
    # At |z| ~ 150 the float32 logits matmul itself rounds by ~1e-5 (absolute), which the log-ratio
    # passes on: the float32 materialised reference is off from float64 by the same 2e-5 there.
    tol = 5e-5 if case == "negative" else 1e-5
    assert np.isfinite(float(loss))
    assert abs(float(loss) - loss_r) <= tol * abs(loss_r), (float(loss), loss_r)
    for name, g, g_r in zip(("dh", "dw", "d_old", "d_adv"), grads, grads_r):
        assert g.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g))), name
        assert _rel(g, g_r) <= tol, (name, _rel(g, g_r))
    m = np.asarray(mask)
    assert _rel(np.where(m, st["logp"], 0), np.where(m, lp_r, 0)) <= 1e-5
    assert _rel(st["entropy"], en_r) <= tol
    assert bool(jnp.all(st["logp"] <= 0)) and bool(jnp.all(st["entropy"] >= 0))
    # Masked tokens and the empty sequence get exactly zero gradient, whatever old_logp holds there.
    assert bool(jnp.all(grads[0][1] == 0.0)) and bool(jnp.all(jnp.where(mask, 0.0, grads[2]) == 0.0))
    # The clamped tokens (|log-ratio| = 30) carry no SAPO gradient.
    assert float(grads[2][0, 0]) == 0.0 and float(grads[2][0, 1]) == 0.0
    assert float(st["clamped_frac"]) > 0 and float(st["empty_seqs"]) == 1.0


def test_on_policy_gradient_is_policy_gradient():
    """old_logp == logp: the SAPO gradient equals that of -mean_b(mean_t A_b logp) (float64)."""
    h, w, tg, old, adv, mask = _inputs(20, on_policy=True)
    (_, st), (dh, dw, _, _) = _fused_vg(chunk_tokens=CHUNK)(h, w, old, adv, tg, mask)
    assert float(st["gate_weight_mean"]) == pytest.approx(1.0, abs=1e-6)
    with jax.enable_x64(True):
        vf = jnp.asarray(np.asarray(mask, np.float64))
        a64 = jnp.asarray(np.asarray(adv, np.float64))

        def pg(h, w):
            lsm = jax.nn.log_softmax(jnp.einsum("btd,dv->btv", h, w), axis=-1)
            logp = jnp.take_along_axis(lsm, jnp.asarray(np.asarray(tg))[..., None], axis=-1)[..., 0]
            return -jnp.mean(jnp.sum(vf * logp, -1) * a64 / jnp.maximum(vf.sum(-1), 1.0))

        dh_r, dw_r = jax.jit(jax.grad(pg, argnums=(0, 1)))(jnp.asarray(np.asarray(h, np.float64)),
                                                  jnp.asarray(np.asarray(w, np.float64)))
    assert _rel(dh, dh_r) <= 1e-5 and _rel(dw, dw_r) <= 1e-5


@pytest.mark.parametrize("accum", ["float32", "bfloat16", None])
def test_bfloat16_inputs(accum):
    """bf16 h and w: the logits matmul outputs float32 (checked in the jaxpr: XLA on CPU would hide a
    bf16 output behind its own upcast) and logp is within 1e-5 of the float64 truth on the same
    rounded inputs; dz is bf16 for the dh/dw matmuls, so gradients are good to ~3e-3 here (tolerance
    1e-2; a bf16 dw accumulator adds one rounding per chunk). The default accumulator (None) is w's
    dtype: the dw matmuls write bf16, no float32 [D, V] buffer."""
    h, w, tg, old, adv, mask = _inputs(30, dtype=jnp.bfloat16)
    kw = dict(chunk_tokens=CHUNK, dw_accum_dtype=accum)
    (loss, st), grads = _fused_vg(**kw)(h, w, old, adv, tg, mask)
    loss_r, lp_r, _, grads_r = _reference64(h, w, tg, old, adv, mask)
    assert grads[0].dtype == jnp.bfloat16 and grads[1].dtype == jnp.bfloat16
    assert abs(float(loss) - loss_r) <= 1e-5 * abs(loss_r)
    m = np.asarray(mask)
    assert _rel(np.where(m, st["logp"], 0), np.where(m, lp_r, 0)) <= 1e-5
    assert _rel(grads[0], grads_r[0]) <= 1e-2 and _rel(grads[1], grads_r[1]) <= 1e-2
    assert _rel(grads[2], grads_r[2]) <= 1e-4
    jaxpr = jax.make_jaxpr(jax.grad(lambda h, w: sapo_loss_fused_forward(
        h, w, tg, old, adv, mask, **kw)[0], argnums=(0, 1)))(h, w).jaxpr
    logits = [e for e in _dot_eqns(jaxpr) if e.outvars[0].aval.shape == (CHUNK, w.shape[1])]
    assert len(logits) == 1 and logits[0].outvars[0].aval.dtype == jnp.float32
    dw_dots = [e for e in _dot_eqns(jaxpr) if e.outvars[0].aval.shape[0] == w.shape[0]]
    assert dw_dots and {e.outvars[0].aval.dtype for e in dw_dots} == {jnp.dtype(accum or w.dtype)}


def test_stats_and_values_match_recompute_path():
    """Same loss, gradients and statistics as sapo_loss_fused (the 4-matmul recompute path)."""
    h, w, tg, old, adv, mask = _inputs(40)
    (loss, st), (dh, dw, _, _) = _fused_vg(chunk_tokens=CHUNK)(h, w, old, adv, tg, mask)
    f = jax.jit(jax.value_and_grad(lambda h, w: sapo_loss_fused(
        h, w, tg, old, adv, mask, impl="chunked", config=LCFG, with_stats=True),
        argnums=(0, 1), has_aux=True))
    (loss_c, st_c), (dh_c, dw_c) = f(h, w)
    assert float(loss) == pytest.approx(float(loss_c), rel=1e-5)
    assert _rel(dh, dh_c) <= 1e-5 and _rel(dw, dw_c) <= 1e-5
    assert set(st_c) <= set(st)
    for k in st_c:
        assert float(st[k]) == pytest.approx(float(st_c[k]), rel=1e-5, abs=1e-7), k


def test_fully_masked_batch_and_frozen_head():
    """No valid token: loss 0, every gradient exactly 0, nothing NaN. And w not differentiated:
    dh alone equals the full run's dh."""
    h, w, tg, old, adv, mask = _inputs(50)
    none = jnp.zeros_like(mask)
    (loss, _), grads = _fused_vg(chunk_tokens=CHUNK)(h, w, old, adv, tg, none)
    assert float(loss) == 0.0 and all(bool(jnp.all(g == 0.0)) for g in grads)
    dh_only = jax.jit(jax.grad(lambda h: sapo_loss_fused_forward(
        h, w, tg, old, adv, mask, chunk_tokens=CHUNK)[0]))(h)
    _, (dh, _, _, _) = _fused_vg(chunk_tokens=CHUNK)(h, w, old, adv, tg, mask)
    np.testing.assert_allclose(np.asarray(dh_only), np.asarray(dh), rtol=1e-6, atol=1e-9)


def test_ce_loss_matches_float64_reference():
    h, w, tg, _, _, mask = _inputs(60, b=3, t=11)
    f = jax.jit(jax.value_and_grad(lambda h, w: ce_loss_fused_forward(
        h, w, tg, mask, entropy_coef=0.1, chunk_tokens=CHUNK), argnums=(0, 1), has_aux=True))
    (loss, st), (dh, dw) = f(h, w)
    loss_r, lp_r, en_r, (dh_r, dw_r, _, _) = _reference64(
        h, w, tg, jnp.zeros(tg.shape), jnp.zeros(tg.shape[:1]), mask, 0.1, loss="ce")
    assert abs(float(loss) - loss_r) <= 1e-5 * abs(loss_r)
    assert _rel(dh, dh_r) <= 1e-5 and _rel(dw, dw_r) <= 1e-5
    assert float(st["n_valid_tokens"]) == float(np.asarray(mask).sum())


# ----------------------------------------------------------------------------------------------
# Structure: 3 matmuls, no [N, V] buffer, bounded scratch
# ----------------------------------------------------------------------------------------------

def _subjaxprs(v):
    if hasattr(v, "eqns"):
        yield v
    elif hasattr(v, "jaxpr") and hasattr(v.jaxpr, "eqns"):
        yield v.jaxpr
    elif isinstance(v, (tuple, list)):
        for x in v:
            yield from _subjaxprs(x)


def _dot_eqns(jaxpr):
    """Every dot_general equation of a jaxpr, sub-jaxprs (scan bodies, custom rules) included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            yield eqn
        for v in eqn.params.values():
            for j in _subjaxprs(v):
                yield from _dot_eqns(j)


def _count_dots(jaxpr):
    return sum(1 for _ in _dot_eqns(jaxpr))


def _struct_inputs(n_seq=12, t=16, d=40, v=256):
    return _inputs(70, b=n_seq, t=t, d=d, v=v)


def test_three_matmuls_versus_four():
    """value_and_grad w.r.t. (h, w): 3 dot_generals here (logits, dh, dw), 4 in the recompute path
    (logits, then logits again + dh + dw in the backward); 2 with a frozen head. V = 256 is a
    multiple of the recompute path's chunk, so neither has a tail chunk adding copies."""
    h, w, tg, old, adv, mask = _struct_inputs()
    fused = lambda h, w: sapo_loss_fused_forward(h, w, tg, old, adv, mask, chunk_tokens=32)[0]  # noqa: E731
    recompute = lambda h, w: sapo_loss_fused(h, w, tg, old, adv, mask, impl="chunked", config=LCFG)  # noqa: E731
    count = lambda f, argnums=(0, 1): _count_dots(  # noqa: E731
        jax.make_jaxpr(jax.value_and_grad(f, argnums=argnums))(h, w).jaxpr)
    assert count(fused) == 3
    assert count(recompute) == 4
    assert count(fused, argnums=0) == 2
    hlo = jax.jit(jax.value_and_grad(fused, argnums=(0, 1))).lower(h, w).as_text()
    assert hlo.count("stablehlo.dot_general") == 3


def _jaxprs(jaxpr):
    yield jaxpr
    for eqn in jaxpr.eqns:
        for v in eqn.params.values():
            for j in _subjaxprs(v):
                yield from _jaxprs(j)


@pytest.mark.parametrize("accum", [None, "float32"])
def test_one_tile_dw_update_is_a_gemm_accumulate(accum):
    """chunk_vocab >= V: each chunk's dw update is ``dw + dot(h_c, dz)`` with the dot already in
    the accumulator's dtype and no loop, slice or convert in between -- the pattern XLA's GPU
    GEMM rewriter turns into one GEMM accumulating into dw (beta = 1), with no [D, V] temporary."""
    h, w, tg, old, adv, mask = _struct_inputs()
    h, w = h.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    d, v = w.shape
    f = lambda h, w: sapo_loss_fused_forward(h, w, tg, old, adv, mask, chunk_tokens=32,  # noqa: E731
                                             chunk_vocab=v, dw_accum_dtype=accum)[0]
    found = []
    for jx in _jaxprs(jax.make_jaxpr(jax.grad(f, argnums=(0, 1)))(h, w).jaxpr):
        for eqn in jx.eqns:
            if eqn.primitive.name == "dot_general" and eqn.outvars[0].aval.shape == (d, v):
                made_here = {o for e in jx.eqns for o in e.outvars}
                users = [e for e in jx.eqns if eqn.outvars[0] in e.invars]
                found.append([(e.primitive.name, e.outvars[0].aval.dtype,
                               # the other addend is the loop's dw carry itself, not a slice of it
                               all(x is eqn.outvars[0] or x not in made_here for x in e.invars))
                              for e in users])
    acc = jnp.dtype(accum or jnp.bfloat16)
    assert found == [[("add", acc, True)]], found


_SHAPE = re.compile(r"\b(?:f32|bf16|f16|f64|s32|pred)\[([0-9,]*)\]")


def _shapes(hlo_text):
    return [tuple(int(x) for x in m.group(1).split(",") if x) for m in _SHAPE.finditer(hlo_text)]


def test_no_tokens_by_vocab_buffer_in_compiled_hlo():
    """No compiled buffer has both the N and the V dimension, nor N * V / 2 elements; the naive
    reference composition (control) does."""
    h, w, tg, old, adv, mask = _struct_inputs(n_seq=12, t=16, d=40, v=250)     # N = 192, V = 250
    n, v = 192, 250

    def big(hlo):
        return [s for s in _shapes(hlo) if (n in s and v in s) or int(np.prod(s)) >= n * v // 2]

    fused = lambda h, w: sapo_loss_fused_forward(h, w, tg, old, adv, mask, chunk_tokens=32)[0]  # noqa: E731
    hlo = jax.jit(jax.value_and_grad(fused, argnums=(0, 1))).lower(h, w).compile().as_text()
    assert not big(hlo), big(hlo)[:5]
    naive = lambda h, w: sapo_loss_fused(h, w, tg, old, adv, mask, impl="reference")  # noqa: E731
    hlo_naive = jax.jit(jax.value_and_grad(naive, argnums=(0, 1))).lower(h, w).compile().as_text()
    assert big(hlo_naive)


def test_peak_scratch_is_a_tenth_of_the_logits():
    """Compiled (not run: abstract inputs) at the production shape N = D = 4096, V = 151,936 in
    float32 with the default chunks: XLA's temp bytes of value_and_grad w.r.t. (h, w) stay below
    1/10 of the naive [N, V] float32 logits (2.49 GB); the recompute path's are above."""
    b, t, d, v = 64, 64, 4096, 151936
    sds = jax.ShapeDtypeStruct
    args = (sds((b, t, d), jnp.float32), sds((d, v), jnp.float32), sds((b, t), jnp.int32),
            sds((b, t), jnp.float32), sds((b,), jnp.float32), sds((b, t), jnp.bool_))

    def temp_bytes(f):
        compiled = jax.jit(jax.value_and_grad(f, argnums=(0, 1))).lower(*args).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    naive = b * t * v * 4
    fused = temp_bytes(lambda h, w, tg, old, adv, mask: sapo_loss_fused_forward(
        h, w, tg, old, adv, mask)[0])
    assert 0 < fused < naive / 10, (fused, naive)
    recompute = temp_bytes(lambda h, w, tg, old, adv, mask: sapo_loss_fused(
        h, w, tg, old, adv, mask, impl="chunked"))
    assert recompute > naive / 10, (recompute, naive)


# ----------------------------------------------------------------------------------------------
# Sharding
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("check_vma", [True, False])
def test_shard_map_batch_and_vocab_sharded(check_vma):
    """8 devices as 4 (sequences, batch_axis) x 2 (vocabulary, vocab_axis): equals the unsharded op."""
    h, w, tg, old, adv, mask = _inputs(80, b=8, t=5, v=250)
    mesh = jax.make_mesh((4, 2), ("data", "vocab"), axis_types=(AxisType.Auto,) * 2)

    def sharded(h, w, old, adv, tg, mask):
        body = lambda *a: sapo_loss_fused_forward(  # noqa: E731
            *a, entropy_coef=0.1, chunk_tokens=8, batch_axis="data", vocab_axis="vocab")[0]
        return jax.shard_map(
            lambda h, w, tg, old, adv, mask: body(h, w, tg, old, adv, mask), mesh=mesh,
            in_specs=(P("data"), P(None, "vocab"), P("data"), P("data"), P("data"), P("data")),
            out_specs=P(), check_vma=check_vma)(h, w, tg, old, adv, mask)

    def plain(h, w, old, adv, tg, mask):
        return sapo_loss_fused_forward(h, w, tg, old, adv, mask, entropy_coef=0.1, chunk_tokens=8)[0]

    vg = lambda f: jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3)))(h, w, old, adv, tg, mask)  # noqa: E731
    (loss, grads), (loss_u, grads_u) = vg(sharded), vg(plain)
    assert float(loss) == pytest.approx(float(loss_u), rel=1e-5)
    for g, g_u in zip(grads, grads_u):
        assert _rel(g, g_u) <= 1e-5


def test_mesh_argument_trainer_layout():
    """mesh= runs shard_map itself: the trainer's (data=2, fsdp=2, tensor=2) mesh with explicit axes,
    tokens over (data, fsdp), the vocabulary over tensor. SAPO and CE equal the unsharded op."""
    from jax.sharding import Mesh
    h, w, tg, old, adv, mask = _inputs(85, b=4, t=6, v=250)
    mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"),
                axis_types=(AxisType.Explicit,) * 3)
    kw = dict(chunk_tokens=4, vocab_axis="tensor", mesh=mesh, token_axis=("data", "fsdp"))

    def both(h, w, **kw):
        sapo, st = sapo_loss_fused_forward(h, w, tg, old, adv, mask, **kw)
        ce, _ = ce_loss_fused_forward(h, w, tg, mask, **kw)
        return sapo + 0.5 * ce, st["entropy_mean"]

    vg = lambda **kw: jax.jit(jax.value_and_grad(  # noqa: E731
        lambda h, w: both(h, w, **kw), argnums=(0, 1), has_aux=True))(h, w)
    (loss, ent), grads = vg(**kw)
    (loss_u, ent_u), grads_u = vg(chunk_tokens=4)
    assert float(loss) == pytest.approx(float(loss_u), rel=1e-5)
    assert float(ent) == pytest.approx(float(ent_u), rel=1e-5)
    for g, g_u in zip(grads, grads_u):
        assert _rel(g, g_u) <= 1e-5


def test_jit_with_fsdp_sharded_inputs():
    """No shard_map: plain jit with h and w sharded over the hidden dimension (the FSDP "embed"
    rule, D = 40 over 8 devices) gives the same values and gradients."""
    h, w, tg, old, adv, mask = _inputs(90)
    mesh = jax.make_mesh((8,), ("fsdp",), axis_types=(AxisType.Auto,))
    hs = jax.device_put(h, NamedSharding(mesh, P(None, None, "fsdp")))
    ws = jax.device_put(w, NamedSharding(mesh, P("fsdp", None)))
    vg = _fused_vg(chunk_tokens=CHUNK)
    (loss, _), grads = vg(hs, ws, old, adv, tg, mask)
    (loss_u, _), grads_u = vg(h, w, old, adv, tg, mask)
    assert float(loss) == pytest.approx(float(loss_u), rel=1e-5)
    for g, g_u in zip(grads, grads_u):
        assert _rel(g, g_u) <= 1e-5


def test_shape_validation_and_default_chunks():
    assert [auto_chunk_tokens(n) for n in (4096, 1024, 4160, 35, 5)] == [256, 64, 208, 8, 5]
    assert [auto_chunk_vocab(v) for v in (151936, 250, 100)] == [1192, 128, 100]
    h, w, tg, old, adv, mask = _inputs(95)
    with pytest.raises(ValueError):
        sapo_loss_fused_forward(h, w[:-1], tg, old, adv, mask)
    with pytest.raises(ValueError):
        sapo_loss_fused_forward(h, w, tg, old, adv[:-1], mask)
    with pytest.raises(ValueError):
        sapo_loss_fused_forward(h, w, tg.reshape(-1), old, adv, mask)
