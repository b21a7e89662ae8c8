"""Measured choice for impl="auto" (kernels/tuned.json) and the configurable Mosaic GPU forward tile.

The record is faked here (a CPU pretending to be a GPU, its device kind "cpu"); the Mosaic
forward tiles run in Mosaic GPU's CPU interpreter and are lowered for CUDA at the production shape.
"""
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hopchain_jax.kernels.logprob as lpm
from hopchain_jax.kernels import LogprobConfig, logprob_entropy_mosaic, logprob_entropy_reference
from hopchain_jax.kernels import dispatch

KIND = str(jax.devices()[0].device_kind)


@pytest.fixture
def record(tmp_path, monkeypatch):
    """A fresh record file named by $HOPCHAIN_KERNELS_TUNED; returns a writer of {impl: ms}."""
    path = tmp_path / "tuned.json"
    monkeypatch.setenv(dispatch.TUNED_ENV, str(path))

    def write(ms, device_kind=KIND, dtype="bfloat16", jax_version=None):
        path.unlink(missing_ok=True)
        dispatch.record_tuned(path, "gpu", device_kind, dtype, ms, shape=[4096, 4096, 151_936])
        if jax_version:
            data = json.loads(path.read_text())
            for rec in data["records"].values():
                rec["jax"] = jax_version
            path.write_text(json.dumps(data))
        return path
    return write


def _probe_log(monkeypatch, usable=(), hopper=True):
    """Replace the one-time probe: kinds in ``usable`` pass; returns the list of kinds probed."""
    tried = []
    monkeypatch.setattr(lpm, "_is_hopper", lambda: hopper)
    monkeypatch.setattr(lpm, "_kernel_usable",
                        lambda kind, platform: tried.append(kind) or kind in usable)
    return tried


def test_auto_follows_the_measured_order(record, monkeypatch):
    record({"pallas": 5.0, "chunked": 3.0, "mosaic": 4.0})
    assert dispatch.tuned_order("gpu", KIND, jnp.bfloat16) == ("chunked", "mosaic", "pallas")
    tried = _probe_log(monkeypatch, usable=("mosaic", "pallas"))
    assert lpm.auto_kernel("gpu", jnp.bfloat16, jnp.bfloat16) == "chunked" and tried == []

    record({"pallas": 5.0, "chunked": 30.0, "mosaic": 6.0})
    tried = _probe_log(monkeypatch, usable=("mosaic",))
    assert lpm.auto_kernel("gpu", jnp.bfloat16) == "mosaic" and tried == ["pallas", "mosaic"]
    tried = _probe_log(monkeypatch, usable=("mosaic",), hopper=False)   # no mosaic off Hopper
    assert lpm.auto_kernel("gpu", jnp.bfloat16) == "chunked" and tried == ["pallas"]


def test_auto_keeps_its_prior_without_an_applicable_record(record, monkeypatch):
    prior = ["mosaic", "pallas"]
    record({"chunked": 1.0}, jax_version="0.1.0")          # another JAX minor version
    assert dispatch.tuned_order("gpu", KIND, jnp.bfloat16) is None
    tried = _probe_log(monkeypatch)
    assert lpm.auto_kernel("gpu", jnp.bfloat16) == "chunked" and tried == prior
    record({"chunked": 1.0}, device_kind="NVIDIA H100")      # another device
    tried = _probe_log(monkeypatch)
    assert lpm.auto_kernel("gpu", jnp.bfloat16) == "chunked" and tried == prior
    record({"chunked": 1.0})                                  # bfloat16 record, float32 call
    tried = _probe_log(monkeypatch)
    assert lpm.auto_kernel("gpu", jnp.float32) == "chunked" and tried == ["pallas"]


def test_record_file_format(tmp_path, monkeypatch):
    monkeypatch.setenv(dispatch.TUNED_ENV, str(tmp_path / "absent.json"))
    assert dispatch.load_tuned() == {} and dispatch.tuned_order("gpu", KIND, "bfloat16") is None
    path = tmp_path / "t.json"
    dispatch.record_tuned(path, "gpu", "A", "bfloat16", {"mosaic": 2.0, "naive": 0.1}, mode="m")
    dispatch.record_tuned(path, "gpu", "B", "bfloat16", {"pallas": 1.0, "chunked": 3.0})
    recs = json.loads(path.read_text())["records"]
    assert recs["gpu|A|bfloat16"]["order"] == ["mosaic"] and recs["gpu|A|bfloat16"]["mode"] == "m"
    assert recs["gpu|B|bfloat16"]["order"] == ["pallas", "chunked"]
    assert recs["gpu|B|bfloat16"]["jax"] == jax.__version__
    with pytest.raises(ValueError, match="no timings"):
        dispatch.record_tuned(path, "gpu", "C", "bfloat16", {"naive": 1.0})
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="records"):
        dispatch.load_tuned(tmp_path / "bad.json")
    with pytest.warns(RuntimeWarning, match="ignoring"):   # auto falls back to its prior
        assert dispatch.tuned_order("gpu", KIND, "bfloat16", tmp_path / "bad.json") is None


