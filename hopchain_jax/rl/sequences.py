"""Packing prompts + responses into fixed-shape training batches.

A training row is one sequence `prompt_ids + response_ids`, right-padded to a length bucket:
  input_ids      int32 [N, T]
  attention_mask bool  [N, T]   real tokens
  position_ids   int32 [3, N, T] M-RoPE positions (rope.rope_index)
  targets        int32 [N, T]   input_ids shifted left: targets[t] = input_ids[t + 1]
  loss_mask      bool  [N, T]   True where targets[t] is a response token (what the loss trains)
  image_index    int32 [N, T]   feature row of each image token (rows of one prompt share its image)
  vision         dict           packed images of the batch's distinct prompts (vision.prepare_vision_inputs)
  loss_cols      int32 [N, R]   the positions t of each row's loss tokens, padded with T - 1 (never a loss
                                position); R = loss_cols_bucket(most loss tokens of a row), so the LM head
                                and its log-softmax run on N x R positions instead of N x T (prompt tokens
                                and padding need no logits). None when R would not be below T.
Shapes are bucketed so a run compiles a handful of step shapes: the length to the next of
LENGTH_BUCKETS (or a multiple of `length_bucket` when one is given), patches to a power of two.
`pack_micro` stacks K micro-batches ([K, N, T], images padded to one patch count) for gradient
accumulation.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from hopchain_jax.models.config import QwenVLConfig
from hopchain_jax.models.rope import rope_index
from hopchain_jax.models.vision import (fill_image_index, pack_images, padded_patches, patch_bucket,
                                       prepare_vision_inputs)

# Training sequence lengths (prompt + response + 1), in tokens. Past the last: multiples of it.
LENGTH_BUCKETS = (128, 256, 512, 1024, 1536, 2048, 3072, 4096, 6144, 8192)


def loss_cols_bucket(n: int, minimum: int = 0) -> int:
    """Columns of loss_cols for rows of at most n loss tokens: the next power of two >= max(n, minimum, 16)."""
    return 1 << (max(n, minimum, 16) - 1).bit_length()


def _loss_cols(loss: np.ndarray, minimum: int = 0) -> np.ndarray | None:
    """loss_cols of a [N, T] loss mask (see the module docstring), or None when R >= T."""
    rows, t = loss.shape
    r = loss_cols_bucket(int(loss.sum(1).max(initial=0)), minimum)
    if r >= t:
        return None
    cols = np.full((rows, r), t - 1, np.int32)
    for i in range(rows):
        where = np.flatnonzero(loss[i])
        cols[i, :len(where)] = where
    return cols


def length_bucket_for(n: int, length_bucket: int | None = None) -> int:
    """The padded length of a row of n tokens."""
    if length_bucket:
        return -(-n // length_bucket) * length_bucket
    for b in LENGTH_BUCKETS:
        if n <= b:
            return b
    return -(-n // LENGTH_BUCKETS[-1]) * LENGTH_BUCKETS[-1]


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
    loss_cols: np.ndarray | None = None

    def arrays(self) -> dict:
        # Not dataclasses.asdict: that deep-copies every array (pixel patches included) per minibatch.
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


def pack(prompts: Sequence[Prompt], prompt_of_row: Sequence[int], responses: Sequence[Sequence[int]],
         config: QwenVLConfig, *, pad_id: int = 0, length_bucket: int | None = None, min_length: int = 0,
         num_patches: int | None = None, min_loss_cols: int = 0) -> SequenceBatch:
    """Rows r = prompts[prompt_of_row[r]] + responses[r]. Only prompts some row uses are encoded.
    num_patches: the images' pad target (default their own bucket; see vision.prepare_vision_inputs).
    min_loss_cols: loss_cols has at least this many columns (e.g. the longest response allowed, so every
    step has one shape)."""
    rows = len(responses)
    vision_ids = np.asarray(config.vision_token_ids, np.int64)
    bad = [r for r, resp in enumerate(responses) if np.isin(np.asarray(resp, np.int64), vision_ids).any()]
    if bad:   # packing would read them as an image run (a crash in rope_index, or wrong features)
        raise ValueError(f"responses of rows {bad[:8]} hold vision placeholder ids {config.vision_token_ids}; a "
                         "response must be text: drop such responses first (the trainer does, and the engine "
                         "never samples these ids)")
    lengths = [len(prompts[p].prompt_ids) + len(resp) for p, resp in zip(prompt_of_row, responses)]
    t = length_bucket_for(max(max(lengths) + 1, min_length), length_bucket)
    ids = np.full((rows, t), pad_id, np.int32)
    attn = np.zeros((rows, t), bool)
    loss = np.zeros((rows, t), bool)
    used = sorted(set(prompt_of_row))
    vis, starts = pack_images([(prompts[p].pixel_values, prompts[p].image_grid_thw)
                               if prompts[p].image_grid_thw is not None else None for p in used], config,
                              num_patches)
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
    if vis is None and num_patches:   # a text-only micro-batch among image ones: an all-padding tower input
        vis = prepare_vision_inputs(np.zeros((0, config.vision.patch_dim), np.float32), np.zeros((0, 3), np.int64),
                                    config, num_patches)
    return SequenceBatch(ids, attn, pos, targets, loss, image_index, vis.arrays() if vis is not None else None,
                         _loss_cols(loss, min_loss_cols))


def micro_groups(rows: int, micro_batches: int) -> list[range]:
    """The rows of each micro-batch: consecutive equal groups."""
    per = rows // micro_batches
    return [range(i * per, (i + 1) * per) for i in range(micro_batches)]


def encoded_grids(prompts: Sequence[Prompt], prompt_of_row: Sequence[int], micro_batches: int) -> list[list[np.ndarray]]:
    """Per micro-batch, the image grids its tower input encodes (each distinct prompt's images once)."""
    return [[np.asarray(prompts[p].image_grid_thw) for p in sorted({prompt_of_row[r] for r in g})
             if prompts[p].image_grid_thw is not None] for g in micro_groups(len(prompt_of_row), micro_batches)]


def pack_micro(prompts: Sequence[Prompt], prompt_of_row: Sequence[int], responses: Sequence[Sequence[int]],
               config: QwenVLConfig, micro_batches: int, *, pad_id: int = 0, length_bucket: int | None = None,
               min_length: int = 0, min_patches: int = 0, min_loss_cols: int = 0) -> SequenceBatch:
    """The rows split into `micro_batches` consecutive groups, each packed with its own images, stacked:
    every array gains a leading [K] axis (same T and patch count in every micro-batch). min_length /
    min_patches: pad to at least this many tokens per row / patches per micro-batch (rounded up to their
    buckets; patches also when the rows have no image), so batches of different sizes share one shape."""
    rows = len(responses)
    if rows % micro_batches:
        raise ValueError(f"{rows} rows do not split into {micro_batches} equal micro-batches")
    groups = micro_groups(rows, micro_batches)
    lengths = [len(prompts[p].prompt_ids) + len(r) for p, r in zip(prompt_of_row, responses)]
    t = max(max(lengths) + 1, min_length)
    grids = encoded_grids(prompts, prompt_of_row, micro_batches)
    patches = [padded_patches(np.concatenate([g.reshape(-1, 3) for g in gs] or [np.zeros((0, 3))]), config)
               for gs in grids]
    if min_patches:
        patches.append(patch_bucket(min_patches, config))
    num_patches = max(patches) if any(grids) or min_patches else None
    most_loss = max((len(r) for r in responses), default=0)   # every micro-batch gets the same loss_cols width
    parts = [pack(prompts, [prompt_of_row[r] for r in g], [responses[r] for r in g], config, pad_id=pad_id,
                  length_bucket=length_bucket, min_length=t, num_patches=num_patches,
                  min_loss_cols=max(min_loss_cols, most_loss)) for g in groups]
    if any(b.loss_cols is None for b in parts):   # one micro-batch would not gain: none uses the gather
        parts = [dataclasses.replace(b, loss_cols=None) for b in parts]
    stacked = {f.name: None if getattr(parts[0], f.name) is None else np.stack([getattr(b, f.name) for b in parts])
               for f in dataclasses.fields(SequenceBatch) if f.name != "vision"}
    vision = None if parts[0].vision is None else {k: np.stack([b.vision[k] for b in parts]) for k in parts[0].vision}
    return SequenceBatch(**stacked, vision=vision)
