"""Model FLOPs of Qwen2.5-VL / Qwen3-VL training and scoring, per component, for MFU.

Counted from the config (not the parameter tree), matmuls only, 2 FLOPs per multiply-add:
  text      decoder projections per token: q/o (heads x head_dim), k/v (GQA: kv_heads x head_dim), SwiGLU (3)
  attention decoder scores + values, 2 x 2 x heads x head_dim per (query, attended key); causal: a row of
            length L attends L(L+1)/2 keys in all
  lm_head   hidden x vocab per token, at EVERY token of the row (training and scoring take log-probs at all
            positions; generation, which takes logits at the last position only, is not counted here)
  vision    tower matmuls: patch embed and block qkv/proj/MLP per patch (2.5-VL gated MLP: 3 matmuls, Qwen3-VL
            plain MLP: 2), merger (and Qwen3-VL deepstack mergers) per merged token (patches / merge^2)
  vision_attention  tower scores + values over the attended sets: 2.5-VL windowed blocks within each window
            (the real window sizes of vision._window_index), full blocks and all Qwen3-VL blocks within the
            frame (vision.py's full_segment; the whole image for t = 1)
Not matmuls, so 0 here: embedding lookup, norms, biases, rotary, softmax, Qwen3-VL's bilinear position taps.
Pass the real (unpadded) lengths: padding and masked-out scores are not useful work and MFU does not credit them.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from hopchain_jax.models.config import QwenVLConfig
from hopchain_jax.models.vision import _window_index

# Dense (no sparsity) bf16 peak FLOP/s per device, from the vendors' datasheets.
PEAK_BF16_FLOPS: dict[str, float] = {
    "H100": 989e12, "H100 PCIe": 756e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "B200": 2250e12,
    "TPU v4": 275e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6e": 918e12,
}
# jax device_kind (lower-cased) substring -> table key; first match wins, so more specific names come first.
_KINDS = (("h100 pcie", "H100 PCIe"), ("h100", "H100"), ("h200", "H200"), ("h800", "H800"), ("a100", "A100"),
          ("b200", "B200"), ("v6 lite", "TPU v6e"), ("v6e", "TPU v6e"), ("v5 lite", "TPU v5e"), ("v5e", "TPU v5e"),
          ("v5p", "TPU v5p"), ("tpu v5", "TPU v5p"), ("tpu v4", "TPU v4"))


@dataclasses.dataclass(frozen=True)
class FlopCount:
    """One forward pass, in FLOPs, by component (see the module docstring)."""

    text: float = 0.0
    attention: float = 0.0
    lm_head: float = 0.0
    vision: float = 0.0
    vision_attention: float = 0.0

    @property
    def language(self) -> float:
        """The LM's part: decoder matmuls + attention + head."""
        return self.text + self.attention + self.lm_head

    @property
    def vision_total(self) -> float:
        return self.vision + self.vision_attention

    @property
    def total(self) -> float:
        return self.language + self.vision_total


def text_flops_per_token(config: QwenVLConfig) -> float:
    """Decoder projection + MLP FLOPs of one token through all layers (forward; no attention, no head)."""
    t = config.text
    q = t.num_attention_heads * t.head_dim
    kv = t.num_key_value_heads * t.head_dim
    per_layer = t.hidden_size * (2 * q + 2 * kv) + 3 * t.hidden_size * t.intermediate_size
    return 2.0 * per_layer * t.num_hidden_layers


def text_attention_flops(config: QwenVLConfig, seq_lengths: Sequence[int]) -> float:
    """Causal decoder attention FLOPs (forward) of rows with these lengths: 4 H d x L(L+1)/2 per layer."""
    t = config.text
    pairs = sum(int(n) * (int(n) + 1) / 2 for n in seq_lengths)
    return 4.0 * t.num_attention_heads * t.head_dim * pairs * t.num_hidden_layers


def _grids(image_grids: Sequence[np.ndarray | None]) -> list[tuple[int, int, int]]:
    out = []
    for g in image_grids:
        if g is not None:
            out += [tuple(int(x) for x in row) for row in np.asarray(g, np.int64).reshape(-1, 3)]
    return out


