"""`build_loader`: the training data loader of one rank, with exact mid-epoch resume.

Each DataLoader worker runs one slot stream (worker.py) and yields (batch, state after
it). PyTorch hands batches of an IterableDataset to the trainer round-robin over the
workers (worker i % W gives batch i, in order, and our workers never run dry), so the
loader's position is: the last state the *trainer received* from every slot, plus which
slot gives the next batch. Prefetched batches are not in it. On restore, physical worker
j runs slot (j + next_slot) % W, so the round-robin continues exactly where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

from eve_trainer.data.errors import DataError
from eve_trainer.data.index import DatasetIndex
from eve_trainer.data.plan import ShardRef, per_rank
from eve_trainer.data.reader import Stores
from eve_trainer.data.samples import SampleBuilder
from eve_trainer.data.worker import Context, SlotState, SlotStream

STATE_VERSION = 1

log = logging.getLogger("eve_trainer.data")

try:
    import torch.utils.data as _tud

    _IterableBase: type = _tud.IterableDataset
except ImportError:  # pragma: no cover - the loader needs torch; imports stay cheap without
    _IterableBase = object


class _SlotsDataset(_IterableBase):  # type: ignore[misc, valid-type]
    def __init__(self, ctx: Context, states: list[dict[str, Any] | None], rotation: int):
        self.ctx, self.states, self.rotation = ctx, states, rotation

    def __iter__(self) -> Iterator[tuple[str, int, Any, Any]]:
        import torch.utils.data as tud

        info = tud.get_worker_info()
        physical = info.id if info is not None else 0
        slot = (physical + self.rotation) % self.ctx.slots
        try:
            stream = SlotStream(self.ctx, slot, self.states[slot])
            for batch, state in stream.batches():
                yield "batch", slot, batch, state
        except DataError as err:  # re-raised cleanly in the main process, not as a worker traceback
            yield "error", slot, str(err), None


def _worker_init(_: int) -> None:
    """One thread per worker; and keep glibc from returning every freed multi-MB image
    buffer to the OS (mmap threshold), so the next batch reuses it instead of paying
    page faults on ~60 MB of fresh memory per 672-px batch."""
    import ctypes

    import torch

    torch.set_num_threads(1)
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 256 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 512 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc: keep the defaults
        pass


class EveLoader:
    """Endless iterable of batches; `state_dict()` is the position of what was yielded."""

    def __init__(self, ctx: Context, num_workers: int, fingerprint: str):
        self.ctx, self.num_workers, self.fingerprint = ctx, num_workers, fingerprint
        self._states: list[dict[str, Any] | None] = [None] * ctx.slots
        self._next_slot = 0
        self._batches = 0

    @property
    def samples_per_epoch(self) -> int:
        """Sample positions this rank reads per epoch (the same on every rank)."""
        return per_rank(self.ctx.total, self.ctx.world_size)

    @property
    def steps_per_epoch(self) -> int:
        return self.samples_per_epoch // self.ctx.micro_batch_size

    @property
    def total_samples(self) -> int:
        return self.ctx.total

    def __iter__(self) -> Iterator[dict[str, Any]]:
        dataset = _SlotsDataset(self.ctx, list(self._states), self._next_slot)
        if self.num_workers == 0:
            source: Any = iter(dataset)
        else:
            from torch.utils.data import DataLoader

            source = iter(DataLoader(dataset, batch_size=None, num_workers=self.num_workers,
                                     prefetch_factor=2, worker_init_fn=_worker_init, in_order=True))
        for kind, slot, payload, state in source:
            if kind == "error":
                raise DataError(payload)
            self._states[slot] = state
            self._next_slot = (slot + 1) % self.ctx.slots
            self._batches += 1
            yield payload

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "rank": self.ctx.rank, "world_size": self.ctx.world_size,
                "workers": self.ctx.slots, "micro_batch_size": self.ctx.micro_batch_size,
                "seed": self.ctx.seed, "fingerprint": self.fingerprint, "next_slot": self._next_slot,
                "batches": self._batches, "slots": [dict(s) if s else None for s in self._states],
                "plans": {str(e): [list(iv) for iv in p] for e, p in self.ctx.plans.items()},
                "delivered": self.delivered}

    @property
    def delivered(self) -> int:
        """Samples this rank handed to the trainer (all epochs); summed over ranks, the global count."""
        return sum(SlotState.from_json(s).samples for s in self._states)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position; the next `iter(loader)` continues from it."""
        want = {"version": STATE_VERSION, "rank": self.ctx.rank, "world_size": self.ctx.world_size,
                "workers": self.ctx.slots, "micro_batch_size": self.ctx.micro_batch_size,
                "seed": self.ctx.seed, "fingerprint": self.fingerprint}
        diff = [f"{k}: checkpoint {state.get(k)!r} != now {v!r}" for k, v in want.items() if state.get(k) != v]
        if diff:
            raise DataError("the data-loader state in the checkpoint does not match this run ("
                            + "; ".join(diff) + "); resume with the same data, seed, world size, "
                            "data.num_workers and micro_batch_size")
        self._states = [dict(s) if s else None for s in state["slots"]]
        self._next_slot = int(state["next_slot"])
        self._batches = int(state.get("batches", 0))
        self.ctx.plans = {int(e): [tuple(iv) for iv in p] for e, p in state.get("plans", {}).items()}

    def load_resharded(self, states: list[dict[str, Any]]) -> dict[str, Any]:
        """Continue from the loader states of *every* rank of a run with another world size,
        worker count or micro batch: the epoch in progress is re-split over this run's ranks
        by what is left of it (plan.remaining_plans), so each of its samples is still seen
        exactly once. Same data and seed are required. Returns facts for the resume event."""
        from eve_trainer.data.plan import remaining_plans

        old = states[0]
        want = {"version": STATE_VERSION, "seed": self.ctx.seed, "fingerprint": self.fingerprint}
        diff = [f"{k}: checkpoint {old.get(k)!r} != now {v!r}" for k, v in want.items() if old.get(k) != v]
        if diff or len(states) != old.get("world_size"):
            raise DataError("the data-loader state in the checkpoint does not match this run (" + "; ".join(diff)
                            + "); resume with the same data.urls and seed")
        plans = {int(e): [tuple(iv) for iv in p] for e, p in old.get("plans", {}).items()}
        try:
            epoch, left = remaining_plans([s["slots"] for s in states], total=self.ctx.total,
                                          world_size=len(states), slots=int(old["workers"]), plans=plans)
        except ValueError as err:
            raise DataError(str(err)) from None
        self.ctx.plans = left
        self._states = [{"epoch": epoch} for _ in range(self.ctx.slots)]
        self._next_slot, self._batches = 0, 0
        n = sum(b - a for a, b in left[epoch])
        lost = n % self.ctx.world_size
        if lost:
            log.warning("epoch %d has %d samples left, not a multiple of world_size=%d: %d of them are not "
                        "seen this epoch (an even split is required; they are seen in later epochs)",
                        epoch, n, self.ctx.world_size, lost)
        return {"epoch": epoch, "left_in_epoch": n, "not_seen": lost,
                "delivered_before": sum(int(s.get("delivered", 0)) for s in states)}

    @property
    def stats(self) -> dict[str, Any]:
        """Counts over what was yielded so far (restored with the state)."""
        states = [SlotState.from_json(s) for s in self._states]
        skipped: dict[str, int] = {}
        for s in states:
            for k, v in s.skipped.items():
                skipped[k] = skipped.get(k, 0) + v
        return {"samples": sum(s.samples for s in states), "seen": sum(s.seen for s in states),
                "skipped": skipped, "skipped_total": sum(skipped.values()), "batches": self._batches,
                "epoch": min(s.epoch for s in states), "samples_per_epoch": self.samples_per_epoch}


