"""Grain access to a HopChain dataset: a RandomAccessDataSource and a sharded, shuffled loader.

Each element is a dict:
  image     uint8 [H, W, 3]
  question  str
  answer    float64 scalar (the exact number; integers stay exact below 2**53)
  id        str        record id
  variant   str        "full" | "half" | "single"
  record    bytes      the whole schema-v2 record as UTF-8 JSON (hops, rationale, instances, ...)
"""
from __future__ import annotations

import json
import os

import grain
import numpy as np

from hopchain_jax.data.store import HopChainDataset


class HopChainSource(grain.sources.RandomAccessDataSource):
    """Random access over records; opens every TensorStore array eagerly (a lazy open raced under
    Grain's thread pool, SPEC §7) and has a stable repr (Grain compares it on restore)."""

    def __init__(self, root: str | os.PathLike):
        self._root = str(root)
        self._ds = HopChainDataset(root)

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, index: int) -> dict:
        raw = self._ds.record_bytes(int(index))
        rec = json.loads(raw)
        return {
            "image": self._ds.image_of(rec),
            "question": rec["question"],
            "answer": np.float64(rec["answer"]),
            "id": rec["id"],
            "variant": rec["variant"],
            "record": raw,
        }

    @property
    def dataset(self) -> HopChainDataset:
        """The underlying dataset (labels, images by shard)."""
        return self._ds

    def __repr__(self) -> str:
        return f"HopChainSource(root={self._root!r}, records={len(self._ds)})"


def make_loader(root: str | os.PathLike, *, seed: int = 0, shuffle: bool = True, num_epochs: int | None = 1,
                worker_count: int = 0, shard_options: grain.sharding.ShardOptions | None = None,
                operations=()) -> grain.DataLoader:
    """A deterministic, checkpointable Grain DataLoader over `root`.

    shard_options: default shards by JAX process (each process reads a disjoint 1/process_count of the
    records, dropping the remainder so every process sees the same number of steps).
    """
    source = HopChainSource(root)
    shard_options = shard_options or grain.sharding.ShardByJaxProcess(drop_remainder=True)
    sampler = grain.samplers.IndexSampler(len(source), shard_options=shard_options, shuffle=shuffle,
                                          num_epochs=num_epochs, seed=seed)
    return grain.DataLoader(data_source=source, sampler=sampler, operations=operations, worker_count=worker_count)
