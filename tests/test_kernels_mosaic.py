"""Mosaic GPU fused log-prob/entropy: the interpreter against the reference, and the CUDA lowering.

The kernels run in Mosaic GPU's CPU interpreter (simulated warpgroup, SMEM, TMA, barriers) with
bfloat16 inputs; values are compared with the float32 reference evaluated on the same (upcast)
inputs, so the float32 accumulation is checked to 1e-5, and the bfloat16 gradients to 2e-2.
The lowering tests compile nothing: they run the Mosaic GPU lowering for platform "cuda" on the
CPU host (register layouts, SMEM budget, TMA descriptors) at the production shape.
"""
import contextlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

from hopchain_jax.kernels import (DEFAULT_CONFIG, LogprobConfig, fused_logprob_entropy, logprob_entropy_mosaic,
                                  logprob_entropy_pallas, logprob_entropy_reference, resolve_impl,
                                  sapo_loss_fused, sharded_fused_logprob_entropy)

# block_v=64 so V=250 has 4 tiles: 2 splits of 3 -> 2 surplus (masked) tiles; chunk_v=128 gives the
# backward one full chunk plus a 122-wide tail. block_n=64 (one warpgroup), block_k=64 (128-B swizzle).
CFG = LogprobConfig(block_n=64, block_v=64, block_k=64, tiles_per_program=3, chunk_v=128,
                    num_stages=2)


def _mosaic(cfg=CFG):
    return lambda h, w, t: logprob_entropy_mosaic(h, w, t, config=cfg, interpret=True)


