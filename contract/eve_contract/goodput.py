"""Goodput: where the wall time of a stage went, and how often to checkpoint. Pure, stdlib only.

    account(segments, now) -> Goodput          one stage (its attempts and restarts), or
    Goodput.total([...])                       a pipeline (the sum of its stages)
    young_daly_steps(save_s, step_s, mtbf_s)   the checkpoint interval that maximises goodput

A stage's time is a **timeline of segments**, one per trainer incarnation: an attempt the
operator submits is one segment; a pod restarted in place inside the same job starts another
(`submitted_at` None). Each segment holds what the operator saw (when it submitted the job, when
the attempt ended) and what rank 0's heartbeat said last (`eve_contract.layout.Heartbeat`: when
every rank's process had started, when the step loop began, at which step, and the trainer's
cumulative timers). The parts tile the wall clock, from the first submission to the end (or now):

- **queued**: job submitted until every rank's process runs (scheduling, image pull, pod start);
- **starting**: until the step loop begins (imports, rendezvous, model build, resume);
- **productive**: step time (forward, backward, optimizer, the step's collectives) of steps
  that were kept;
- **data**: waiting for batches inside steps;
- **checkpoint**: the step loop blocked by saves (with asynchronous saves: the copy off the
  device), the final wait for the last upload, and the export;
- **eval**: validation during training;
- **lost**: step time of steps a later segment redid (it resumed from an earlier checkpoint),
  and the unobserved time between a lost segment's last heartbeat and its end;
- **restart**: from a segment's end until the next attempt is submitted (or a pod restarted in
  place starts again);
- **other**: the rest of the loop (logging, tracking, bookkeeping), the time since the last
  heartbeat of the running segment, and the end of the last one (exit, manifest check).

goodput = productive / wall. `unaccounted` = wall - sum of parts: zero when the timestamps are
consistent; it is not hidden in another part.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

PARTS = ("queued", "starting", "productive", "data", "checkpoint", "eval", "lost", "restart", "other")
#: trainer timer names (layout.Heartbeat.timers) -> segment fields
TIMERS = ("step", "data", "checkpoint", "eval")


class SegmentLike(Protocol):
    submitted_at: float | None
    started_at: float | None
    loop_at: float | None
    start_step: int | None
    step: int | None
    beat_at: float | None
    ended_at: float | None
    step_s: float
    data_s: float
    checkpoint_s: float
    eval_s: float


@dataclass
class Segment:
    """One trainer incarnation of a stage (see the module doc). Times are epoch seconds."""

    submitted_at: float | None = None
    started_at: float | None = None
    loop_at: float | None = None
    start_step: int | None = None
    step: int | None = None
    beat_at: float | None = None
    ended_at: float | None = None
    step_s: float = 0.0
    data_s: float = 0.0
    checkpoint_s: float = 0.0
    eval_s: float = 0.0


@dataclass
class Goodput:
    wall: float = 0.0
    queued: float = 0.0
    starting: float = 0.0
    productive: float = 0.0
    data: float = 0.0
    checkpoint: float = 0.0
    eval: float = 0.0
    lost: float = 0.0
    restart: float = 0.0
    other: float = 0.0
    redone_steps: int = 0
    restarts: int = 0

    @property
    def goodput(self) -> float:
        return self.productive / self.wall if self.wall > 0 else 0.0

    @property
    def parts_sum(self) -> float:
        return sum(getattr(self, p) for p in PARTS)

    @property
    def unaccounted(self) -> float:
        return self.wall - self.parts_sum

    @classmethod
    def total(cls, accounts: Iterable[Goodput]) -> Goodput:
        out = cls()
        for a in accounts:
            for f in fields(cls):
                setattr(out, f.name, getattr(out, f.name) + getattr(a, f.name))
        return out

    def line(self) -> str:
        """'goodput 71% of 1h02m: productive 44m, data 2m, checkpoint 1m, ... (3 steps redone, 1 restart)'."""
        if self.wall <= 0:
            return "goodput -"
        shown = [f"{p} {_dur(getattr(self, p))}" for p in PARTS if getattr(self, p) >= 0.5 or p == "productive"]
        tail = []
        if self.redone_steps:
            tail.append(f"{self.redone_steps} step{'s' * (self.redone_steps != 1)} redone")
        if self.restarts:
            tail.append(f"{self.restarts} restart{'s' * (self.restarts != 1)}")
        return (f"goodput {100 * self.goodput:.0f}% of {_dur(self.wall)}: " + ", ".join(shown)
                + (f" ({', '.join(tail)})" if tail else ""))

    def metrics(self, prefix: str = "goodput/") -> dict[str, float]:
        """MLflow / Prometheus values: goodput/fraction, goodput/<part>_s, goodput/wall_s, ..."""
        out = {f"{prefix}fraction": self.goodput, f"{prefix}wall_s": self.wall,
               f"{prefix}redone_steps": float(self.redone_steps), f"{prefix}restarts": float(self.restarts)}
        out.update({f"{prefix}{p}_s": getattr(self, p) for p in PARTS})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "goodput": self.goodput, "unaccounted": self.unaccounted}


def account(segments: Sequence[SegmentLike], now: float) -> Goodput:
    """Split one stage's wall time (first submission until the last segment's end, or `now`)."""
    g = Goodput()
    segs = [s for s in segments if _first_time(s) is not None]
    if not segs:
        return g
    start = _first_time(segs[0])
    assert start is not None
    prev_end: float | None = None
    for i, s in enumerate(segs):
        last = i == len(segs) - 1
        end = s.ended_at if s.ended_at is not None else (now if last else _observed_end(s))
        t = _first_time(s)
        assert t is not None
        if prev_end is not None:
            g.restart += max(0.0, t - prev_end)
            g.restarts += 1
        if s.submitted_at is not None:  # queued: submitted until every process runs (or the end)
            ran = s.started_at if s.started_at is not None else (s.loop_at if s.loop_at is not None else end)
            g.queued += _span(s.submitted_at, min(ran, end))
        if s.started_at is not None:  # starting: until the loop begins (or the end)
            g.starting += _span(s.started_at, min(s.loop_at if s.loop_at is not None else end, end))
        if s.loop_at is not None:
            observed = s.beat_at if s.beat_at is not None else s.loop_at
            timed = s.step_s + s.data_s + s.checkpoint_s + s.eval_s
            lost_steps, lost_s = _lost(s, segs[i + 1] if not last else None)
            g.redone_steps += lost_steps
            g.lost += lost_s
            g.productive += max(0.0, s.step_s - lost_s)
            g.data += s.data_s
            g.checkpoint += s.checkpoint_s
            g.eval += s.eval_s
            g.other += max(0.0, observed - s.loop_at - timed)
            tail = _span(observed, end)
            if last:
                g.other += tail
            else:
                g.lost += tail  # the work after the last beat of a lost segment is gone
        prev_end = end
    g.wall = _span(start, prev_end if prev_end is not None else now)
    return g


def _first_time(s: SegmentLike) -> float | None:
    for t in (s.submitted_at, s.started_at, s.loop_at):
        if t is not None:
            return t
    return None


def _observed_end(s: SegmentLike) -> float:
    """A closed segment without an end time: its last heartbeat."""
    for t in (s.beat_at, s.loop_at, s.started_at, s.submitted_at):
        if t is not None:
            return t
    return 0.0


def _lost(s: SegmentLike, nxt: SegmentLike | None) -> tuple[int, float]:
    """Steps of `s` redone by the next segment (it resumed from an earlier step), and their step time."""
    if nxt is None or nxt.start_step is None or s.step is None or s.start_step is None:
        return 0, 0.0
    done = s.step - s.start_step
    if done <= 0:
        return 0, 0.0
    lost = s.step - min(s.step, max(nxt.start_step, s.start_step))
    return lost, s.step_s * lost / done


def _span(a: float | None, b: float | None) -> float:
    return max(0.0, b - a) if a is not None and b is not None else 0.0


def _dur(seconds: float) -> str:
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


# -- the checkpoint interval -------------------------------------------------------------------


@dataclass(frozen=True)
class IntervalAdvice:
    optimal_steps: int
    configured_steps: int
    save_s: float
    step_s: float
    mtbf_s: float

    @property
    def ratio(self) -> float:
        return self.configured_steps / self.optimal_steps

    @property
    def far(self) -> bool:
        """The configured interval is more than 2x or less than 0.5x the optimum."""
        return self.ratio > 2.0 or self.ratio < 0.5

    def expected_goodput(self, steps: int) -> float:
        return expected_goodput(steps * self.step_s, self.save_s, self.mtbf_s)

    def message(self) -> str:
        head = (f"checkpoint interval: {self.optimal_steps} steps maximises expected goodput "
                f"(Young/Daly sqrt(2 x save {self.save_s:.1f} s x MTBF {_dur(self.mtbf_s)}) / step {self.step_s:.2f} s; "
                f"{100 * self.expected_goodput(self.optimal_steps):.1f}% expected); configured "
                f"checkpoint.every_steps={self.configured_steps} "
                f"({100 * self.expected_goodput(self.configured_steps):.1f}%)")
        if self.far:
            head += f", {self.ratio:.2g}x the optimum: consider checkpoint.every_steps={self.optimal_steps}"
        return head


def young_daly_steps(save_s: float, step_s: float, mtbf_s: float) -> int:
    """The interval, in steps, between checkpoints that maximises expected goodput: Young's
    first-order optimum sqrt(2 C M) (C = the time a save costs the loop, M = the job's mean time
    between failures), which Daly showed holds while C << M, divided by the step time."""
    if step_s <= 0 or mtbf_s <= 0:
        raise ValueError("step time and MTBF must be positive")
    return max(1, round(math.sqrt(2.0 * max(save_s, 0.0) * mtbf_s) / step_s))


def expected_goodput(interval_s: float, save_s: float, mtbf_s: float) -> float:
    """Fraction of time spent on kept work, first order: each interval pays one save, and a
    failure (rate 1/M) loses half an interval on average: 1 - C/T - T/(2M)."""
    if interval_s <= 0:
        return 0.0
    return max(0.0, 1.0 - save_s / interval_s - interval_s / (2.0 * mtbf_s))


def advise(*, configured_steps: int, save_s: float, step_s: float, mtbf_node_hours: float,
           nodes: int) -> IntervalAdvice | None:
    """The advice for a job of `nodes` nodes whose nodes each fail every `mtbf_node_hours` on
    average (the job then fails every mtbf/nodes); None when there is nothing to go on."""
    if mtbf_node_hours <= 0 or nodes <= 0 or step_s <= 0:
        return None
    mtbf_s = mtbf_node_hours * 3600.0 / nodes
    return IntervalAdvice(young_daly_steps(save_s, step_s, mtbf_s), configured_steps, save_s, step_s, mtbf_s)


__all__ = ["PARTS", "TIMERS", "Segment", "Goodput", "account", "IntervalAdvice", "young_daly_steps",
           "expected_goodput", "advise"]
