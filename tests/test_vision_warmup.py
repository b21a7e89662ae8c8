"""Perception warm-up (TrainConfig.mode="vision"): per-token targets from instance masks, their order
against the image tokens, and a warm-up run that trains the tower and leaves the language model alone."""
import json

import jax
import numpy as np
import pytest

from hopchain_jax.models.image_processor import QWEN2_5_VL, preprocess
from hopchain_jax.rl.config import TrainConfig
from hopchain_jax.rl.vision_warmup import CATEGORY_NAMES, COLOR_NAMES, MAX_NUMBER, token_targets

GRID = np.array([[1, 8, 8]])   # 112 x 112 px: 8 x 8 patches of 14 px, 4 x 4 merged tokens of 28 px


def _inst(k, category, color=None, parts=None, text=None):
    return {"id": f"i{k}", "category": category,
            "attributes": {"color": color, "part_count": parts, "text": text, "part": None, "size": "large"}}


def test_token_targets_take_the_instance_covering_most_of_each_block():
    labels = np.zeros((112, 112), np.uint8)
    labels[0:28, 0:28] = 1                  # token 0: all i0 (a red die with 4 pips)
    labels[28:34, 28:56] = 2                # token 5: i1 covers 6/28 = 21% < MIN_SHARE: cover only
    labels[84:112, 84:101] = 3              # token 15: i2 (card "17") 17/28 of the block ...
    labels[84:112, 101:112] = 4             # ... i3 (a ball) the other 11/28
    labels[0:28, 84:112] = 5                # token 3: a category outside the catalog
    record = {"id": "r", "instances": [_inst(0, "die", "red", 4), _inst(1, "ball", "blue"),
                                       _inst(2, "card", "green", None, "17"), _inst(3, "ball", "pink"),
                                       _inst(4, "zebra", "beige", 12, "35")]}
    t = token_targets(record, labels, GRID, patch_size=14, merge=2)
    assert {k: v.shape for k, v in t.items()} == {**{k: (16,) for k in ("cover", "category", "color", "parts", "number")},
                                                  "counts": (16, len(CATEGORY_NAMES))}
    want = np.zeros(len(CATEGORY_NAMES), int)     # the scene's counts at every token, out-of-catalog "zebra" left out
    want[[CATEGORY_NAMES.index(c) for c in ("die", "card")]] = 1
    want[CATEGORY_NAMES.index("ball")] = 2
    assert (t["counts"] == want).all()
    np.testing.assert_allclose(t["cover"][[0, 5, 15, 3, 1]], [1.0, 6 / 28, 1.0, 1.0, 0.0], atol=1e-6)
    assert t["category"][0] == 1 + CATEGORY_NAMES.index("die") and t["color"][0] == COLOR_NAMES.index("red")
    assert t["parts"][0] == 4 and t["number"][0] == 0
    assert t["category"][5] == 0 and t["color"][5] == -1 and t["parts"][5] == -1 and t["number"][5] == -1
    assert t["category"][15] == 1 + CATEGORY_NAMES.index("card") and t["number"][15] == 17 and t["parts"][15] == 0
    assert t["category"][3] == len(CATEGORY_NAMES) + 1 and t["color"][3] == len(COLOR_NAMES)
    assert t["number"][3] == MAX_NUMBER and t["parts"][3] == 9
    empty = np.ones(16, bool)
    empty[[0, 3, 5, 15]] = False
    assert (t["category"][empty] == 0).all() and (t["color"][empty] == -1).all() and (t["cover"][empty] == 0).all()
    # a label with no instance behind it is a broken dataset, not a silent background
    with pytest.raises(ValueError, match="no instance 'i4'"):
        token_targets({"id": "r", "instances": record["instances"][:4]}, labels, GRID, patch_size=14, merge=2)


def test_targets_follow_the_image_tokens_raster_order():
    """The dark merged token of the preprocessed image (a merge unit = 4 consecutive patches) is the token
    token_targets marks as covered, for an object in every block in turn, on a non-square image."""
    proc = QWEN2_5_VL.replace(max_pixels=112 * 168)
    for row in range(4):
        for col in range(6):
            image = np.full((112, 168, 3), 255, np.uint8)
            labels = np.zeros((112, 168), np.uint8)
            image[row * 28:(row + 1) * 28, col * 28:(col + 1) * 28] = 0
            labels[row * 28:(row + 1) * 28, col * 28:(col + 1) * 28] = 1
            out = preprocess(image, proc)
            assert out.image_grid_thw.tolist() == [[1, 8, 12]]
            darkest = int(np.argmin(out.pixel_values.reshape(-1, 4 * out.pixel_values.shape[1]).mean(-1)))
            t = token_targets({"id": "r", "instances": [_inst(0, "ball", "red")]}, labels, out.image_grid_thw, 14, 2)
            assert darkest == int(np.argmax(t["cover"])) == row * 6 + col


def test_vision_mode_rejects_a_frozen_tower():
    with pytest.raises(ValueError, match="freeze_vision=False"):
        TrainConfig(mode="vision", freeze_vision=True)


def test_warmup_run_trains_the_tower_only_and_exports_a_model_that_sft_can_start_from(tmp_path, small_dataset):
    from flax import nnx
    from hopchain_jax.models.checkpoint import load_pretrained
    from hopchain_jax.models.sharding import make_mesh
    from hopchain_jax.rl.trainer import Trainer
    root, _ = small_dataset
    cfg = TrainConfig(name="warm", model="tiny", mode="vision", data=((str(root), 1.0),), steps=3,
                      prompts_per_step=2, lr=3e-3, warmup_steps=0, max_pixels=112 * 112, eval_every=3, eval_items=2,
                      heldout_fraction=0.25, eval_variants=("full", "half", "single"), out_dir=str(tmp_path / "warm"),
                      save_every=3)
    trainer = Trainer(cfg, progress=False)

    def leaves(state, vision: bool):
        return {jax.tree_util.keystr(p): np.array(x) for p, x in jax.tree_util.tree_leaves_with_path(state)
                if ("['visual']" in jax.tree_util.keystr(p)) == vision}

    start = nnx.state(trainer.updater.model(), nnx.Param)
    lm0, v0 = leaves(start, False), leaves(start, True)
    try:
        assert trainer.engine is None                     # a warm-up generates nothing
        history = trainer.train()
        hf = trainer.export_hf()
    finally:
        trainer.close()
    assert len(history) == 3 and all(np.isfinite(h["loss"]) and h["skipped"] == 0 for h in history)
    assert history[-1]["loss"] < history[0]["loss"]
    evals = trainer.eval_history
    assert [e["step"] for e in evals] == [0, 3]
    assert {"eval_loss", "eval_cover_accuracy", "eval_category_accuracy", "eval_color_accuracy",
            "eval_counts_accuracy", "eval_counts_present_accuracy"} <= set(evals[-1])
    assert len(json.loads((tmp_path / "warm" / "heldout.json").read_text())["eval_ids"]) == 2

    warm = nnx.state(load_pretrained(hf, dtype=np.float32, param_dtype=np.float32, mesh=make_mesh()), nnx.Param)
    lm1, v1 = leaves(warm, False), leaves(warm, True)
    assert lm0.keys() == lm1.keys() and all(np.array_equal(lm0[k], lm1[k]) for k in lm0)   # untouched
    changed = [k for k in v0 if not np.allclose(v0[k], v1[k])]
    assert len(changed) > len(v0) // 2                     # tower and merger learned
    assert json.loads((hf / "preprocessor_config.json").read_text())["max_pixels"] == 112 * 112
