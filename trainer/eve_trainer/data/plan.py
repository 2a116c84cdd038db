"""Epoch plans: which samples a (rank, loader worker) reads in an epoch. Pure, torch-free.

Policy (documented in docs/data.md):
- Epoch `e` orders the shards of all datasets with `Random(f"{seed}/{e}")`; the same on
  every rank. The sample positions of that order are numbered 0..total-1.
- Rank r takes positions [r*P, (r+1)*P) with P = total // world_size: every rank reads
  exactly P positions per epoch and no two ranks share a sample; the last total % world
  samples of the epoch's order are dropped (a different tail each epoch).
- A rank's range is cut into `W = max(1, num_workers)` contiguous slot ranges, one per
  loader worker, so a range boundary inside a shard costs one partial read per epoch.
- Another world size (or worker count, or micro batch) on resume: `remaining_plans` takes
  every old slot's position and gives the epoch(s) in progress a plan of what is left, as
  sorted [a, b) intervals of epoch positions. The ranges above are then cut from the plan's
  index space (index i = the i-th position left), so every sample of the epoch is still seen
  exactly once; later epochs are whole again. Only `left % world_size` samples of that epoch
  can be lost (the split must be even), and the loader warns when that happens.
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


Intervals = list[tuple[int, int]]
"""Sorted, disjoint [a, b) ranges of epoch positions: an epoch's plan (None = all of it)."""


class IndexMap:
    """The index space of an epoch plan: index i is the i-th position of the plan."""

    def __init__(self, intervals: Intervals | None, total: int):
        self.intervals = [(int(a), int(b)) for a, b in intervals] if intervals is not None else [(0, total)]
        self.starts: list[int] = []
        acc = 0
        for a, b in self.intervals:
            self.starts.append(acc)
            acc += b - a
        self.size = acc

    def position(self, i: int) -> int:
        k = bisect.bisect_right(self.starts, i) - 1
        return self.intervals[k][0] + i - self.starts[k]

    def positions(self, lo: int, hi: int) -> Intervals:
        """Index range [lo, hi) as position intervals."""
        out: Intervals = []
        for (a, b), s in zip(self.intervals, self.starts):
            x, y = max(lo, s), min(hi, s + b - a)
            if x < y:
                out.append((a + x - s, a + y - s))
        return out


class EpochLayout:
    """Shard order of one epoch with cumulative sample counts, to map positions to shards.
    With a plan (intervals), `locate` takes plan indices instead of positions."""

    def __init__(self, shards: list[ShardRef], seed: int, epoch: int, intervals: Intervals | None = None):
        self.epoch = epoch
        self.order = [shards[i] for i in shard_order(len(shards), seed, epoch)]
        self.starts: list[int] = []
        acc = 0
        for ref in self.order:
            self.starts.append(acc)
            acc += ref.samples
        self.total = acc
        self.index = IndexMap(intervals, acc) if intervals is not None else None

    def locate(self, pos: int) -> tuple[int, int]:
        """Index (= position without a plan) -> (index in self.order, sample offset inside that shard)."""
        if self.index is not None:
            pos = self.index.position(pos)
        j = bisect.bisect_right(self.starts, pos) - 1
        while self.order[j].samples == 0:  # empty shards share their start with the next one
            j += 1
        return j, pos - self.starts[j]


def plan_size(plans: dict[int, Intervals], epoch: int, total: int) -> int:
    """Positions in `epoch` (all of them unless a resume on another world size planned it)."""
    plan = plans.get(epoch)
    return total if plan is None else IndexMap(plan, total).size


def _subtract(whole: Intervals, taken: list[tuple[int, int]]) -> Intervals:
    out: Intervals = []
    cuts = sorted(taken)
    for a, b in whole:
        x = a
        for c, d in cuts:
            if d <= x or c >= b:
                continue
            if c > x:
                out.append((x, c))
            x = max(x, d)
        if x < b:
            out.append((x, b))
    return out


def remaining_plans(slot_states: list[list[dict | None]], *, total: int, world_size: int, slots: int,
                    plans: dict[int, Intervals]) -> tuple[int, dict[int, Intervals]]:
    """What is left of the epoch(s) in progress, from every old (rank, slot) state.

    A slot state (epoch e, window start `pos`, `taken` = indices consumed in that window)
    has consumed, in e, its range up to `pos` plus `taken`, and all of its range in earlier
    epochs. Returns (first epoch not finished, {epoch: intervals left}); the plans cover the
    two epochs a slot can be in at once."""
    states = [s or {} for rank in slot_states for s in rank]
    epochs = [int(s.get("epoch", 0)) for s in states]
    first = min(epochs)
    if max(epochs) > first + 1:
        raise ValueError(f"loader slots are {max(epochs) - first} epochs apart; the dataset is too small for "
                         f"world_size={world_size} x workers={slots}")
    out: dict[int, Intervals] = {}
    for epoch in (first, first + 1):
        index = IndexMap(plans.get(epoch), total)
        consumed: list[tuple[int, int]] = []
        for rank, rank_states in enumerate(slot_states):
            for slot, st in enumerate(rank_states):
                st = st or {}
                lo, hi = slot_range(index.size, world_size, rank, slots, slot)
                e = int(st.get("epoch", 0))
                if e > epoch:
                    consumed += index.positions(lo, hi)
                elif e == epoch and st.get("pos") is not None:
                    consumed += index.positions(lo, int(st["pos"]))
                    consumed += [(p, p + 1) for i in st.get("taken", []) for p in [index.position(int(i))]]
        # what the old split never assigns (total % world_size at its end) stays out, as before
        assigned = [iv for rank in range(world_size) for iv in index.positions(*slot_range(index.size, world_size,
                                                                                            rank, 1, 0))]
        out[epoch] = _subtract(assigned, consumed)
    return first, out


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
