"""benchmarks/memory_fit.py --small: AOT memory analysis of update / score / decode on 8 CPU devices.

The argument bytes memory_analysis reports are checked against real arrays placed by the library itself
(a real Updater and InferenceEngine on the tiny model, Updater.put_batch of zeros of the same shapes),
so the abstract construction in the benchmark is checked too; and the parameter + optimizer part of the
update's arguments must be ~1/8 of the global size (FSDP over 8 devices, not replication).
"""
import importlib.util
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("memory_fit", ROOT / "benchmarks" / "memory_fit.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["memory_fit"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def mf():
    assert jax.device_count() == 8, "tests/conftest.py sets 8 simulated devices"
    return _load()


@pytest.fixture(scope="module")
def small_rows(mf, tmp_path_factory):
    out = tmp_path_factory.mktemp("mf") / "small.json"
    rows = mf.main(["--small", "--programs", "update,score,decode,prefill,insert", "--json", str(out)])
    assert out.exists()
    return {r["program"]: r for r in rows}


def _dev0(tree) -> int:
    from hopchain_jax.models.sharding import per_device_bytes
    return per_device_bytes(tree).get(jax.devices()[0], 0)


def test_small_table(mf, small_rows):
    assert set(small_rows) == {"update", "score", "decode", "prefill", "insert"}
    for prog, r in small_rows.items():
        assert "error" not in r, r.get("error")
        assert r["argument_bytes"] > 0, prog
        assert r["total_bytes"] == r["argument_bytes"] + r["output_bytes"] + r["temp_bytes"] - r["alias_bytes"]
        # per-device sizes: argument bytes = sum of the kept inputs' shard_shape sizes
        assert abs(r["args_check_ratio"] - 1) < 0.01, (prog, r["args_check_ratio"])
    for prog in ("update", "score"):   # FSDP: ~1/8 of the global arguments on each device
        assert small_rows[prog]["argument_bytes"] < 0.2 * small_rows[prog]["global_argument_bytes"], prog
    assert small_rows["update"]["alias_bytes"] > 0      # params + opt state are donated
    decode = small_rows["decode"]
    # rollout layout (-1, 1, 1): the bf16 weights whole on every device, the KV cache split 8 ways and donated
    weights = decode["resident_global"]["rollout_copy"]
    assert decode["resident_per_device"]["rollout_copy"] == weights
    assert decode["kv_cache_global_bytes"] == 8 * decode["kv_cache_bytes"]
    assert decode["alias_bytes"] >= decode["kv_cache_bytes"] - 4096
    insert = small_rows["insert"]   # prefilled rows written into the donated pool in place
    assert insert["alias_bytes"] >= insert["kv_cache_bytes"] - 4096
    assert insert["temp_bytes"] < insert["kv_cache_bytes"]
    for prog in ("decode", "prefill"):   # the float32 twin gives the GPU estimate
        assert 0 < small_rows[prog]["gpu_estimate_bytes"] <= small_rows[prog]["total_bytes"], prog
    table = mf.format_table(list(small_rows.values()))
    for prog in small_rows:
        assert f"| {prog:7} |" in table


def test_against_real_arrays(mf, small_rows):
    """memory_analysis argument bytes vs per-device bytes of real arrays the library places itself."""
    from hopchain_jax.configs.models import tiny
    from hopchain_jax.infer.engine import InferenceEngine
    from hopchain_jax.models.qwen_vl import init_sharded
    from hopchain_jax.models.sharding import make_mesh
    from hopchain_jax.rl.update import Updater

    cfg = mf.train_config("tiny", small=True)
    config = tiny()
    mesh = make_mesh(*cfg.mesh)
    model = init_sharded(config, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), mesh=mesh)
    upd = Updater(model, cfg, mesh)
    # the abstract Updater mirrors the real one: same shapes, dtypes and shardings of every state leaf
    abstract = mf.abstract_updater(mf.abstract_model(config, cfg, mesh), cfg, mesh)
    for a_tree, r_tree in ((abstract.params, upd.params), (abstract.frozen, upd.frozen),
                           (abstract.opt_state, upd.opt_state)):
        a_leaves, a_def = jax.tree.flatten(a_tree)
        r_leaves, r_def = jax.tree.flatten(r_tree)
        assert a_def == r_def
        for a, r in zip(a_leaves, r_leaves):
            assert (a.shape, a.dtype) == (r.shape, r.dtype) and a.sharding.is_equivalent_to(r.sharding, a.ndim)

    shapes = mf.shapes_for(cfg, mf.parse_args(["--small"]), small=True)
    struct, _ = mf.abstract_batch(config, mesh, shapes, cfg.max_pixels)
    zeros = lambda t: None if t is None else ({k: zeros(v) for k, v in t.items()} if isinstance(t, dict)
                                              else np.zeros(t.shape, t.dtype))
    batch = upd.put_batch(zeros(struct))
    k, n, t = batch["input_ids"].shape
    old = np.zeros((k * n, t), np.float32)
    from hopchain_jax.models.sharding import activation_sharding
    old = jax.device_put(old, activation_sharding("tokens", old.shape, mesh))
    adv = jax.device_put(np.zeros(k * n, np.float32), activation_sharding("rows", (k * n,), mesh))
    real = _dev0((upd.params, upd.opt_state, upd.frozen, batch, old, adv))
    row = small_rows["update"]
    assert abs(row["argument_bytes"] + row["pruned_argument_bytes"] - real) / real < 0.01
    # FSDP: each device holds ~1/8 of the parameters + optimizer state
    state = _dev0((upd.params, upd.opt_state))
    total = sum(x.nbytes for x in jax.tree.leaves((upd.params, upd.opt_state)))
    assert abs(row["state_argument_bytes"] - state) / state < 0.01
    assert 7.0 < total / state <= 8.0, total / state

    eng = InferenceEngine(upd.model(), mesh=mesh, rollout_mesh=make_mesh(*cfg.rollout_mesh))
    cache = eng._empty_cache(shapes.decode_rows, shapes.cache_len)
    from hopchain_jax.infer.engine import ROW_FIELDS
    rows = {k: eng._put(np.zeros(shapes.decode_rows, dtype), "rows") for k, dtype in ROW_FIELDS.items()}
    real = _dev0((eng.state, cache, rows))
    row = small_rows["decode"]
    assert abs(row["argument_bytes"] + row["pruned_argument_bytes"] - real) / real < 0.01
    assert row["kv_cache_bytes"] == _dev0(cache)


