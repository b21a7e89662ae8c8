"""Weighted mixtures: weights, endless per-epoch reshuffling, process sharding, exact checkpoint resume."""
import collections
import itertools
import json

import grain
import numpy as np
import pytest

from hopchain_jax.data import store
from hopchain_jax.data.grain_source import HopChainSource
from hopchain_jax.data.mixture import Mixture, make_mixture
from hopchain_jax.data.prompts import PromptConfig, prompt_transforms
from hopchain_jax.models.image_processor import QWEN2_5_VL
from hopchain_jax.models.tokenizer import IMAGE_PAD_ID, load_tokenizer


def _tiny_dataset(root, prefix: str, n: int):
    """n records over n 8x8 images (one shard): enough for mixing and sharding tests."""
    rng = np.random.default_rng(len(prefix) + n)
    images = [rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) for _ in range(n)]
    records = [{"id": f"{prefix}{k}", "image": {"shard": store.shard_name(0), "index": k}, "question": f"q{k}",
                "answer": k, "variant": "full", "rationale": None} for k in range(n)]
    store.write_shard(root, 0, images, [np.zeros((8, 8), np.uint8)] * n, records, {})
    return str(root)


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    base = tmp_path_factory.mktemp("mix")
    return _tiny_dataset(base / "a", "a", 10), _tiny_dataset(base / "b", "b", 7)


def _ids(ds, n):
    return [el["id"] for el in itertools.islice(iter(ds), n)]


def test_weights_are_respected_and_sources_repeat_reshuffled(two):
    a, b = two
    ds = make_mixture([(a, 0.8), (b, 0.2)], seed=0, process_index=0, process_count=1)
    elements = list(itertools.islice(iter(ds), 1000))
    counts = collections.Counter(el["source"] for el in elements)
    assert abs(counts[a] / 1000 - 0.8) < 0.02 and counts[a] + counts[b] == 1000
    for window in range(0, 900, 100):  # not only on average: every window of 100 draws
        share = sum(el["source"] == a for el in elements[window:window + 100]) / 100
        assert abs(share - 0.8) <= 0.03
    from_a = [el["id"] for el in elements if el["source"] == a]
    epochs = [from_a[k:k + 10] for k in range(0, 50, 10)]
    assert all(sorted(e) == sorted(f"a{k}" for k in range(10)) for e in epochs)  # each epoch a permutation
    assert len({tuple(e) for e in epochs}) == len(epochs)  # reshuffled every epoch
    # deterministic in the seed
    assert _ids(ds, 200) == [el["id"] for el in elements[:200]]
    assert _ids(make_mixture([(a, 0.8), (b, 0.2)], seed=1, process_index=0, process_count=1), 200) != _ids(ds, 200)
    ordered = make_mixture([(a, 1.0)], seed=0, shuffle=False, process_index=0, process_count=1)
    assert _ids(ordered, 12) == [f"a{k}" for k in range(10)] + ["a0", "a1"]
    el = elements[0]
    assert el["image"].shape == (8, 8, 3) and json.loads(el["record"])["id"] == el["id"]


def test_processes_read_disjoint_shards(two):
    a, b = two
    for count in (2, 3):
        seen = []
        for p in range(count):
            ds = make_mixture([(a, 1), (b, 1)], seed=5, process_index=p, process_count=count)
            seen.append(set(_ids(ds, 200)))
        assert set().union(*seen) == {f"a{k}" for k in range(10)} | {f"b{k}" for k in range(7)}
        for p, q in itertools.combinations(range(count), 2):
            assert not seen[p] & seen[q]
    # default: JAX's process index / count (one process here: everything)
    assert len(set(_ids(make_mixture([(a, 1), (b, 1)], seed=5), 200))) == 17


