"""Epoch plans: rank/worker ranges partition each rank's equal share, shard order per (seed, epoch)."""

from __future__ import annotations

import pytest

from eve_trainer.data.plan import EpochLayout, ShardRef, per_rank, shard_order, slot_range


@pytest.mark.parametrize("total,world,slots", [(130, 2, 2), (1000, 8, 4), (17, 3, 1), (64, 4, 4)])
def test_ranges_partition_equal_shares(total: int, world: int, slots: int) -> None:
    p = per_rank(total, world)
    covered = []
    for rank in range(world):
        ranges = [slot_range(total, world, rank, slots, s) for s in range(slots)]
        assert sum(e - s for s, e in ranges) == p  # every rank: exactly floor(total / world)
        covered += [i for s, e in ranges for i in range(s, e)]
    assert covered == list(range(world * p))  # disjoint, contiguous, tail dropped


def test_shard_order_depends_on_seed_and_epoch_only() -> None:
    assert shard_order(50, 1, 0) == shard_order(50, 1, 0)
    assert shard_order(50, 1, 0) != shard_order(50, 1, 1) != shard_order(50, 2, 1)
    shards = [ShardRef(0, f"s{i}", n) for i, n in enumerate([5, 0, 7, 3])]
    layout = EpochLayout(shards, seed=3, epoch=0)
    seen = [(layout.order[j].name, off) for j, off in map(layout.locate, range(15))]
    assert sorted(seen) == sorted((f"s{i}", k) for i, n in enumerate([5, 0, 7, 3]) for k in range(n))
