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

# The modules holding the longest tests run first (each module's own order kept), so that with
# `pytest -n 2` (the README's test command) no long test starts last and leaves the other worker idle.
_LONG_MODULES_FIRST = ("test_train.py", "test_engine.py", "test_scale.py", "test_gpu_suite.py",
                       "test_memory_fit.py", "test_photo_e2e.py", "test_photo_pipeline.py", "test_store.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(_LONG_MODULES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))    # stable: order within a module kept


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """A 12-image procedural dataset written by the real pipeline (one worker, 3 shards)."""
    from hopchain_jax.synth.pipeline import SynthConfig, run_synthesis
    root = tmp_path_factory.mktemp("ds") / "small"
    summary = run_synthesis(root, SynthConfig(seed=7, num_images=12, images_per_shard=4), workers=1, progress=False)
    return root, summary