def test_state_restore_continues_exactly(two, small_dataset):
    a, b = two
    tok = load_tokenizer()
    cfg = PromptConfig(processor=QWEN2_5_VL.replace(max_pixels=60_000), max_prompt_tokens=4096, on_over_budget="skip")

    def pipeline():
        return make_mixture([(a, 3), (b, 1), (small_dataset[0], 1)], seed=11, process_index=0, process_count=1,
                            transforms=prompt_transforms(tok, cfg), batch_size=3)

    ds = pipeline()
    assert isinstance(ds, Mixture) and repr(ds) == repr(pipeline())
    assert "weight=0.6" in repr(ds) and "seed=11" in repr(ds) and " at 0x" not in repr(ds)
    it = iter(ds)
    head = [next(it) for _ in range(4)]
    state = it.get_state()
    rest = [[el["id"] for el in batch] for batch in itertools.islice(it, 6)]
    it2 = iter(pipeline())
    it2.set_state(state)
    assert [[el["id"] for el in batch] for batch in itertools.islice(it2, 6)] == rest
    batch = head[0]
    assert isinstance(batch, list) and len(batch) == 3
    for el in batch:
        assert int(np.sum(el["prompt_ids"] == IMAGE_PAD_ID)) == int(np.prod(el["image_grid_thw"])) // 4
        assert el["pixel_values"].shape[0] == int(np.prod(el["image_grid_thw"]))
        assert el["source"] in (a, b, small_dataset[0])


def test_state_restore_with_filtered_elements(two):
    a, b = two
    class DropOdd(grain.transforms.Filter):
        def filter(self, el):
            return int(el["id"][1:]) % 3 != 0


    def pipeline():
        return make_mixture([(a, 1), (b, 1)], seed=2, process_index=1, process_count=2, transforms=[DropOdd()])

    it = iter(pipeline())
    [next(it) for _ in range(9)]
    state = it.get_state()
    rest = [el["id"] for el in itertools.islice(it, 30)]
    assert all(int(i[1:]) % 3 != 0 for i in rest) and len(set(rest)) == 5  # a1 a5 a7 b1 b5
    # a filter that drops everything fails instead of spinning forever
    class DropAll(grain.transforms.Filter):
        def filter(self, el):
            return False

    with pytest.raises(ValueError, match="skipped 100"):
        next(iter(make_mixture([(a, 1)], seed=0, process_index=0, process_count=1, transforms=[DropAll()])))
    it2 = iter(pipeline())
    it2.set_state(state)
    assert [el["id"] for el in itertools.islice(it2, 30)] == rest


def test_arguments_are_validated(two, tmp_path):
    a, b = two
    kw = {"seed": 0, "process_index": 0, "process_count": 1}
    with pytest.raises(ValueError, match="at least one"):
        make_mixture([], **kw)
    for bad in (0, -1.0, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match=r"weight of source 1 .*positive"):
            make_mixture([(a, 1.0), (b, bad)], **kw)
    with pytest.raises(TypeError, match="pair"):
        make_mixture([(a, 1.0, 2)], **kw)
    with pytest.raises(TypeError, match="list of"):
        make_mixture(a, **kw)
    with pytest.raises(ValueError, match="process_index"):
        make_mixture([(a, 1)], seed=0, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="fewer than process_count=8"):
        make_mixture([(b, 1)], seed=0, process_index=0, process_count=8)
    with pytest.raises(ValueError, match="seed"):
        make_mixture([(a, 1)], seed=-1)
    with pytest.raises(ValueError, match="batch_size"):
        make_mixture([(a, 1)], batch_size=0, **kw)
    with pytest.raises(FileNotFoundError, match="no HopChain shards"):
        make_mixture([(str(tmp_path), 1)], **kw)
    # a HopChainSource in place of a directory; a dict of weights
    ds = make_mixture({a: 2, b: 1}, **kw)
    assert set(_ids(ds, 30)) <= {f"a{k}" for k in range(10)} | {f"b{k}" for k in range(7)}
    assert _ids(make_mixture([(HopChainSource(a), 1)], **kw), 10) == _ids(make_mixture([(a, 1)], **kw), 10)
