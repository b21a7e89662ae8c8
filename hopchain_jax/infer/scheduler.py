"""Host-side bookkeeping of the engine's decode slots: which sequence runs where, who waits, what it cost.

The engine decodes a fixed pool of `rows` slots; its KV cache is split over the mesh's batch axes into
`shards` equal blocks of rows (one per batch shard, rows // shards each). Sequences wait in an
AdmissionQueue (one group of n samples per prompt) and are admitted into free slots between decode
chunks; when the queue is empty the pool can be compacted to fewer rows. Compaction and slot choice
stay within a shard, so moving a row never crosses devices:

  - assign() spreads new sequences over the shards with the most free slots (balanced shards keep the
    compacted pool small);
  - compaction_plan() keeps each shard's active rows on that shard: the new pool has
    shards x bucket(max active rows of any shard) rows.

Nothing here touches JAX; the engine (infer/engine.py) turns these plans into device programs.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Sequence

import numpy as np

FREE = -1
ADMISSION_ORDERS = ("longest_first", "fifo")


def bucket(n: int, buckets: Sequence[int]) -> int:
    """Smallest bucket >= n (past the last: a multiple of it)."""
    for b in buckets:
        if n <= b:
            return b
    return -(-n // buckets[-1]) * buckets[-1]


def length_bucket(n: int, base: int) -> int:
    """Smallest of base x (1, 2, 3, 4, 6, 8, 12, 16, ...) >= n: cache lengths with at most 1.5x over-read
    and a logarithmic number of distinct shapes (compiled programs)."""
    k = 1
    while True:
        for m in ((k, k * 3 // 2) if k >= 2 else (k,)):
            if base * m >= n:
                return base * m
        k *= 2


@dataclasses.dataclass
class SampleState:
    """One sample being generated: sample `sample` of prompt `prompt`, at most max_new tokens."""

    prompt: int
    sample: int
    max_new: int
    tokens: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    finish: str | None = None   # None while running; "eos" | "stop" | "length"


def check_admission(order: str) -> None:
    if order not in ADMISSION_ORDERS:
        raise ValueError(f"admission order must be one of {ADMISSION_ORDERS}, got {order!r}")


class AdmissionQueue:
    """Prompts waiting for decode slots, each with the samples not yet admitted.

    order "longest_first": prompts with the largest token limit first (stable), so the last sequences
    to start are short and the pool drains quickly; "fifo": request order."""

    def __init__(self, max_new: Sequence[int], n: int | Sequence[int], order: str = "longest_first"):
        """max_new: each prompt's token limit; n: samples of every prompt, or each prompt's."""
        check_admission(order)
        ns = [n] * len(max_new) if isinstance(n, int) else list(n)
        if len(ns) != len(max_new):
            raise ValueError(f"{len(ns)} sample counts for {len(max_new)} prompts")
        prompts = range(len(max_new))
        if order == "longest_first":
            prompts = sorted(prompts, key=lambda i: -max_new[i])
        self._waiting = collections.deque((i, list(range(ns[i]))) for i in prompts)

    def __len__(self) -> int:
        return sum(len(samples) for _, samples in self._waiting)

    def take(self, k: int) -> list[tuple[int, list[int]]]:
        """Up to k samples from the front: whole groups, then the first samples of the next group."""
        out = []
        while k > 0 and self._waiting:
            prompt, samples = self._waiting[0]
            now, later = samples[:k], samples[k:]
            out.append((prompt, now))
            k -= len(now)
            if later:
                self._waiting[0] = (prompt, later)
            else:
                self._waiting.popleft()
        return out


class SlotPool:
    """Which sequence (an index into the engine's list) occupies each of `rows` slots."""

    def __init__(self, rows: int, shards: int):
        if rows % shards:
            raise ValueError(f"{rows} slots do not split into {shards} shards")
        self.rows, self.shards = rows, shards
        self.seq = np.full(rows, FREE, np.int64)

    @property
    def per_shard(self) -> int:
        return self.rows // self.shards

    def shard_of(self, slot: int) -> int:
        return slot // self.per_shard

    def active_slots(self) -> np.ndarray:
        return np.flatnonzero(self.seq != FREE)

    def free_count(self) -> int:
        return int(np.sum(self.seq == FREE))

    def assign(self, seq_ids: Sequence[int]) -> list[int]:
        """Free slots for these sequences, each from the shard with the most free slots."""
        free = (self.seq == FREE).reshape(self.shards, self.per_shard)
        counts = free.sum(1)
        slots = []
        for seq_id in seq_ids:
            shard = int(np.argmax(counts))
            if counts[shard] == 0:
                raise RuntimeError("no free decode slot")
            local = int(np.flatnonzero(free[shard])[0])
            free[shard, local] = False
            counts[shard] -= 1
            slot = shard * self.per_shard + local
            self.seq[slot] = seq_id
            slots.append(slot)
        return slots

    def release(self, slot: int) -> None:
        self.seq[slot] = FREE

    def compaction_plan(self, buckets: Sequence[int]) -> np.ndarray | None:
        """keep int [shards, new_per_shard]: the old local slot each new local slot takes (active rows
        first, then free ones as filler), or None when it would not shrink the pool."""
        active = (self.seq != FREE).reshape(self.shards, self.per_shard)
        need = int(active.sum(1).max())
        if need == 0:
            return None
        new_per_shard = bucket(need, buckets)
        if new_per_shard >= self.per_shard:
            return None
        keep = np.zeros((self.shards, new_per_shard), np.int32)
        for shard in range(self.shards):
            order = np.concatenate([np.flatnonzero(active[shard]), np.flatnonzero(~active[shard])])
            keep[shard] = order[:new_per_shard]
        return keep

    def old_slots(self, keep: np.ndarray) -> np.ndarray:
        """Global old slot of every new slot, for a plan of compaction_plan()."""
        return (np.arange(self.shards)[:, None] * self.per_shard + keep).reshape(-1)

    def compact(self, keep: np.ndarray) -> np.ndarray:
        """Apply a compaction plan; returns the old slot of every new slot."""
        old = self.old_slots(keep)
        self.seq = self.seq[old]
        self.rows = len(old)
        return old


@dataclasses.dataclass
class GenerateStats:
    """What one generate() call did. Row-steps are decode slots x decode steps; a useful token is a
    decoded token kept in some output (the first token of each sequence comes from its prefill)."""

    prompts: int = 0
    sequences: int = 0
    pool_rows: int = 0            # slots at the start
    cache_len: int = 0            # slots per row
    decode_chunks: int = 0
    decode_steps: int = 0
    row_steps: int = 0
    useful_tokens: int = 0
    first_tokens: int = 0
    prefill_calls: int = 0
    prefill_rows: int = 0         # prompt rows prefilled (n samples of a prompt share one when admitted together)
    prefill_tokens: int = 0       # real prompt tokens prefilled
    prefill_padded_tokens: int = 0
    compactions: int = 0
    read_lengths: dict[int, int] = dataclasses.field(default_factory=dict)   # cache slots read -> chunks
    seconds: float = 0.0

    @property
    def wasted_fraction(self) -> float:
        """Share of decode row-steps whose token is in no output (free slots, finished rows)."""
        return 1.0 - self.useful_tokens / self.row_steps if self.row_steps else 0.0

    @property
    def generated_tokens(self) -> int:
        return self.useful_tokens + self.first_tokens

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["wasted_fraction"] = self.wasted_fraction
        out["generated_tokens"] = self.generated_tokens
        return out
