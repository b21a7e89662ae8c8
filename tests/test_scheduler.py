"""Host-side slot bookkeeping of the engine (infer/scheduler.py): admission order, balanced slots,
shard-local compaction, cache-length buckets."""
import numpy as np
import pytest

from hopchain_jax.infer.scheduler import FREE, AdmissionQueue, GenerateStats, SlotPool, bucket, length_bucket


def test_length_buckets_grow_by_at_most_1_5x():
    sizes = sorted({length_bucket(n, 64) for n in range(1, 20000)})
    assert sizes[:8] == [64, 128, 192, 256, 384, 512, 768, 1024]
    assert all(b / a <= 1.5 + 1e-9 for a, b in zip(sizes[1:], sizes[2:]))
    assert all(length_bucket(n, 64) >= n for n in (1, 64, 65, 1000, 6144, 6145))
    assert bucket(3, (1, 2, 4)) == 4 and bucket(9, (1, 2, 4)) == 12


def test_admission_takes_whole_groups_longest_first_and_splits_the_last():
    q = AdmissionQueue([5, 30, 10, 30], n=3)
    assert len(q) == 12
    assert q.take(4) == [(1, [0, 1, 2]), (3, [0])]          # longest limits first, stable among equals
    assert q.take(3) == [(3, [1, 2]), (2, [0])]
    assert q.take(100) == [(2, [1, 2]), (0, [0, 1, 2])]
    assert len(q) == 0 and q.take(5) == []
    fifo = AdmissionQueue([5, 30], n=1, order="fifo")
    assert fifo.take(2) == [(0, [0]), (1, [0])]
    with pytest.raises(ValueError, match="admission order"):
        AdmissionQueue([1], 1, order="random")


def test_slots_are_spread_over_shards_and_released():
    pool = SlotPool(16, shards=4)
    slots = pool.assign(range(6))
    assert sorted(np.bincount([pool.shard_of(s) for s in slots], minlength=4)) == [1, 1, 2, 2]
    assert pool.free_count() == 10 and len(pool.active_slots()) == 6
    pool.release(slots[0])
    assert pool.seq[slots[0]] == FREE and pool.free_count() == 11
    with pytest.raises(RuntimeError, match="no free decode slot"):
        pool.assign(range(100, 112))


def test_compaction_keeps_rows_on_their_shard():
    pool = SlotPool(16, shards=4)                 # 4 rows per shard
    for slot, seq in ((1, 10), (5, 11), (6, 12), (15, 13)):
        pool.seq[slot] = seq
    keep = pool.compaction_plan((1, 2, 4, 8))
    assert keep.shape == (4, 2)                  # shard 1 holds two active rows
    old = pool.old_slots(keep)
    assert all(o // 4 == n // 2 for n, o in enumerate(old))   # nothing leaves its shard
    before = {seq: slot for slot, seq in enumerate(pool.seq) if seq != FREE}
    pool.compact(keep)
    assert pool.rows == 8 and sorted(s for s in pool.seq if s != FREE) == [10, 11, 12, 13]
    assert all(old[new] == before[seq] for new, seq in enumerate(pool.seq) if seq != FREE)
    assert pool.compaction_plan((1, 2, 4, 8)) is None        # already as small as it gets
    pool.release(int(np.flatnonzero(pool.seq == 12)[0]))
    assert pool.compaction_plan((1, 2, 4, 8)).shape == (4, 1)


def test_stats_wasted_fraction():
    s = GenerateStats(row_steps=100, useful_tokens=75, first_tokens=5)
    assert s.wasted_fraction == 0.25 and s.generated_tokens == 80
    assert s.as_dict()["wasted_fraction"] == 0.25
    assert GenerateStats().wasted_fraction == 0.0
