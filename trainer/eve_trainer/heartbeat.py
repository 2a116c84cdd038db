"""Liveness of one rank: a heartbeat in the store every few seconds, and a stack dump on demand.

    beat = HeartbeatWriter(store, pipeline=..., stage=..., rank=r, every_s=30)
    beat.start()                       # writes phase "startup" at once, then every `every_s`
    beat.update(step=5, total_steps=100, loss=2.1, tokens_per_s=9e3, phase="train")
    beat.loop_started(step=0)          # goodput: the step loop begins (resumed at `step`)
    beat.add_time("step", 0.8)         # goodput: cumulative timers ("step", "data", "checkpoint", "eval")
    beat.validated(step=50, loss=2.3)  # the newest validation pass: val_loss/val_step in every later beat
    beat.close("done")                 # the last beat, written before the process ends

The beat (layout.Heartbeat at layout.heartbeat_key) is written by a daemon thread from the
latest `update`, so a step never waits for S3; a failed write is logged (once per streak of
failures) and never fatal. Stall detection (operator, local runner) reads the beats: a
stage whose ranks' `step` stops advancing is stalled, even while the beats keep coming.

`install_stack_dump()` registers SIGUSR1 with faulthandler: `kill -USR1 <pid>` writes every
thread's Python stack to stderr (the rank log) without stopping the process, even when the
main thread is blocked in a collective or a read. The stall handling sends it before a restart.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from eve_contract import layout
from eve_contract.layout import Heartbeat
from eve_contract.storage import ObjectStore

log = logging.getLogger("eve_trainer.heartbeat")

#: the signal that dumps every thread's stack to the rank log
DUMP_SIGNAL = signal.SIGUSR1


def install_stack_dump(sig: int = DUMP_SIGNAL) -> None:
    faulthandler.register(sig, file=sys.stderr, all_threads=True, chain=False)


def attempt_from_env() -> int:
    try:
        return int(os.environ.get("EVE_ATTEMPT", "0") or 0)
    except ValueError:
        return 0


class HeartbeatWriter:
    def __init__(self, store: ObjectStore, *, pipeline: str, stage: str, rank: int, every_s: float,
                 attempt: int | None = None):
        self.store, self.key = store, layout.heartbeat_key(pipeline, stage, rank)
        self.every_s = every_s
        self.beat = Heartbeat(rank=rank, step=0, total_steps=0,
                              attempt=attempt_from_env() if attempt is None else attempt, phase="startup",
                              started_at=process_started_at())
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self._first: tuple[int, float] | None = None  # (step, time) of the first step of this attempt
        self.writes = 0

    @property
    def enabled(self) -> bool:
        return self.every_s > 0

    def start(self) -> None:
        if not self.enabled or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="eve-heartbeat", daemon=True)
        self._thread.start()

    def update(self, *, step: int | None = None, total_steps: int | None = None, loss: float | None = None,
               tokens_per_s: float | None = None, phase: str | None = None) -> None:
        """Record progress (cheap: no I/O). A phase change is written at once."""
        now = time.time()
        with self._lock:
            b = self.beat
            if step is not None:
                b.step = step
                if self._first is None:
                    self._first = (step, now)
                elif step > self._first[0] and b.total_steps:
                    per_step = (now - self._first[1]) / (step - self._first[0])
                    b.eta_s = round(per_step * max(0, b.total_steps - step), 1)
            if total_steps is not None:
                b.total_steps = total_steps
            if loss is not None:
                b.loss = float(loss)
            if tokens_per_s is not None:
                b.tokens_per_s = float(tokens_per_s)
            if phase is not None and phase != b.phase:
                b.phase = phase
                self._wake.set()

    def validated(self, *, step: int, loss: float) -> None:
        """A validation pass finished at `step`: its loss rides in this and every later beat (written at once)."""
        with self._lock:
            self.beat.val_loss, self.beat.val_step = float(loss), step
        self._wake.set()

    def loop_started(self, step: int) -> None:
        """The step loop begins at `step` (0, or the step resumed from): goodput's timers start."""
        with self._lock:
            self.beat.loop_at, self.beat.start_step = time.time(), step
            self.beat.timers = {}

    def add_time(self, part: str, seconds: float) -> None:
        """Add to a cumulative goodput timer: "step", "data", "checkpoint" or "eval"."""
        with self._lock:
            self.beat.timers[part] = round(self.beat.timers.get(part, 0.0) + max(0.0, seconds), 6)

    def timer(self, part: str) -> float:
        with self._lock:
            return self.beat.timers.get(part, 0.0)

    def close(self, phase: str = "done", timeout_s: float = 10.0) -> None:
        """Write a last beat with `phase` (bounded by timeout_s) and stop the thread."""
        if self._thread is None:
            return
        with self._lock:
            self.beat.phase = phase
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)
        self._thread = None

    def _run(self) -> None:
        while True:
            stopping = self._stop.is_set()  # read before the write: a close during it gets one more
            self._write()
            if stopping:
                return
            self._wake.wait(self.every_s)
            self._wake.clear()

    def _write(self) -> None:
        with self._lock:
            self.beat.time = time.time()
            blob = self.beat.to_json()
        try:
            self.store.put_bytes(self.key, blob)
            self.writes += 1
            if self._failing:
                log.warning("heartbeat %s/%s written again", self.store.url, self.key)
            self._failing = False
        except Exception as err:  # noqa: BLE001 - liveness reporting must never end the job
            if not self._failing:
                log.warning("could not write heartbeat %s/%s: %s (training goes on; retrying every %.0f s)",
                            self.store.url, self.key, err, self.every_s)
            self._failing = True


def process_started_at() -> float:
    """When this process started (epoch seconds): goodput's boundary between queued and starting."""
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:  # noqa: BLE001 - no psutil: the heartbeat writer's creation, a little later
        return time.time()


def hang_forever(step: int, rank: int) -> Any:
    """debug.hang_at_step: block like a deadlocked collective. The heartbeat thread keeps
    beating with the same step (the process is alive, the step does not advance); SIGUSR1
    dumps the stacks; only SIGKILL ends it."""
    log.warning("debug.hang_at_step=%d: rank %d blocks forever now", step, rank)
    threading.Event().wait()
