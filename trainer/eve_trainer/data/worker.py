"""The stream of one loader worker ("slot") of one rank: windows, shuffle, batches, state.

Shuffling is a bounded window shuffle: the next `shuffle_buffer` positions of the slot's
range are read (raw bytes only, decoded lazily), emitted in an order drawn from
(seed, epoch, rank, slot, window start), then the next window follows. Combined with the
shard shuffle per epoch this mixes about as well as a WebDataset shuffle buffer, but its
state is tiny and exact: (epoch, window start position, its byte offset, how many of the
window's entries were consumed). Restoring re-reads one window with one ranged GET and
replays the permutation - no buffer contents in the checkpoint.

A batch is yielded together with the state *after* it, so the main process can record
exactly what the trainer received, however far the worker has prefetched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from eve_trainer.data.errors import DataError
from eve_trainer.data.plan import (
    EpochLayout,
    Intervals,
    ShardRef,
    group_by_length,
    plan_size,
    slot_range,
    window_permutation,
)
from eve_trainer.data.reader import Entry, Stores, iter_entries
from eve_trainer.data.samples import Prepared, SampleBuilder, collate
from eve_trainer.data.templates import SampleError

log = logging.getLogger("eve_trainer.data")
MIN_SEEN_FOR_SKIP_CHECK = 100


@dataclass
class Context:
    """Everything a slot needs; pickled into each DataLoader worker."""
    stores: Stores
    shards: list[ShardRef]
    total: int
    seed: int
    rank: int
    world_size: int
    slots: int
    micro_batch_size: int
    shuffle_buffer: int
    group_by_length: bool
    max_skip_fraction: float
    builder: SampleBuilder
    pad_id: int
    plans: dict[int, Intervals] = field(default_factory=dict)
    """Epochs planned by a resume on another world size (plan.remaining_plans); others are whole."""


@dataclass
class SlotState:
    epoch: int = 0
    pos: int | None = None
    """Start position of the current window (None: start of the slot range)."""
    byte: int | None = None
    consumed: int = 0
    seen: int = 0
    samples: int = 0
    batches: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    last_skips: list[str] = field(default_factory=list)
    taken: list[int] = field(default_factory=list)
    """Indices of the current window consumed so far (what a resume on another world size skips)."""

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__, skipped=dict(self.skipped), last_skips=list(self.last_skips),
                    taken=list(self.taken))

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> SlotState:
        return cls(**d) if d else cls()


class SlotStream:
    def __init__(self, ctx: Context, slot: int, state: dict[str, Any] | None):
        self.ctx, self.slot = ctx, slot
        self.st = SlotState.from_json(state)
        self.start, self.end = self._range(self.st.epoch)
        if self.end <= self.start and not ctx.plans:
            raise DataError(f"slot {slot} of rank {ctx.rank} has no samples: {ctx.total} samples are "
                            f"too few for world_size={ctx.world_size} x workers={ctx.slots}")
        self._layout: EpochLayout | None = None
        self._gen: Iterator[Entry] | None = None
        self._gen_next: tuple[int, int] | None = None  # (epoch, pos) the live generator yields next
        self._peek: Entry | None = None

    # -- reading windows -------------------------------------------------------------
    def _range(self, epoch: int) -> tuple[int, int]:
        ctx = self.ctx
        return slot_range(plan_size(ctx.plans, epoch, ctx.total), ctx.world_size, ctx.rank, ctx.slots, self.slot)

    def _layout_for(self, epoch: int) -> EpochLayout:
        if self._layout is None or self._layout.epoch != epoch:
            self._layout = EpochLayout(self.ctx.shards, self.ctx.seed, epoch, self.ctx.plans.get(epoch))
        return self._layout

    def _next_entry(self, epoch: int, pos: int, byte: int | None) -> Entry:
        if self._gen_next != (epoch, pos):
            if self._gen is not None:
                self._gen.close()
            self._gen = iter_entries(self.ctx.stores, self._layout_for(epoch), pos, self.end, byte)
            self._peek = None
        if self._peek is not None:
            entry, self._peek = self._peek, None
        else:
            entry = next(self._gen)
        self._gen_next = (epoch, pos + 1)
        return entry

    def _fill(self) -> tuple[list[Entry], list[int]]:
        """Read the window starting at (st.epoch, st.pos, st.byte) and its emit order."""
        st, ctx = self.st, self.ctx
        while (st.pos if st.pos is not None else self.start) >= self.end:  # a planned epoch left this slot nothing
            st.epoch, st.pos, st.byte = st.epoch + 1, None, None
            self.start, self.end = self._range(st.epoch)
        if st.pos is None:
            st.pos, st.byte = self.start, None
        n = min(max(1, ctx.shuffle_buffer), self.end - st.pos)
        entries = [self._next_entry(st.epoch, st.pos + i, st.byte if i == 0 else None) for i in range(n)]
        if st.byte is None and entries[0].byte is not None:
            st.byte = entries[0].byte
        order = window_permutation(n, ctx.seed, st.epoch, ctx.rank, self.slot, st.pos)
        if ctx.group_by_length:
            for e in entries:
                e.prepared = self._prepare(e)  # type: ignore[attr-defined]
            lengths = [ctx.builder.length(e.prepared) if isinstance(e.prepared, Prepared) else 0  # type: ignore[attr-defined]
                       for e in entries]
            order = group_by_length(order, lengths, ctx.micro_batch_size * 16)
        return entries, order

    def _advance(self, n: int) -> None:
        """Move the state to the window after the current one (n entries long)."""
        st = self.st
        nxt = st.pos + n  # type: ignore[operator]
        st.consumed = 0
        st.taken = []
        if nxt >= self.end:
            self._check_skips(final=True)
            self.start, self.end = self._range(st.epoch + 1)
            st.epoch, st.pos, st.byte = st.epoch + 1, self.start, None
        else:
            st.pos, st.byte = nxt, None
            if self._gen_next == (st.epoch, nxt):  # peek the next sample for its byte offset
                if self._peek is None:
                    self._peek = next(self._gen)  # type: ignore[arg-type]
                st.byte = self._peek.byte

    # -- processing ------------------------------------------------------------------
    def _prepare(self, e: Entry) -> Prepared | SampleError:
        if e.raw is None:
            return SampleError(e.reason)
        try:
            return self.ctx.builder.prepare(e.raw)
        except SampleError as err:
            return err

    def _process(self, e: Entry) -> dict[str, Any] | None:
        st = self.st
        st.seen += 1
        prep = getattr(e, "prepared", None) or self._prepare(e)
        try:
            if isinstance(prep, SampleError):
                raise prep
            return self.ctx.builder.finish(prep)
        except SampleError as err:
            st.skipped[err.reason] = st.skipped.get(err.reason, 0) + 1
            where = f"{e.shard}:{e.raw.key if e.raw else f'#{e.pos}'}"
            st.last_skips = (st.last_skips + [f"{where} ({err.reason})"])[-3:]
            log.warning("skipped sample %s: %s", where, err)
            self._check_skips(final=False)
            return None

    def _check_skips(self, final: bool) -> None:
        st, frac = self.st, self.ctx.max_skip_fraction
        bad = sum(st.skipped.values())
        if bad and (st.seen >= MIN_SEEN_FOR_SKIP_CHECK or final) and bad > frac * st.seen:
            raise DataError(f"{bad} of {st.seen} samples skipped ({bad / st.seen:.1%}) on rank "
                            f"{self.ctx.rank}, worker {self.slot}, more than data.max_skip_fraction="
                            f"{frac}; last: {'; '.join(st.last_skips)}. Fix or re-convert these shards.")

    def batches(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """Endless (batch, state after the batch) pairs across epochs."""
        st, ctx = self.st, self.ctx
        pending: list[dict[str, Any]] = []
        while True:
            entries, order = self._fill()
            while st.consumed < len(order):
                entry = entries[order[st.consumed]]
                st.consumed += 1
                st.taken.append(entry.pos)
                sample = self._process(entry)
                if sample is None:
                    continue
                pending.append(sample)
                if len(pending) == ctx.micro_batch_size:
                    if st.consumed == len(order):
                        self._advance(len(order))
                    st.samples += len(pending)
                    st.batches += 1
                    yield collate(pending, ctx.pad_id, ctx.builder.pack_length), st.to_json()
                    pending = []
                    if st.consumed == 0:
                        break
            else:
                self._advance(len(order))
