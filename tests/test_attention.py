"""Flash attention (hopchain_jax.models.attention) against the textbook reference.

Masks come only from per-token ids: segments (-1 = padding) and, for causal attention, positions.
Shapes: q [B, T, H, D]; k, v [B, S, KV, D]; ids [B, T] / [B, S].
"""
import re
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hopchain_jax.models.attention import attention

SEEDS = (0, 1, 2)


def _qkv(rng, b, t, s, h, kv, d, dtype=jnp.float32):
    q = rng.normal(size=(b, t, h, d)).astype(np.float32)
    k = rng.normal(size=(b, s, kv, d)).astype(np.float32)
    v = rng.normal(size=(b, s, kv, d)).astype(np.float32)
    return tuple(jnp.asarray(x, dtype) for x in (q, k, v))


def _ids(*rows):
    return jnp.asarray(np.array(rows), jnp.int32)


def _case(name, rng):
    """Returns (q, k, v, ids-kwargs, block_k) for one masking scenario; inputs are fresh random."""
    if name == "causal_right_pad":  # decoder rows of lengths 11, 16, 7 padded to 16; S a multiple of block_k
        b, t, lens = 3, 16, (11, 16, 7)
        seg = _ids(*[[0 if i < n else -1 for i in range(t)] for n in lens])
        pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        return (*_qkv(rng, b, t, t, 4, 2, 8), dict(q_segment=seg, kv_segment=seg, q_pos=pos, kv_pos=pos,
                                                   causal=True), 8)
    if name == "causal_left_pad":  # left padding, positions counted from the first real token; S % block_k != 0
        b, t, lens = 2, 13, (9, 13)
        seg = _ids(*[[0 if i >= t - n else -1 for i in range(t)] for n in lens])
        pos = _ids(*[[max(i - (t - n), 0) for i in range(t)] for n in lens])
        return (*_qkv(rng, b, t, t, 4, 4, 8), dict(q_segment=seg, kv_segment=seg, q_pos=pos, kv_pos=pos,
                                                   causal=True), 4)
    if name == "causal_packed":  # several sequences per row, positions restart per sequence, trailing pads
        lens_rows = [(5, 7, 3, 4), (10, 6, 2)]
        segs, poss = [], []
        for lens in lens_rows:
            sg = sum(([j] * n for j, n in enumerate(lens)), [])
            ps = sum((list(range(n)) for n in lens), [])
            segs.append(sg + [-1] * (21 - len(sg)))
            poss.append(ps + [0] * (21 - len(ps)))
        seg, pos = _ids(*segs), _ids(*poss)
        return (*_qkv(rng, 2, 21, 21, 4, 2, 8), dict(q_segment=seg, kv_segment=seg, q_pos=pos, kv_pos=pos,
                                                     causal=True), 8)
    if name == "vision_segments":  # non-causal, one segment per image, some pads; no positions given
        seg = _ids([0] * 10 + [1] * 12 + [2] * 5 + [-1] * 3, [0] * 30)
        return (*_qkv(rng, 2, 30, 30, 4, 2, 8), dict(q_segment=seg, kv_segment=seg, causal=False), 8)
    if name == "short_s":  # S < block_k: one block of size S
        seg = _ids([0] * 5, [0] * 3 + [-1] * 2)
        pos = jnp.broadcast_to(jnp.arange(5, dtype=jnp.int32), (2, 5))
        return (*_qkv(rng, 2, 5, 5, 4, 2, 8), dict(q_segment=seg, kv_segment=seg, q_pos=pos, kv_pos=pos,
                                                   causal=True), 16)
    if name == "decode":  # T=1 against a 19-slot cache: kv_pos = slot, q_pos = current slot, unused slots -1
        b, s, cur = 3, 19, np.array([4, 18, 0])
        kv_seg = _ids(*[[0 if i <= c + 2 else -1 for i in range(s)] for c in cur])  # slots past cur: causal mask
        kv_pos = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
        return (*_qkv(rng, b, 1, s, 4, 2, 8), dict(q_segment=jnp.zeros((b, 1), jnp.int32), kv_segment=kv_seg,
                                                   q_pos=_ids(*cur[:, None]), kv_pos=kv_pos, causal=True), 8)
    if name == "prefill_chunk":  # T=5 new queries (slots 9..13) against a 17-slot cache, two sequences per row
        s = 17
        kv_seg = _ids([0] * 14 + [-1] * 3, [1] * 6 + [0] * 11)
        kv_pos = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (2, s))
        q_pos = jnp.broadcast_to(jnp.arange(9, 14, dtype=jnp.int32), (2, 5))
        return (*_qkv(rng, 2, 5, s, 2, 1, 8), dict(q_segment=_ids([0] * 5, [0] * 4 + [1]), kv_segment=kv_seg,
                                                   q_pos=q_pos, kv_pos=kv_pos, causal=True), 4)
    raise KeyError(name)


