"""Multimodal rotary positions (M-RoPE).

Host side, `rope_index` (numpy): the equivalent of transformers' `get_rope_index` for Qwen2.5-VL and
Qwen3-VL images — text tokens advance one position per token on all three axes; the t x h x w image
tokens of one image take (t, row, col) offsets from the position where the image starts, and the text
after the image resumes at start + max(h, w) / merge. Padding (attention_mask 0) is skipped and gets
position 0. Returns position_ids [3, B, T] and per-sequence deltas [B] (= max position + 1 - real length)
so decoding continues at `real_length_so_far + delta`.

Device side, `mrope_cos_sin`: cos/sin [B, T, head_dim] from position_ids with the frequency pairs split
between the axes either in contiguous sections (2.5-VL) or interleaved t,h,w,t,h,w,... (Qwen3-VL).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hopchain_jax.models.config import QwenVLConfig


def rope_index(input_ids: np.ndarray, attention_mask: np.ndarray | None, image_grid_thw: np.ndarray | None,
               config: QwenVLConfig) -> tuple[np.ndarray, np.ndarray]:
    input_ids = np.asarray(input_ids)
    b, t = input_ids.shape
    mask = np.ones_like(input_ids, bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
    merge = config.vision.spatial_merge_size
    grids = iter(np.asarray(image_grid_thw).reshape(-1, 3).tolist()) if image_grid_thw is not None else iter(())
    positions = np.zeros((3, b, t), np.int64)
    deltas = np.zeros((b,), np.int64)
    for row in range(b):
        ids = input_ids[row][mask[row]]
        is_image = ids == config.image_token_id
        chunks, pos, i = [], 0, 0
        while i < len(ids):
            j = i
            while j < len(ids) and is_image[j] == is_image[i]:
                j += 1
            if not is_image[i]:
                chunks.append(np.broadcast_to(np.arange(pos, pos + j - i), (3, j - i)))
                pos += j - i
            else:
                try:
                    gt, gh, gw = next(grids)
                except StopIteration:
                    raise ValueError("more image-token runs in input_ids than images in image_grid_thw") from None
                lt, lh, lw = gt, gh // merge, gw // merge
                if lt * lh * lw != j - i:
                    raise ValueError(f"an image run of {j - i} tokens does not match its grid {gt}x{gh}x{gw} "
                                     f"({lt * lh * lw} tokens after {merge}x{merge} merging)")
                tt, hh, ww = np.meshgrid(np.arange(lt), np.arange(lh), np.arange(lw), indexing="ij")
                chunks.append(np.stack([tt, hh, ww]).reshape(3, -1) + pos)
                pos += max(gh, gw) // merge
            i = j
        seq = np.concatenate(chunks, axis=1) if chunks else np.zeros((3, 0), np.int64)
        positions[:, row, mask[row]] = seq
        deltas[row] = (seq.max() + 1 - len(ids)) if seq.size else 0
    return positions.astype(np.int32), deltas.astype(np.int32)


def inv_freq(config: QwenVLConfig) -> np.ndarray:
    d = config.text.head_dim
    return (1.0 / (config.text.rope_theta ** (np.arange(0, d, 2, dtype=np.float32) / d))).astype(np.float32)


def mrope_cos_sin(position_ids: jax.Array, config: QwenVLConfig, dtype) -> tuple[jax.Array, jax.Array]:
    """position_ids int [3, B, T] -> (cos, sin) each [B, T, head_dim] in `dtype`."""
    freqs = position_ids[..., None].astype(jnp.float32) * jnp.asarray(inv_freq(config))  # [3, B, T, d/2]
    half = freqs.shape[-1]
    sec = config.text.mrope_section
    if config.text.mrope_interleaved:
        axis = np.zeros(half, np.int32)  # frequency pair k -> axis: t,h,w,t,h,w,... up to each section
        axis[1:sec[1] * 3:3] = 1
        axis[2:sec[2] * 3:3] = 2
    else:
        axis = np.repeat(np.arange(3), sec)
    pick = jax.nn.one_hot(jnp.asarray(axis), 3, dtype=jnp.float32)  # [d/2, 3]
    f = jnp.einsum("abtk,ka->btk", freqs, pick)
    f = jnp.concatenate([f, f], axis=-1)
    return jnp.cos(f).astype(dtype), jnp.sin(f).astype(dtype)
