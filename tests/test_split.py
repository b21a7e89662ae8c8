"""Held-out splits by image and the variant filter the paper's ablation trains with (data/split.py)."""
import json
import pytest

from hopchain_jax.data.mixture import make_mixture
from hopchain_jax.data.split import keep_variants, split_sources
from hopchain_jax.data.store import HopChainDataset
from hopchain_jax.rl.config import TrainConfig


def _variants(ds, rows):
    return [json.loads(ds.record_bytes(i))["variant"] for i in rows]


def test_split_keeps_whole_images_apart_and_keep_variants_filters_each_part(small_dataset):
    root, _ = small_dataset
    ds = HopChainDataset(root)
    train, held = split_sources(root, 0.3)
    assert len(train) + len(held) == len(ds) and not set(train.image_hashes) & set(held.image_hashes)
    every = _variants(ds, range(len(ds)))
    assert {"full", "half", "single"} <= set(every)
    # a directory: every record of the variant, in dataset order
    half = keep_variants(root, ("half",))
    assert half.indices == [i for i, v in enumerate(every) if v == "half"] and half.part == "all"
    # a split part: only its own rows, never the held-out images
    train_half = keep_variants(train, ("half", "single"))
    assert set(train_half.indices) == {i for i in train.indices if every[i] in ("half", "single")}
    assert set(train_half.image_hashes) <= set(train.image_hashes) and train_half.part == "train"
    assert "variants=half,single" in repr(train_half)
    # what a mixture over it yields
    batch = next(iter(make_mixture([(train_half, 1.0)], seed=0, batch_size=8)))
    assert {el["variant"] for el in batch} <= {"half", "single"}
    with pytest.raises(ValueError, match=r"no record of variants \('external',\).*'full', 'half', 'single'"):
        keep_variants(root, ("external",))


def test_train_config_names_unknown_variants():
    assert TrainConfig(train_variants=("half",)).train_variants == ("half",)
    assert TrainConfig.from_json({"train_variants": ["single"]}).train_variants == ("single",)
    with pytest.raises(ValueError, match=r"unknown variant\(s\) \['halves'\]"):
        TrainConfig(train_variants=("halves",))


def test_the_launcher_names_a_bad_variant_without_a_traceback(tmp_path, capsys):
    from hopchain_jax.launch.train import main
    assert main(["--config", "tiny", "--train-variants", "halves", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "launch/train.py: train_variants / eval_variants: unknown variant(s) ['halves']" in err
    assert "Traceback" not in err