CASES = ("causal_right_pad", "causal_left_pad", "causal_packed", "vision_segments", "short_s", "decode",
         "prefill_chunk")


@partial(jax.jit, static_argnames=("impl", "block_k", "causal"))
def _fwd(q, k, v, ids, *, impl, block_k, causal):
    return attention(q, k, v, impl=impl, block_k=block_k, causal=causal, **ids)


@partial(jax.jit, static_argnames=("impl", "block_k", "causal"))
def _bwd(q, k, v, ct, ids, *, impl, block_k, causal):
    loss = lambda q, k, v: jnp.sum(_fwd(q, k, v, ids, impl=impl, block_k=block_k, causal=causal)
                                   .astype(jnp.float32) * ct)
    return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)


def _split(ids):
    ids = dict(ids)
    return ids, ids.pop("causal")


def _fn(impl, ids, block_k):
    """Jitted forward with the id arrays as arguments (one compilation per shape, shared across seeds)."""
    ids, causal = _split(ids)
    return lambda q, k, v: _fwd(q, k, v, ids, impl=impl, block_k=block_k, causal=causal)


def _grads(impl, ids, block_k, q, k, v, ct):
    """d/d(q, k, v) of sum(out * ct)."""
    ids, causal = _split(ids)
    return _bwd(q, k, v, ct, ids, impl=impl, block_k=block_k, causal=causal)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", CASES)
def test_forward_matches_reference(name, seed):
    q, k, v, ids, bk = _case(name, np.random.default_rng(seed))
    out = _fn("flash", ids, bk)(q, k, v)
    assert out.shape == q.shape and out.dtype == q.dtype
    np.testing.assert_allclose(out, _fn("reference", ids, bk)(q, k, v), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", CASES)
def test_grads_match_reference(name, seed):
    rng = np.random.default_rng(seed)
    q, k, v, ids, bk = _case(name, rng)
    ct = jnp.asarray(rng.normal(size=q.shape), jnp.float32)
    for got, want in zip(_grads("flash", ids, bk, q, k, v, ct), _grads("reference", ids, bk, q, k, v, ct)):
        assert np.isfinite(np.asarray(got)).all()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max() + 1))


@pytest.mark.parametrize("seed", SEEDS)
def test_fully_masked_rows_give_zero_output_and_grads(seed):
    rng = np.random.default_rng(seed)
    # query 0 of row 0 is a pad (segment -1); query 3 of row 1 belongs to segment 5, which has no keys;
    # row 1's query 0 sits at position 0 but every segment-0 key has position >= 1 (causal empties it).
    q, k, v = _qkv(rng, 2, 6, 9, 4, 2, 8)
    ids = dict(q_segment=_ids([-1, 0, 0, 0, 1, 1], [0, 0, 0, 5, 0, 0]),
               kv_segment=_ids([0, 0, 0, 1, 1, 1, -1, -1, -1], [0] * 9),
               q_pos=_ids([0, 1, 2, 3, 0, 1], [0, 1, 2, 3, 4, 5]),
               kv_pos=_ids([0, 1, 2, 0, 1, 2, 0, 0, 0], list(range(1, 10))), causal=True)
    masked = np.zeros((2, 6), bool)
    masked[0, 0] = masked[1, 3] = masked[1, 0] = True
    out = _fn("flash", ids, 4)(q, k, v)
    assert np.all(np.asarray(out)[masked] == 0)
    np.testing.assert_allclose(out, _fn("reference", ids, 4)(q, k, v), atol=1e-5)
    ct = jnp.asarray(rng.normal(size=q.shape), jnp.float32)
    dq, dk, dv = _grads("flash", ids, 4, q, k, v, ct)
    for g in (dq, dk, dv):
        assert np.isfinite(np.asarray(g)).all()
    assert np.all(np.asarray(dq)[masked] == 0)
    # only masked queries see nothing: zeroing every other cotangent row leaves dk = dv = 0
    dq, dk, dv = _grads("flash", ids, 4, q, k, v, ct * jnp.asarray(masked, jnp.float32)[:, :, None, None])
    assert not np.any(np.asarray(dq)) and not np.any(np.asarray(dk)) and not np.any(np.asarray(dv))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", ("causal_packed", "vision_segments", "decode"))