def vision_flops(config: QwenVLConfig, grid_thw: tuple[int, int, int]) -> tuple[float, float]:
    """(matmul FLOPs, attention FLOPs) of one image's forward through the tower; grid in patches (t, h, w)."""
    v = config.vision
    t, h, w = (int(x) for x in grid_thw)
    patches, d = t * h * w, v.hidden_size
    fam = config.family
    mlp = (3 if fam.vision_mlp == "gated" else 2) * d * v.intermediate_size
    per_patch = v.patch_dim * d + v.depth * (4 * d * d + mlp)  # patch embed; qkv (3 d^2) + proj (d^2) + MLP
    unit = d * v.spatial_merge_size ** 2
    mergers = 1 + (len(v.deepstack_visual_indexes) if fam.deepstack else 0)
    per_merged = mergers * (unit * unit + unit * v.out_hidden_size)
    matmul = 2.0 * (per_patch * patches + per_merged * patches / v.spatial_merge_size ** 2)
    full_pairs = t * (h * w) ** 2  # full_segment: one group per frame
    if fam.window_attention:
        windowed = [i for i in range(v.depth) if i not in v.fullatt_block_indexes]
        _, window_ids = _window_index(np.array([[t, h, w]]), v)
        window_pairs = float(np.sum((np.bincount(window_ids) * v.spatial_merge_size ** 2) ** 2.0))
        pairs = len(windowed) * window_pairs + (v.depth - len(windowed)) * full_pairs
    else:
        pairs = v.depth * full_pairs
    return matmul, 4.0 * d * pairs


def forward_flops(config: QwenVLConfig, seq_lengths: Sequence[int],
                  image_grids: Sequence[np.ndarray | None] = ()) -> FlopCount:
    """One forward (logits at every token) of rows of these lengths (image tokens included) and of the
    images the tower encodes for them: image_grids holds [n, 3] grids (or None), each image once."""
    tokens = float(sum(int(n) for n in seq_lengths))
    vis = [vision_flops(config, g) for g in _grids(image_grids)]
    return FlopCount(text=text_flops_per_token(config) * tokens,
                     attention=text_attention_flops(config, seq_lengths),
                     lm_head=2.0 * config.text.hidden_size * config.text.vocab_size * tokens,
                     vision=sum(m for m, _ in vis), vision_attention=sum(a for _, a in vis))


def train_step_flops(config: QwenVLConfig, seq_lengths: Sequence[int],
                     image_grids: Sequence[np.ndarray | None] = (), freeze_vision: bool = False) -> float:
    """FLOPs of one forward + backward: 3 x forward for trained parts (the backward is ~2 x forward), 1 x for
    a frozen vision tower (forward only: nothing upstream of it needs a gradient)."""
    f = forward_flops(config, seq_lengths, image_grids)
    return 3.0 * f.language + (1.0 if freeze_vision else 3.0) * f.vision_total


def rl_update_flops(config: QwenVLConfig, seq_lengths: Sequence[int], image_grids: Sequence[np.ndarray | None] = (),
                    freeze_vision: bool = False, reference_forward: bool = False,
                    scoring_forward: bool = True) -> float:
    """The RL update phase: a scoring forward for the old log-probs (scoring_forward), a reference-policy
    forward for the KL term (reference_forward), then the train step."""
    passes = int(scoring_forward) + int(reference_forward)
    return (passes * forward_flops(config, seq_lengths, image_grids).total
            + train_step_flops(config, seq_lengths, image_grids, freeze_vision))


def mfu(flops: float, seconds: float, peak_flops_per_device: float, n_devices: int) -> float:
    """Model FLOPs utilization: flops / seconds / (peak FLOP/s per device x devices), a fraction in [0, 1]."""
    return flops / seconds / (peak_flops_per_device * n_devices)


def peak_flops(device_kind: str) -> float | None:
    """Dense bf16 peak FLOP/s for a jax device_kind ("NVIDIA H200", "TPU v5 lite", ...); None if unknown (CPU)."""
    kind = device_kind.lower()
    return next((PEAK_BF16_FLOPS[key] for pattern, key in _KINDS if pattern in kind), None)
