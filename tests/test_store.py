"""TensorStore shards: round trip, atomic commits, and kill-and-rerun with no loss or duplication."""
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from hopchain_jax.data import store
from hopchain_jax.synth.pipeline import SynthConfig, run_synthesis


def test_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (6, 8, 3), dtype=np.uint8) for _ in range(3)]
    labels = [rng.integers(0, 4, (6, 8), dtype=np.uint8) for _ in range(3)]
    records = [{"id": f"r{k}", "image": {"shard": "shard-00002", "index": k % 3}, "text": "é" * k} for k in range(5)]
    store.write_shard(tmp_path, 2, images, labels, records, {"stats": {}})
    ds = store.HopChainDataset(tmp_path)
    assert len(ds) == 5 and [ds.record(k) for k in range(5)] == records == list(ds.records())
    assert np.array_equal(ds.image("shard-00002", 1), images[1])
    assert np.array_equal(ds.labels("shard-00002", 2), labels[2])
    with pytest.raises(FileExistsError):
        store.write_shard(tmp_path, 2, images, labels, records, {})
    with pytest.raises(IndexError):
        ds.record(5)


def test_failed_write_leaves_nothing(tmp_path):
    bad = [np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4, 3), np.uint8)]
    with pytest.raises(ValueError, match="must be"):
        store.write_shard(tmp_path, 0, bad, [np.zeros((4, 4), np.uint8)] * 2, [], {})
    assert list((tmp_path / "shards").iterdir()) == []


def test_images_of_different_sizes_share_a_shard(tmp_path):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in ((5, 9), (12, 4), (7, 7))]
    labels = [np.full(im.shape[:2], k, np.uint8) for k, im in enumerate(images)]
    store.write_shard(tmp_path, 0, images, labels, [{"id": "a"}], {})
    ds = store.HopChainDataset(tmp_path)
    for k, im in enumerate(images):
        assert np.array_equal(ds.image("shard-00000", k), im)
        assert np.array_equal(ds.labels("shard-00000", k), labels[k])


def test_empty_directory_gives_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="hopchain synth --out"):
        store.HopChainDataset(tmp_path)


def test_rerun_with_other_options_is_refused(tmp_path):
    run_synthesis(tmp_path, SynthConfig(num_images=2, images_per_shard=2), workers=1, progress=False)
    with pytest.raises(ValueError, match="different config"):
        run_synthesis(tmp_path, SynthConfig(num_images=4, images_per_shard=2), workers=1, progress=False)


def _ids(root):
    return Counter(r["id"] for r in store.HopChainDataset(root).records())


@pytest.mark.slow
def test_kill_midway_then_rerun_loses_and_duplicates_nothing(tmp_path):
    args = ["synth", "--num-images", "40", "--images-per-shard", "2", "--workers", "1", "--seed", "4", "--no-progress"]
    reference = tmp_path / "reference"
    subprocess.run([sys.executable, "-m", "hopchain_jax.cli", *args, "--out", str(reference)], check=True,
                   capture_output=True)

    crashed = tmp_path / "crashed"
    proc = subprocess.Popen([sys.executable, "-m", "hopchain_jax.cli", *args, "--out", str(crashed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(store.committed_shards(crashed)) < 3 and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_at_kill = len(store.committed_shards(crashed))
    assert 3 <= done_at_kill < 20, "the kill must land midway through the run"
    # a shard being written when the kill landed is left behind as a temporary directory, never read
    (crashed / "shards" / ".tmp-shard-00019-deadbeef").mkdir(exist_ok=True)

    out = subprocess.run([sys.executable, "-m", "hopchain_jax.cli", *args, "--out", str(crashed), "--json"],
                         check=True, capture_output=True, text=True)
    summary = json.loads(out.stdout)
    assert summary["shards_resumed"] == done_at_kill and summary["partial_shards_removed"] >= 1
    ref_ids, got_ids = _ids(reference), _ids(crashed)
    assert max(got_ids.values()) == 1  # nothing duplicated
    assert got_ids == ref_ids  # nothing lost
    assert list(store.HopChainDataset(crashed).records()) == list(store.HopChainDataset(reference).records())
    assert not list((crashed / "shards").glob(".tmp-*"))


def test_two_worker_processes_write_what_one_does_and_a_script_without_a_main_guard_fails_fast(tmp_path):
    """The spawned worker pool (run_synthesis workers > 1) gives the records one process gives; a caller's
    script without `if __name__ == "__main__":` (its spawned children re-run it and die) gets an error naming
    the fix within seconds -- multiprocessing.Pool replaced the dying workers forever (a silent hang)."""
    config = SynthConfig(seed=3, num_images=4, images_per_shard=2)
    run_synthesis(tmp_path / "one", config, workers=1, progress=False)
    script = (f"import sys\nsys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
              "from hopchain_jax.synth.pipeline import SynthConfig, run_synthesis\n"
              f"config = SynthConfig(seed=3, num_images=4, images_per_shard=2)\n"
              "def main(root):\n    run_synthesis(root, config, workers=2, progress=False)\n")
    guarded = tmp_path / "guarded.py"
    guarded.write_text(script + f"if __name__ == '__main__':\n    main({str(tmp_path / 'two')!r})\n")
    subprocess.run([sys.executable, str(guarded)], check=True, capture_output=True, timeout=120)
    assert list(store.HopChainDataset(tmp_path / "two").records()) == \
        list(store.HopChainDataset(tmp_path / "one").records())

    bare = tmp_path / "bare.py"
    bare.write_text(script + f"main({str(tmp_path / 'bare')!r})\n")
    out = subprocess.run([sys.executable, str(bare)], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "if __name__ == \"__main__\":" in out.stderr and "workers=1" in out.stderr