def test_bfloat16_close_to_float32_reference(name, seed):
    q, k, v, ids, bk = _case(name, np.random.default_rng(seed))
    qb, kb, vb = (x.astype(jnp.bfloat16) for x in (q, k, v))
    out = _fn("flash", ids, bk)(qb, kb, vb)
    assert out.dtype == jnp.bfloat16
    want = _fn("reference", ids, bk)(*(x.astype(jnp.float32) for x in (qb, kb, vb)))
    np.testing.assert_allclose(out.astype(jnp.float32), want, atol=2e-2, rtol=2e-2)
    grads = _grads("flash", ids, bk, qb, kb, vb, jnp.ones(q.shape, jnp.float32))
    assert all(g.dtype == jnp.bfloat16 and np.isfinite(np.asarray(g, np.float32)).all() for g in grads)


def _subjaxprs(value):
    """Jaxprs held in an equation parameter (scan/cond/custom_vjp/remat bodies), found by duck typing."""
    if hasattr(value, "eqns"):
        yield value
    elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
        yield value.jaxpr
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _subjaxprs(v)


def _all_shapes(jaxpr):
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            yield tuple(getattr(var.aval, "shape", ()))
        for param in eqn.params.values():
            for sub in _subjaxprs(param):
                yield from _all_shapes(sub)


def test_no_t_by_s_array_in_forward_or_backward():
    """T = S = 1024 and no other dim is 1024, so any [.., T, .., S, ..] array has two 1024 dims."""
    t = 1024
    q, k, v = _qkv(np.random.default_rng(0), 1, t, t, 2, 1, 8)
    seg = jnp.zeros((1, t), jnp.int32)
    pos = jnp.arange(t, dtype=jnp.int32)[None]
    ids = dict(q_segment=seg, kv_segment=seg, q_pos=pos, kv_pos=pos, causal=True)

    def grad_fn(impl):
        loss = lambda q, k, v: jnp.sum(attention(q, k, v, impl=impl, block_k=128, **ids) ** 2)
        return jax.grad(loss, argnums=(0, 1, 2))

    big = lambda shape: list(shape).count(t) >= 2
    assert any(big(s) for s in _all_shapes(jax.make_jaxpr(grad_fn("reference"))(q, k, v).jaxpr))  # check can fail
    shapes = list(_all_shapes(jax.make_jaxpr(grad_fn("flash"))(q, k, v).jaxpr))
    assert (1, 1, 2, t, 128) in shapes  # the per-block score tensor [B, KV, G, T, block_k]
    assert not [s for s in shapes if big(s)]
    hlo = jax.jit(grad_fn("flash")).lower(q, k, v).compile().as_text()
    hlo_shapes = [tuple(int(x) for x in m.split(",") if x) for m in re.findall(r"\[([0-9,]*)\]", hlo)]
    assert hlo_shapes and not [s for s in hlo_shapes if big(s)]


def test_sharded_batch_matches_unsharded():
    assert len(jax.devices()) == 8
    rng = np.random.default_rng(3)
    b, t = 8, 12
    q, k, v = _qkv(rng, b, t, t, 4, 2, 8)
    lens = rng.integers(1, t + 1, size=b)
    seg = jnp.asarray(np.where(np.arange(t)[None] < lens[:, None], 0, -1), jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    ct = jnp.asarray(rng.normal(size=q.shape), jnp.float32)

    def f(q, k, v, seg, pos, ct):
        loss = lambda q, k, v: jnp.sum(attention(q, k, v, q_segment=seg, kv_segment=seg, q_pos=pos, kv_pos=pos,
                                                 causal=True, block_k=8) * ct)
        return attention(q, k, v, q_segment=seg, kv_segment=seg, q_pos=pos, kv_pos=pos, causal=True, block_k=8), \
            jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    args = (q, k, v, seg, pos, ct)
    want = jax.jit(f)(*args)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded = [jax.device_put(x, NamedSharding(mesh, P("data"))) for x in args]
    got = jax.jit(f)(*sharded)
    assert got[0].sharding.spec[0] == "data"
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, atol=1e-6, rtol=1e-6)


def test_remat_and_scan_body():
    """jax.checkpoint around the call and a lax.scan over layers give the same grads as the plain call."""
    q, k, v, ids, bk = _case("causal_packed", np.random.default_rng(4))
    attn = lambda q, k, v: attention(q, k, v, block_k=bk, **ids)

    def layers(q, wrap):
        def body(x, _):
            return wrap(attn)(x, k, v) + x, None
        return jnp.sum(jax.lax.scan(body, q, None, length=2)[0] ** 2)

    plain = jax.jit(jax.grad(lambda q: layers(q, lambda f: f)))(q)
    remat = jax.jit(jax.grad(lambda q: layers(q, jax.checkpoint)))(q)
    ref = jax.jit(jax.grad(lambda q: jnp.sum(jax.lax.scan(
        lambda x, _: (attention(x, k, v, impl="reference", **ids) + x, None), q, None, length=2)[0] ** 2)))(q)
    np.testing.assert_allclose(plain, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(remat, plain, rtol=1e-6, atol=1e-6)
