"""Epoch plans: which samples a (rank, loader worker) reads in an epoch. Pure, torch-free.

Policy (documented in docs/data.md):
- Epoch `e` orders the shards of all datasets with `Random(f"{seed}/{e}")`; the same on
  every rank. The sample positions of that order are numbered 0..total-1.
- Rank r takes positions [r*P, (r+1)*P) with P = total // world_size: every rank reads
  exactly P positions per epoch and no two ranks share a sample; the last total % world
  samples of the epoch's order are dropped (a different tail each epoch).
- A rank's range is cut into `W = max(1, num_workers)` contiguous slot ranges, one per
  loader worker, so a range boundary inside a shard costs one partial read per epoch.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class ShardRef:
    source: int
    """Index of the dataset root in DataSection.urls."""
    name: str
    samples: int


def shard_order(n_shards: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n_shards))
    random.Random(f"shards/{seed}/{epoch}").shuffle(order)
    return order


def per_rank(total: int, world_size: int) -> int:
    return total // world_size


def slot_range(total: int, world_size: int, rank: int, slots: int, slot: int) -> tuple[int, int]:
    """[start, end) positions of one loader worker ("slot") of one rank in every epoch."""
    p = per_rank(total, world_size)
    base = rank * p
    return base + (slot * p) // slots, base + ((slot + 1) * p) // slots


class EpochLayout:
    """Shard order of one epoch with cumulative sample counts, to map positions to shards."""

    def __init__(self, shards: list[ShardRef], seed: int, epoch: int):
        self.epoch = epoch
        self.order = [shards[i] for i in shard_order(len(shards), seed, epoch)]
        self.starts: list[int] = []
        acc = 0
        for ref in self.order:
            self.starts.append(acc)
            acc += ref.samples
        self.total = acc

    def locate(self, pos: int) -> tuple[int, int]:
        """Position -> (index in self.order, sample offset inside that shard)."""
        j = bisect.bisect_right(self.starts, pos) - 1
        while self.order[j].samples == 0:  # empty shards share their start with the next one
            j += 1
        return j, pos - self.starts[j]


def window_permutation(n: int, seed: int, epoch: int, rank: int, slot: int, pos: int) -> list[int]:
    """Order in which a shuffle window of `n` positions starting at `pos` is emitted."""
    perm = list(range(n))
    random.Random(f"window/{seed}/{epoch}/{rank}/{slot}/{pos}").shuffle(perm)
    return perm


def group_by_length(order: list[int], lengths: list[int], chunk: int) -> list[int]:
    """LLaVA-style length grouping: within consecutive chunks of the shuffled order, sort
    by length (longest first) so a micro-batch holds samples of similar length."""
    out: list[int] = []
    for i in range(0, len(order), chunk):
        out.extend(sorted(order[i:i + chunk], key=lambda k: -lengths[k]))
    return out
