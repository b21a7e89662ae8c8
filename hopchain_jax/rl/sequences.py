"""Packing prompts + responses into fixed-shape training batches.

A training row is one sequence `prompt_ids + response_ids`, right-padded to a length bucket:
  input_ids      int32 [N, T]
  attention_mask bool  [N, T]   real tokens
  position_ids   int32 [3, N, T] M-RoPE positions (rope.rope_index)
  targets        int32 [N, T]   input_ids shifted left: targets[t] = input_ids[t + 1]
  loss_mask      bool  [N, T]   True where targets[t] is a response token (what the loss trains)
  image_index    int32 [N, T]   feature row of each image token (rows of one prompt share its image)
  vision         dict           packed images of the batch's distinct prompts (vision.prepare_vision_inputs)
Shapes are bucketed (length to a multiple of `length_bucket`, patches to a power of two) so minibatches
rarely recompile the train step.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from hopchain_jax.models.config import QwenVLConfig
from hopchain_jax.models.rope import rope_index
from hopchain_jax.models.vision import fill_image_index, pack_images


@dataclasses.dataclass
class Prompt:
    """One prompt: token ids (image pads expanded), its image patches and grid (or None)."""

    prompt_ids: np.ndarray
    pixel_values: np.ndarray | None
    image_grid_thw: np.ndarray | None


@dataclasses.dataclass
class SequenceBatch:
    input_ids: np.ndarray
    attention_mask: np.ndarray
    position_ids: np.ndarray
    targets: np.ndarray
    loss_mask: np.ndarray
    image_index: np.ndarray
    vision: dict[str, np.ndarray] | None

    def arrays(self) -> dict:
        # Not dataclasses.asdict: that deep-copies every array (pixel patches included) per minibatch.
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


def pack(prompts: Sequence[Prompt], prompt_of_row: Sequence[int], responses: Sequence[Sequence[int]],
         config: QwenVLConfig, *, pad_id: int = 0, length_bucket: int = 64, min_length: int = 0) -> SequenceBatch:
    """Rows r = prompts[prompt_of_row[r]] + responses[r]. Only prompts some row uses are encoded."""
    rows = len(responses)
    lengths = [len(prompts[p].prompt_ids) + len(resp) for p, resp in zip(prompt_of_row, responses)]
    t = max(max(lengths) + 1, min_length)
    t = -(-t // length_bucket) * length_bucket
    ids = np.full((rows, t), pad_id, np.int32)
    attn = np.zeros((rows, t), bool)
    loss = np.zeros((rows, t), bool)
    used = sorted(set(prompt_of_row))
    vis, starts = pack_images([(prompts[p].pixel_values, prompts[p].image_grid_thw)
                               if prompts[p].image_grid_thw is not None else None for p in used], config)
    first_row = dict(zip(used, starts))
    grids = []
    for r, (p, resp) in enumerate(zip(prompt_of_row, responses)):
        prompt = np.asarray(prompts[p].prompt_ids, np.int32)
        seq = np.concatenate([prompt, np.asarray(resp, np.int32)])
        ids[r, :len(seq)], attn[r, :len(seq)] = seq, True
        loss[r, len(prompt) - 1:len(seq) - 1] = True  # position t predicts token t + 1
        if prompts[p].image_grid_thw is not None:
            grids.append(np.asarray(prompts[p].image_grid_thw).reshape(-1, 3))
    image_index = fill_image_index(ids, [first_row[p] for p in prompt_of_row], config)
    targets = np.concatenate([ids[:, 1:], np.full((rows, 1), pad_id, np.int32)], axis=1)
    pos, _ = rope_index(ids, attn, np.concatenate(grids) if grids else None, config)
    return SequenceBatch(ids, attn, pos, targets, loss, image_index, vis.arrays() if vis is not None else None)