def build_loader(data: Any, *, storage: Any = None, tokenizer: Any, processor: Any,
                 micro_batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 42) -> EveLoader:
    """The loader of one rank; fails early (DataError/StorageError naming the URL) on bad data URLs."""
    from eve_contract.storage import open_store

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not data.urls:
        raise DataError("data.urls is empty: set data.urls=[s3://bucket/dataset] (dataset roots with index.json)")
    if not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is outside world_size {world_size}")
    endpoint = getattr(storage, "endpoint_url", None)
    region = getattr(storage, "region", None)
    shards: list[ShardRef] = []
    for i, url in enumerate(data.urls):
        store = open_store(url, endpoint_url=endpoint, region=region)
        if url.startswith("s3://"):
            store.check()
        index = DatasetIndex.read(store)
        shards.extend(ShardRef(i, s.name, s.samples) for s in index.shards)
    total = sum(s.samples for s in shards)
    slots = max(1, data.num_workers)
    if total // world_size < slots:
        raise DataError(f"{total} samples in {', '.join(data.urls)} are too few for world_size={world_size} "
                        f"x data.num_workers={data.num_workers}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ctx = Context(stores=Stores(list(data.urls), endpoint, region), shards=shards, total=total, seed=seed,
                  rank=rank, world_size=world_size, slots=slots, micro_batch_size=micro_batch_size,
                  shuffle_buffer=data.shuffle_buffer, group_by_length=data.group_by_length,
                  max_skip_fraction=data.max_skip_fraction,
                  builder=SampleBuilder(tokenizer, processor, data.template, data.max_length,
                                          pack=data.pack), pad_id=pad_id)
    blob = json.dumps([list(data.urls), [(s.source, s.name, s.samples) for s in shards]]).encode()
    return EveLoader(ctx, data.num_workers, hashlib.sha256(blob).hexdigest()[:16])
