"""Every test sees 8 simulated CPU devices (set before JAX is imported anywhere)."""
import os

os.environ["XLA_FLAGS"] = " ".join(
    [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    + ["--xla_force_host_platform_device_count=8"])
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent XLA compilation cache for this test run, shared with the launcher subprocesses the tests
# start: the training tests compile the same steps in several processes (kill/resume, a reference run).
# Fresh per run, so no test can pass on an executable compiled from older code.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile
    _cache_dir = tempfile.mkdtemp(prefix="hopchain-test-xla-cache-")
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import pytest  # noqa: E402

# Scheduling for `pytest -n N --dist worksteal` (the README runs N = 2): worksteal first hands worker w
# the w-th contiguous slice of the collection, then an idle worker steals from the end of another's queue.
# So every slice starts with its share of the long modules (split by their rough CPU seconds, whole
# modules so that module fixtures are built once) and is filled up with short tests: no worker is left
# running long tests alone at the end while the other has nothing to steal.
_LONG_MODULE_SECONDS = {"test_train.py": 840, "test_engine.py": 520, "test_scale.py": 300, "test_gpu_suite.py": 160,
                        "test_memory_fit.py": 120, "test_reward.py": 90, "test_photo_pipeline.py": 80,
                        "test_eval.py": 70, "test_packaging.py": 100, "test_photo_e2e.py": 50, "test_store.py": 45,
                        "test_rl_learns.py": 60, "test_photo_real.py": 25}


def pytest_collection_modifyitems(items):
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    by_module: dict[str, list] = {}
    short = []
    for item in items:
        (by_module.setdefault(item.path.name, []) if item.path.name in _LONG_MODULE_SECONDS else short).append(item)
    groups, loads = [[] for _ in range(workers)], [0] * workers
    for name in sorted(by_module, key=lambda n: -_LONG_MODULE_SECONDS[n]):   # longest first, to the lightest
        w = loads.index(min(loads))
        groups[w] += by_module[name]
        loads[w] += _LONG_MODULE_SECONDS[name]
    ordered, left = [], len(items)
    for w in range(workers):          # slice sizes as worksteal cuts them: remaining // workers remaining
        size = left // (workers - w)
        fill = max(0, size - len(groups[w]))
        ordered += groups[w] + short[:fill]
        short, left = short[fill:], left - len(groups[w]) - fill
    items[:] = ordered + short


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """A 12-image procedural dataset written by the real pipeline (one worker, 3 shards)."""
    from hopchain_jax.synth.pipeline import SynthConfig, run_synthesis
    root = tmp_path_factory.mktemp("ds") / "small"
    summary = run_synthesis(root, SynthConfig(seed=7, num_images=12, images_per_shard=4), workers=1, progress=False)
    return root, summary


@pytest.fixture(scope="session")
def two_scene_dataset(tmp_path_factory):
    """Two small procedural scenes (400x300, so requests encode fast), read-only for the tests that share it
    (test_calibrate keeps its own: calibration writes sidecars into the dataset folder)."""
    from hopchain_jax.data.store import HopChainDataset
    from hopchain_jax.synth.pipeline import SynthConfig, run_synthesis
    from hopchain_jax.world.scene import SceneConfig
    root = tmp_path_factory.mktemp("two_scenes") / "ds"
    run_synthesis(root, SynthConfig(num_images=2, images_per_shard=2, scene=SceneConfig(resolutions=((400, 300),))),
                  workers=1, progress=False)
    return HopChainDataset(root)
