"""Every test sees 8 simulated CPU devices (set before JAX is imported anywhere)."""
import os

os.environ["XLA_FLAGS"] = " ".join(
    [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    + ["--xla_force_host_platform_device_count=8"])
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """A 12-image procedural dataset written by the real pipeline (one worker, 3 shards)."""
    from hopchain_jax.synth.pipeline import SynthConfig, run_synthesis
    root = tmp_path_factory.mktemp("ds") / "small"
    summary = run_synthesis(root, SynthConfig(seed=7, num_images=12, images_per_shard=4), workers=1, progress=False)
    return root, summary
