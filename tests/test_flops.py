"""FLOP counts (rl.flops) against the model's actual parameter shapes and attention masks."""
import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from hopchain_jax.configs.models import qwen2_5_vl_7b, tiny
from hopchain_jax.models.qwen_vl import QwenVL
from hopchain_jax.models.vision import prepare_vision_inputs
from hopchain_jax.rl import flops
from hopchain_jax.models.families import FAMILIES

ARCHES = sorted(FAMILIES)   # every registered family passes the same parity tests (models/families.py)


def _params(config) -> dict[str, int]:
    """'/'-joined path -> size of every parameter of an abstract (shape-only) QwenVL."""
    model = nnx.eval_shape(lambda: QwenVL(config, rngs=nnx.Rngs(0)))
    leaves = jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))

    def name(k):
        return str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k))))
    return {"/".join(name(k) for k in p if name(k) != "value"): int(np.prod(x.shape)) for p, x in leaves}


def _kernels(params, prefix):
    return {p: n for p, n in params.items() if p.split("/")[0] == prefix and p.endswith("/kernel")}


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("tie", [False, True])
def test_text_matmuls_match_kernel_parameters(arch, tie):
    config = dataclasses.replace(tiny(arch), tie_word_embeddings=tie)
    params = _params(config)
    decoder = sum(_kernels(params, "language_model").values())
    head = params["language_model/embed_tokens"] if tie else params["lm_head/kernel"]
    assert ("lm_head/kernel" in params) != tie
    tokens = 37
    f = flops.forward_flops(config, [tokens], [None])
    assert f.text == 2 * decoder * tokens
    assert f.lm_head == 2 * head * tokens
    assert f.vision == f.vision_attention == 0


@pytest.mark.parametrize("arch", ARCHES)
def test_vision_matmuls_match_kernel_parameters(arch):
    config = tiny(arch)
    kernels = _kernels(_params(config), "visual")
    merger = sum(n for p, n in kernels.items() if "merger" in p)  # merger and Qwen3-VL deepstack mergers
    per_patch = sum(kernels.values()) - merger
    assert merger and per_patch
    grids = [np.array([[1, 8, 12]]), None, np.array([[1, 4, 4], [2, 6, 4]])]
    patches = 8 * 12 + 4 * 4 + 2 * 6 * 4
    f = flops.forward_flops(config, [10, 20, 30], grids)
    assert f.vision == 2 * (per_patch * patches + merger * patches / config.vision.spatial_merge_size ** 2)


def _mask_pairs(config, grid, segment: str) -> int:
    """Attended (query, key) pairs of one block, from the segments the tower actually masks with."""
    grid = np.asarray(grid).reshape(-1, 3)
    n = int(np.prod(grid, axis=1).sum())
    seg = getattr(prepare_vision_inputs(np.zeros((n, config.vision.patch_dim)), grid, config), segment)
    seg = seg[seg >= 0]  # padding rows (-1) are not patches
    assert len(seg) == n
    return int((seg[:, None] == seg[None, :]).sum())


def test_text_attention_is_causal():
    config = tiny()
    t = config.text
    per_pair = 4 * t.num_attention_heads * t.head_dim * t.num_hidden_layers
    for n in (1, 5, 64):
        assert flops.forward_flops(config, [n]).attention == per_pair * np.tril(np.ones((n, n))).sum()
    a1, a2 = (flops.forward_flops(config, [n]).attention for n in (1024, 2048))
    assert 3.99 < a2 / a1 < 4.0
    assert flops.forward_flops(config, [3, 7]).attention == per_pair * (6 + 28)


@pytest.mark.parametrize("grid", [(1, 56, 56), (1, 16, 16), (1, 20, 30), (2, 12, 20)])
def test_vision_attention_counts_the_attended_sets(grid):
    config = qwen2_5_vl_7b()
    v = config.vision
    windowed = v.depth - len(v.fullatt_block_indexes)
    _, got = flops.vision_flops(config, grid)
    want = 4 * v.hidden_size * (windowed * _mask_pairs(config, grid, "window_segment")
                                + len(v.fullatt_block_indexes) * _mask_pairs(config, grid, "full_segment"))
    assert got == want
    full = 4 * v.hidden_size * v.depth * grid[0] * (grid[1] * grid[2]) ** 2
    assert got < full
    t, h, w = grid
    win = v.window_size // v.patch_size
    if h % win == 0 and w % win == 0:  # every window full: (h/win)(w/win) windows of win^2 patches per frame
        assert got == 4 * v.hidden_size * (windowed * t * (h // win) * (w // win) * win ** 4
                                           + len(v.fullatt_block_indexes) * t * (h * w) ** 2)
    if grid == (1, 56, 56):
        assert got < full / 4


def test_qwen3_vision_attention_is_full():
    config = tiny("qwen3_vl")
    grid = (1, 8, 12)
    _, got = flops.vision_flops(config, grid)
    assert got == 4 * config.vision.hidden_size * config.vision.depth * _mask_pairs(config, grid, "full_segment")


def test_7b_train_step_below_the_old_overcount():
    config = qwen2_5_vl_7b()
    params = _params(config)
    total = sum(params.values())
    lm = sum(n for p, n in params.items() if p.split("/")[0] in ("language_model", "lm_head")) \
        - params["language_model/embed_tokens"]  # non-embedding LM parameters + head
    lengths, grids = [4096] * 4, [np.array([[1, 56, 56]])] * 4
    tokens = sum(lengths)
    new = flops.train_step_flops(config, lengths, grids, freeze_vision=True)
    old = 6 * total * tokens
    assert new < old, f"old/new = {old / new:.3f}"
    assert flops.train_step_flops(config, lengths, grids, freeze_vision=False) > new
    short = [128] * 8
    text = flops.train_step_flops(config, short, [None] * 8, freeze_vision=True)
    want = 6 * lm * sum(short)
    assert abs(text / want - 1) < 0.05, f"text {text:.4g} vs 6 x LM params x tokens {want:.4g}"
    f = flops.forward_flops(config, lengths, grids)
    assert flops.rl_update_flops(config, lengths, grids, True, reference_forward=True, scoring_forward=True) \
        == 2 * f.total + new
    assert flops.rl_update_flops(config, lengths, grids, True, reference_forward=False, scoring_forward=False) == new


def test_peak_flops_and_mfu():
    assert flops.peak_flops("NVIDIA H200") == 989e12
    assert flops.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert flops.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert flops.peak_flops("TPU v5 lite") == 197e12
    assert flops.peak_flops("TPU v5") == 459e12
    assert flops.peak_flops("cpu") is None
    assert flops.mfu(989e12 * 4, 2.0, 989e12, 4) == pytest.approx(0.5)