@pytest.mark.slow
def test_7b_update_and_decode_fit_80gb_per_device(mf, tmp_path):
    """At the real 7B shapes (abstract, compiled ahead of time on the 8 simulated devices): the RL update
    (32 micro-batches of 8 x 4096 tokens), a decode chunk for 64 prompts x 8 samples each from the bf16
    weights replicated on every device, one prefill call and its insertion into the decode pool fit in
    80 GB per device with what lives beside them, and the weights + Adam moments are split 8 ways."""
    rows = {r["program"]: r for r in mf.main(["--presets", "qwen2_5_vl_7b", "--programs",
                                              "update,decode,prefill,insert", "--json", str(tmp_path / "7b.json")])}
    for prog in ("update", "decode", "prefill", "insert"):
        assert "error" not in rows[prog], rows[prog].get("error")
        assert rows[prog]["total_bytes"] < 80e9 and rows[prog]["coresident_bytes"] < 80e9, (prog, rows[prog])
    assert rows["update"]["argument_bytes"] < rows["update"]["global_argument_bytes"] / 7.5


def test_simulated_device_count_follows_an_explicit_mesh(mf):
    """Run as a script, memory_fit simulates as many CPU devices as --mesh asks for (1,1,1: one H200's
    worth), 8 when the mesh is the preset's or has a -1."""
    assert mf._simulated_devices(["--presets", "qwen2_5_vl_3b", "--mesh", "1,1,1"]) == 1
    assert mf._simulated_devices(["--mesh=1,4,2"]) == 8
    assert mf._simulated_devices(["--mesh", "2,2,4", "--small"]) == 16
    assert mf._simulated_devices(["--mesh", "1,-1,1"]) == 8
    assert mf._simulated_devices(["--small"]) == 8
    assert mf._simulated_devices(["--mesh", "x"]) == 8
