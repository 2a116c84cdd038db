"""Rank and world from the launcher's environment, and the process group.

The node launcher (eve-launch) and torchrun set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT. Started without them, under the PET_* variables only, the global rank is derived from
the node rank and the processes per node: eve_contract.topology.rank_info, the launcher's rule
(an elastic range such as PET_NNODES=1:4 is an error there and here).
One process drives one GPU; on CPU the backend is gloo.
"""

from __future__ import annotations

import datetime
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from eve_contract.topology import TopologyError, rank_info
from eve_trainer.config import ConfigError

#: Seconds between "still waiting in the rendezvous" lines.
RENDEZVOUS_REPORT_S = float(os.environ.get("EVE_RENDEZVOUS_REPORT_S", "10"))


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DistInfo:
        """The rule of eve_contract.topology.rank_info (the launcher's, one definition); a bad
        env is the user's error (exit 2)."""
        try:
            info = rank_info(os.environ if env is None else env)
        except TopologyError as err:
            raise ConfigError(f"environment: {err}") from None
        return cls(rank=info.rank, world_size=info.world_size, local_rank=info.local_rank)


def init_process_group(info: DistInfo, *, timeout_s: float = 1800.0, collective_timeout_s: float | None = None) -> str:
    """Start torch.distributed (also for world 1: DeepSpeed needs a group). Returns the device.

    `timeout_s` bounds the rendezvous (pods start minutes apart while images pull);
    `collective_timeout_s` then bounds every collective, also on the groups DeepSpeed creates
    later, so a dead or hung peer ends the other ranks in minutes (exit 1, retried)."""
    import torch
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s)
    # DeepSpeed reads these itself; with PET_* only (or a single process) they are derived here
    for var, value in (("RANK", info.rank), ("WORLD_SIZE", info.world_size), ("LOCAL_RANK", info.local_rank)):
        os.environ.setdefault(var, str(value))
    if torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank)
        device, backend = f"cuda:{info.local_rank}", "nccl"
    else:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        device, backend = "cpu", "gloo"
    if dist.is_initialized():
        return device
    if info.world_size == 1:
        # no rendezvous needed: a private in-memory store, so no port is taken
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    else:
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if not os.environ.get(var):
                raise ConfigError(f"{var} is not set; a {info.world_size}-rank run needs a rendezvous address")
        with _saying_while_waiting(info, timeout_s):
            dist.init_process_group(backend, rank=info.rank, world_size=info.world_size, timeout=timeout)
    if collective_timeout_s is not None:
        set_collective_timeout(collective_timeout_s)
    return device


def set_collective_timeout(seconds: float) -> None:
    """The timeout of collectives on the default group and on every group created after this
    (torch gives new groups its module default, 30 min for gloo, not the default group's)."""
    import torch.distributed.distributed_c10d as c10d

    timeout = datetime.timedelta(seconds=seconds)
    c10d.default_pg_timeout = timeout
    if getattr(c10d, "default_pg_nccl_timeout", None) is not None:
        c10d.default_pg_nccl_timeout = timeout
    if c10d.is_initialized():
        c10d._set_pg_timeout(timeout)


def collective_timeout_s() -> float:
    import torch.distributed.distributed_c10d as c10d

    return c10d.default_pg_timeout.total_seconds()


@contextmanager
def _saying_while_waiting(info: DistInfo, timeout_s: float, every_s: float = RENDEZVOUS_REPORT_S) -> Iterator[None]:
    """While this rank waits in the rendezvous, say where, for how many ranks and how long.

    A rank whose peers never start (a wrong world size, a pod that is not scheduled) would
    otherwise wait silently for the whole process-group timeout.
    """
    where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
    done = threading.Event()
    t0 = time.monotonic()

    def report() -> None:
        while not done.wait(every_s):
            print(f"rank {info.rank}: waiting at {where} for all {info.world_size} ranks to join "
                  f"({time.monotonic() - t0:.0f} s so far; gives up after {timeout_s:.0f} s)",
                  file=sys.stderr, flush=True)

    thread = threading.Thread(target=report, name="rendezvous-report", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        waited = time.monotonic() - t0
        if waited >= every_s:
            print(f"rank {info.rank}: all {info.world_size} ranks joined at {where} after {waited:.0f} s",
                  file=sys.stderr, flush=True)


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_min(flag: bool) -> bool:
    """True only when every rank passes True."""
    return all(all_gather_object(bool(flag)))


def destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def shutdown_quietly() -> None:
    """On a process's way out (eve-train, eve-eval): destroy the process group if torch was ever
    loaded, ignoring errors (exiting anyway); never imports torch for a process that did not."""
    if "torch.distributed" not in sys.modules:
        return
    try:
        destroy_process_group()
    except Exception:  # noqa: BLE001 - exiting anyway
        pass