def test_auto_end_to_end_with_a_record(record, monkeypatch):
    """impl="auto" on a (pretend) GPU whose record ranks chunked first: no probe, no warning,
    the chunked op's values and gradients."""
    record({"chunked": 1.0, "pallas": 2.0})
    monkeypatch.setattr(lpm, "current_platform", lambda: "gpu")
    tried = _probe_log(monkeypatch, usable=("pallas",))
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.standard_normal((16, 32)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((32, 300)), jnp.bfloat16)
    t = jnp.asarray(rng.integers(0, 300, 16), jnp.int32)
    f = lambda fn: jax.jit(jax.grad(lambda h: jnp.sum(fn(h, w, t)[0])))  # noqa: E731
    got = f(lambda h, w, t: lpm.fused_logprob_entropy(h, w, t, impl="auto"))(h)
    want = f(lambda h, w, t: lpm.logprob_entropy_chunked(h, w, t))(h)
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
    assert tried == []


# ------------------------------------------------------------------------------------------------
# Mosaic GPU forward tile
# ------------------------------------------------------------------------------------------------

def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


@pytest.mark.parametrize("tile", [dict(mosaic_fwd_block_n=64, mosaic_fwd_block_v=64,
                                       mosaic_fwd_block_k=32, mosaic_fwd_stages=2),
                                  dict()])   # the default 128 x 128 x 64, 4 stages
def test_mosaic_forward_tiles_in_the_interpreter(tile):
    """Small tile: V=250 is 4 tiles of 64, 2 splits of 3 -> surplus (masked) tiles, K in 3 slabs
    of 32; default tile: N=96 and V=250 padded to one 128 x 256 block pair."""
    cfg = LogprobConfig(block_n=64, block_v=64, block_k=64, tiles_per_program=3, chunk_v=128,
                        **tile)
    rng = np.random.default_rng(4)
    h = jnp.asarray(rng.standard_normal((96, 96)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((96, 250)) * 0.4, jnp.bfloat16)
    t = jnp.asarray(rng.integers(0, 250, 96), jnp.int32)
    lp, en = jax.jit(lambda h, w, t: logprob_entropy_mosaic(h, w, t, config=cfg, interpret=True))(
        h, w, t)
    lp_r, en_r = logprob_entropy_reference(h.astype(jnp.float32), w.astype(jnp.float32), t)
    assert _rel(lp, lp_r) <= 1e-5 and _rel(en, en_r) <= 1e-5


def _lower_forward(cfg, n=4096, d=4096, v=151_936):
    """Custom-call targets of the Mosaic forward lowered for CUDA on this host."""
    args = (jax.ShapeDtypeStruct((n, d), jnp.bfloat16), jax.ShapeDtypeStruct((d, v), jnp.bfloat16),
            jax.ShapeDtypeStruct((n,), jnp.int32))
    lowered = jax.jit(lambda h, w, t: logprob_entropy_mosaic(h, w, t, config=cfg)).trace(
        *args).lower(lowering_platforms=("cuda",))
    return re.findall(r"custom_call @([\w$.]+)", lowered.as_text())


def test_mosaic_forward_tiles_lower_for_cuda():
    """Both one-warpgroup tiles lower at the production shape; a pipeline deeper than SMEM is
    caught by the lowering (so mosaic_fwd_stages reaches the kernel)."""
    assert _lower_forward(LogprobConfig()) == ["mosaic_gpu_v2"]
    wide = LogprobConfig(mosaic_fwd_block_n=64, mosaic_fwd_block_v=256, mosaic_fwd_stages=4)
    assert _lower_forward(wide) == ["mosaic_gpu_v2"]
    too_deep = LogprobConfig(mosaic_fwd_block_n=64, mosaic_fwd_block_v=256, mosaic_fwd_stages=8)
    with pytest.raises(Exception, match="shared memory"):
        _lower_forward(too_deep, n=128, v=1024)


def test_mosaic_forward_tile_validation():
    h = jnp.zeros((64, 64), jnp.bfloat16)
    w = jnp.zeros((64, 100), jnp.bfloat16)
    t = jnp.zeros((64,), jnp.int32)
    for bad, match in ((dict(mosaic_fwd_block_n=128, mosaic_fwd_block_v=256), "accumulator"),
                       (dict(mosaic_fwd_block_n=32), "mosaic_fwd_block_n"),
                       (dict(mosaic_fwd_block_k=128), "mosaic_fwd_block_k"),
                       (dict(mosaic_fwd_block_v=512), "mosaic_fwd_block_v")):
        with pytest.raises(ValueError, match=match):
            logprob_entropy_mosaic(h, w, t, config=LogprobConfig(**bad), interpret=True)
    for bad in (dict(mosaic_fwd_block_v=96), dict(mosaic_fwd_stages=0)):
        with pytest.raises(ValueError):
            LogprobConfig(**bad)
    assert lpm.mosaic_tile_budget(128, 128, 64, 4) == dict(
        flop_per_l2_byte=64.0, acc_regs_per_thread=128, smem_bytes=4 * 256 * 64 * 2)
    assert round(lpm.mosaic_tile_budget(64, 128, 64, 3)["flop_per_l2_byte"], 1) == 42.7