def _rel(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _inputs(seed, n, d, v, w_scale=0.3):
    rng = np.random.default_rng(seed)
    h = jnp.asarray(rng.standard_normal((n, d)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((d, v)) * w_scale, jnp.bfloat16)
    t = jnp.asarray(rng.integers(0, v, n), jnp.int32)
    g = [jnp.asarray(rng.standard_normal(n), jnp.float32) for _ in range(2)]
    return h, w, t, g[0], g[1]


def _value_and_grads(fn, h, w, t, g_lp, g_h):
    def f(h, w):
        lp, en = fn(h, w, t)
        return jnp.sum(lp * g_lp) + jnp.sum(en * g_h), (lp, en)
    (_, (lp, en)), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(h, w)
    return lp, en, grads


def _f32(x):
    return x.astype(jnp.float32)


# (96, 96, 250): N and D padded to 128, ragged V with surplus tiles and a backward tail chunk.
# (64, 128, 256): everything divides.
@pytest.mark.parametrize("seed,shape", [(1, (96, 96, 250)), (2, (64, 128, 256))])
def test_matches_reference(seed, shape):
    h, w, t, g_lp, g_h = _inputs(seed, *shape)
    lp, en, (dh, dw) = _value_and_grads(_mosaic(), h, w, t, g_lp, g_h)
    lp_r, en_r, (dh_r, dw_r) = _value_and_grads(logprob_entropy_reference, _f32(h), _f32(w), t,
                                                g_lp, g_h)
    assert lp.dtype == jnp.float32 and dh.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16
    assert _rel(lp, lp_r) <= 1e-5, _rel(lp, lp_r)
    assert _rel(en, en_r) <= 1e-5, _rel(en, en_r)
    assert _rel(dh, dh_r) <= 2e-2, _rel(dh, dh_r)
    assert _rel(dw, dw_r) <= 2e-2, _rel(dw, dw_r)
    assert bool(jnp.all(lp <= 0.0)) and bool(jnp.all(en >= 0.0))


def test_all_negative_logits():
    """Every logit below -104 (exp underflows in float32): the running max must start at -inf."""
    rng = np.random.default_rng(3)
    n, d, v = 64, 64, 200
    h = jnp.asarray(np.abs(rng.standard_normal((n, d))) * 0.5 + 1.0, jnp.bfloat16)
    w = jnp.asarray(-(np.abs(rng.standard_normal((d, v))) + 3.0), jnp.bfloat16)
    t = jnp.asarray(rng.integers(0, v, n), jnp.int32)
    z = np.asarray(_f32(h), np.float64) @ np.asarray(_f32(w), np.float64)
    assert z.max() < -104.0
    lse = z.max(1) + np.log(np.exp(z - z.max(1, keepdims=True)).sum(1))
    p = np.exp(z - lse[:, None])
    lp, en = jax.jit(_mosaic())(h, w, t)
    assert bool(jnp.all(jnp.isfinite(lp))) and bool(jnp.all(jnp.isfinite(en)))
    assert _rel(lp, z[np.arange(n), np.asarray(t)] - lse) <= 1e-5
    assert _rel(en, lse - (p * z).sum(1)) <= 1e-5


def test_symbolic_zero_paths():
    """logp-only cotangent (the dz kernel without the entropy term), frozen w (no dw), h only."""
    h, w, t, g_lp, _ = _inputs(4, 64, 64, 200)
    loss = lambda fn: (lambda h, w: jnp.sum(fn(h, w, t)[0] * g_lp))  # noqa: E731
    ref_dh, ref_dw = jax.grad(loss(logprob_entropy_reference), argnums=(0, 1))(_f32(h), _f32(w))
    assert _rel(jax.jit(jax.grad(loss(_mosaic()), argnums=0))(h, w), ref_dh) <= 2e-2
    assert _rel(jax.jit(jax.grad(loss(_mosaic()), argnums=1))(h, w), ref_dw) <= 2e-2


def test_sapo_fused_through_mosaic():
    """The trainer's entry (SAPO gradient fed in as the log-prob cotangent) on the Mosaic kernels."""
    rng = np.random.default_rng(5)
    b, tt, d, v = 2, 32, 64, 200
    h = jnp.asarray(rng.standard_normal((b, tt, d)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((d, v)) * 0.3, jnp.bfloat16)
    targets = jnp.asarray(rng.integers(0, v, (b, tt)), jnp.int32)
    mask = jnp.asarray(rng.random((b, tt)) < 0.8, jnp.float32)
    adv = jnp.asarray([1.0, -0.5], jnp.float32)
    old = logprob_entropy_reference(_f32(h), _f32(w), targets)[0] + 0.05 * jnp.asarray(
        rng.standard_normal((b, tt)), jnp.float32)

    def grads(impl, h, w):
        f = lambda h, w: sapo_loss_fused(h, w, targets, old, adv, mask, impl=impl,  # noqa: E731
                                         config=CFG if impl != "reference" else None)
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(h, w)

    loss, (dh, dw) = grads("mosaic_interpret", h, w)
    loss_r, (dh_r, dw_r) = grads("reference", _f32(h), _f32(w))
    assert abs(float(loss) - float(loss_r)) <= 1e-5 * max(abs(float(loss_r)), 1.0)
    assert _rel(dh, dh_r) <= 2e-2 and _rel(dw, dw_r) <= 2e-2


def _abstract_gpu(device_kind="NVIDIA H200"):
    """Context that makes ``device_kind`` (platform "cuda") the target of tracing and lowering.

    JAX 0.11's Triton lowering asks for the GPU's compute capability (``plgpu.get_gpu_info()``),
    which on a CPU host comes from the abstract device of the current abstract mesh; JAX 0.10
    falls back to sm_90 by itself and accepts the same context.
    """
    from jax.sharding import AbstractDevice, AbstractMesh, use_abstract_mesh
    try:
        device = AbstractDevice(device_kind=device_kind, num_cores=None, platform="cuda")
        mesh = AbstractMesh((1,), ("x",), (AxisType.Explicit,), abstract_device=device)
    except TypeError:  # a JAX without abstract devices: nothing to declare
        return contextlib.nullcontext()
    return use_abstract_mesh(mesh)


def _lowered_custom_calls(fn, n, d, v, abstract_gpu=False):
    """Lower value_and_grad of ``fn`` for CUDA on this (CPU) host; return the custom-call targets.

    abstract_gpu: trace and lower under :func:`_abstract_gpu` (needed by the Triton lowering).
    """
    h = jax.ShapeDtypeStruct((n, d), jnp.bfloat16)
    w = jax.ShapeDtypeStruct((d, v), jnp.bfloat16)
    t = jax.ShapeDtypeStruct((n,), jnp.int32)

    def f(h, w, t):
        lp, en = fn(h, w, t)
        return jnp.sum(lp) + jnp.sum(en)

    with _abstract_gpu() if abstract_gpu else contextlib.nullcontext():
        lowered = jax.jit(jax.value_and_grad(f, argnums=(0, 1))).trace(h, w, t).lower(
            lowering_platforms=("cuda",))
        text = lowered.as_text()
    return re.findall(r"custom_call @([\w$.]+)", text)


def test_mosaic_lowers_for_cuda_at_production_shape():
    """N=4096, D=4096, V=151,936 (Qwen), default tiles: the forward and dz kernels lower through
    Mosaic GPU (layouts, TMA, SMEM within 227 KiB) for an sm_90 target."""
    calls = _lowered_custom_calls(
        lambda h, w, t: logprob_entropy_mosaic(h, w, t, config=DEFAULT_CONFIG), 4096, 4096, 151_936)
    # forward statistics, dz in the backward's chunk scan (9 x 16,384) and dz of the 4,480 tail
    assert calls == ["mosaic_gpu_v2"] * 3, calls


def test_triton_lowers_for_cuda_at_production_shape():
    """The Triton kernels lower for an H200 described by an abstract device (no GPU on the host;
    JAX 0.11 refuses the Triton lowering without one: "No supported GPU devices found")."""
    calls = _lowered_custom_calls(
        lambda h, w, t: logprob_entropy_pallas(h, w, t, config=DEFAULT_CONFIG), 4096, 4096, 151_936,
        abstract_gpu=True)
    assert len(calls) == 3 and all("triton" in c for c in calls), calls
    from jax.experimental.pallas import triton as pl_triton
    if hasattr(pl_triton, "get_gpu_info"):   # JAX >= 0.11: the lowering's source of the target
        with _abstract_gpu():
            assert pl_triton.get_gpu_info().compute_capability == 90


def test_shard_map_vocab_sharded_lowers_for_cuda(monkeypatch):
    """shard_map over 2 x 4 devices (tokens over 'data', w vocabulary-sharded over 'vocab') with
    manual-axis type checking on: the kernels' outputs carry the right varying axes and the whole
    differentiated op lowers for CUDA. (The numerics of the sharded custom VJP are shared with the
    other kernels and tested in test_kernels_logprob.py; Mosaic GPU's interpreter cannot run
    under shard_map on simulated CPU devices: it models a multi-GPU kernel with a barrier across
    all devices, which XLA:CPU's serialized callbacks never reach.)"""
    import hopchain_jax.kernels.logprob as lpm
    monkeypatch.setattr(lpm, "current_platform", lambda: "gpu")
    mesh = jax.make_mesh((2, 4), ("data", "vocab"), axis_types=(AxisType.Explicit,) * 2)
    calls = _lowered_custom_calls(
        lambda h, w, t: sharded_fused_logprob_entropy(h, w, t, mesh, token_axis="data",
                                                      vocab_axis="vocab", impl="mosaic",
                                                      check_vma=True),
        256, 4096, 151_936)
    assert calls and set(calls) == {"mosaic_gpu_v2"}, calls


def test_smem_overflow_is_caught_by_lowering():
    too_deep = LogprobConfig(block_n=64, block_v=256, block_k=64, num_stages=20, chunk_v=1024)
    with pytest.raises(Exception, match="shared memory"):
        _lowered_custom_calls(lambda h, w, t: logprob_entropy_mosaic(h, w, t, config=too_deep),
                              128, 4096, 1024)


def test_errors_and_dispatch():
    h, w, t, _, _ = _inputs(7, 64, 64, 100)
    with pytest.raises(ValueError, match="bfloat16"):
        logprob_entropy_mosaic(_f32(h), _f32(w), t, interpret=True)
    with pytest.raises(ValueError, match="block_n"):
        logprob_entropy_mosaic(h, w, t, config=LogprobConfig(block_n=32), interpret=True)
    with pytest.raises(ValueError, match="block_k"):
        logprob_entropy_mosaic(h, w, t, config=LogprobConfig(block_k=256), interpret=True)
    with pytest.raises(ValueError, match="block_v"):
        logprob_entropy_mosaic(h, w, t, config=LogprobConfig(block_v=512, chunk_v=1024),
                               interpret=True)
    assert resolve_impl("mosaic_interpret", None, "cpu") == ("mosaic", True)
    assert resolve_impl("mosaic", None, "gpu") == ("mosaic", False)
    with pytest.raises(ValueError, match="mosaic_interpret"):
        resolve_impl("mosaic", None, "cpu")
    with pytest.raises(ValueError, match="mosaic_interpret"):
        fused_logprob_entropy(h, w, t, impl="mosaic")


def test_auto_probe_passes_in_interpreter():
    import hopchain_jax.kernels.logprob as lpm
    try:
        assert lpm._kernel_usable("mosaic", "cpu", interpret=True)
    finally:
        lpm._kernel_usable.cache_clear()


def test_auto_order_on_a_hopper(monkeypatch):
    """'auto' tries Mosaic GPU first on a Hopper for one 16-bit dtype, Triton otherwise, then chunked."""
    import hopchain_jax.kernels.logprob as lpm
    tried = []
    monkeypatch.setattr(lpm, "_is_hopper", lambda: True)
    monkeypatch.setattr(lpm, "_kernel_usable", lambda kind, platform: tried.append(kind) or False)
    assert lpm.auto_kernel("gpu", jnp.bfloat16, jnp.bfloat16) == "chunked"
    assert tried == ["mosaic", "pallas"]
    tried.clear()
    assert lpm.auto_kernel("gpu", jnp.float32) == "chunked" and tried == ["pallas"]
    tried.clear()
    assert lpm.auto_kernel("gpu", jnp.bfloat16, jnp.float32) == "chunked" and tried == ["pallas"]
    monkeypatch.setattr(lpm, "_kernel_usable", lambda kind, platform: kind == "mosaic")
    assert lpm.auto_kernel("gpu", jnp.bfloat16) == "mosaic"
    assert lpm.auto_kernel("tpu", jnp.bfloat16) == "chunked"   # no Mosaic GPU try on a TPU
