"""The observer: what a backend reports about the current stage -> the state machine's Observation.

    observe(spec, status, reader) -> Observation          (then pipeline.decide)

Both shells call it, the kopf loop (eve_operator.loop) and the local runner
(eve_operator.backends.local); each supplies only a `StageReader`, its transport:

    job(name)          the stage job's state, message and finish time (a `JobReport`)
    exit_codes(name)   the trainer's exit codes, asked only for a failed job
    complete(stage)    the stage's verified stage-complete manifest, or None
    heartbeats(stage)  every rank's newest heartbeat (eve_contract.layout.Heartbeat)

The rules live here once: which lookups a pass needs, Kueue's suspension, the permanent
exit code, and which heartbeats count (the current attempt's). What they lead to (the
grace for "Succeeded without a manifest", stalls, retries) is decided in pipeline.decide.
`StoreReads` is the one place that reads those facts from the object store.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from eve_contract import layout
from eve_contract import tracking_names as N
from eve_contract.exit_codes import deciding_exit_code, is_permanent
from eve_operator.pipeline import Beat, EvalObservation, JobState, Observation, PipelineStatus, StageComplete
from eve_operator.spec import PipelineSpec


@dataclass(frozen=True)
class JobReport:
    """A stage job as its backend reports it."""

    state: JobState = "Absent"
    message: str = ""
    finished_at: float | None = None


class StageReader(Protocol):
    def job(self, name: str) -> JobReport: ...

    def exit_codes(self, name: str) -> list[int]: ...

    def error_line(self, name: str) -> str:
        """The trainer's own error line of a failed job ("" when the backend has none)."""
        ...

    def complete(self, stage: str) -> StageComplete | None: ...

    def heartbeats(self, stage: str) -> list[Any]: ...

    def eval_scores(self, stage: str, benches: list[str]) -> dict[str, dict[str, float]] | None:
        """Every benchmark's scores of the stage's export evaluation, or None until all are written."""
        ...


def observe_evals(spec: PipelineSpec, status: PipelineStatus, reader: StageReader) -> dict[str, EvalObservation]:
    """The evaluation jobs still running (spec.eval): their state, exit code, and scores once written."""
    out: dict[str, EvalObservation] = {}
    if spec.eval is None:
        return out
    for ev in status.evals:
        if ev.state in ("Succeeded", "Failed") or not ev.job_name or ev.attempt == 0:
            continue
        job = reader.job(ev.job_name)
        code = deciding_exit_code(reader.exit_codes(ev.job_name)) if job.state == "Failed" else None
        message = job.message
        if is_permanent(code):
            message = f"{message} (eve-eval exited with {code}: {reader.error_line(ev.job_name) or 'bad input'})"
        scores = None
        if job.state in ("Succeeded", "Failed", "Absent"):  # eve-eval writes its scores last, then exits
            scores = reader.eval_scores(ev.stage, list(spec.eval.data))
        out[ev.stage] = EvalObservation(job.state, message, job.finished_at, code, scores)
    return out


def observe(spec: PipelineSpec, status: PipelineStatus, reader: StageReader) -> Observation:
    """One pass's view of the current stage, asking `reader` only what this pass needs."""
    evals = observe_evals(spec, status, reader)
    current = next((s for s in status.stages if s.state != "Succeeded"), None)
    if current is None:
        return Observation(evals=evals)
    job, code = JobReport(), None
    if current.job_name and current.attempt > 0:
        job = reader.job(current.job_name)
        if job.state == "Suspended" and not spec.suspend and spec.scheduling.gang_scheduler == "kueue":
            job = JobReport("Pending", job.message)  # queued by Kueue, which un-suspends on admission
        if job.state == "Failed":
            code = deciding_exit_code(reader.exit_codes(current.job_name))
            if is_permanent(code):
                why = reader.error_line(current.job_name) or "bad config or data"
                job = JobReport("Failed", f"{job.message} (the trainer exited with {code}: {why})", job.finished_at)
    previous = None
    if current.attempt == 0 and not spec.init_from and current.name == status.stages[0].name:
        if (prev := spec.previous_stage(current.name)) is not None:
            previous = reader.complete(prev)
    complete = None
    if current.attempt == 0 or job.state in ("Succeeded", "Failed", "Absent"):
        complete = reader.complete(current.name)
    beats: tuple[Beat, ...] = ()
    if job.state == "Running" and complete is None or job.state in ("Succeeded", "Failed"):
        # a finished job's last beats close its goodput segment (timers up to the end)
        beats = current_beats(reader.heartbeats(current.name), current.attempt)
    return Observation(job.state, job.message, job.finished_at, complete, previous,
                       job_exit_code=code, beats=beats, evals=evals)


def error_line(log_tail: str) -> str:
    """The trainer's "error:" line in the tail of a log (its user errors are one line), else ""."""
    lines = [line.strip() for line in log_tail.splitlines() if "error:" in line]
    return lines[-1][:400] if lines else ""


def current_beats(heartbeats: list[Any], attempt: int) -> tuple[Beat, ...]:
    """The heartbeats written by this attempt (a restarted stage's old beats do not count)."""
    return tuple(Beat(h.rank, h.step, h.time, h.phase, getattr(h, "started_at", None), getattr(h, "loop_at", None),
                      getattr(h, "start_step", None), tuple(sorted((getattr(h, "timers", None) or {}).items())))
                 for h in heartbeats if h.attempt == attempt)


class StoreReads:
    """Stage-complete manifests and heartbeats of one pipeline, read from its object store.

    A verified manifest is cached (an export never changes once complete); `store` is a
    callable so the operator can hand over a client built with the pipeline's credentials.
    """

    def __init__(self, pipeline: str, output: str, store: Callable[[], Any], *, deep: bool = True):
        self.pipeline, self.output, self.store, self.deep = pipeline, output, store, deep
        self.verified: dict[str, StageComplete] = {}

    def complete(self, stage: str) -> StageComplete | None:
        if stage in self.verified:
            return self.verified[stage]
        manifest = layout.stage_complete(self.store(), self.pipeline, stage, deep=self.deep)
        if manifest is None:
            return None
        url = f"{self.output.rstrip('/')}/{layout.export_prefix(self.pipeline, stage)}"
        self.verified[stage] = StageComplete(url, manifest.mlflow_run_id, *_validation(manifest.extra))
        return self.verified[stage]

    def heartbeats(self, stage: str) -> list[Any]:
        return layout.read_heartbeats(self.store(), self.pipeline, stage)

    def eval_scores(self, stage: str, benches: list[str]) -> dict[str, dict[str, float]] | None:
        """`<pipeline>/<stage>/eval/<bench>/scores.json` (eve-eval's default output beside the export),
        its numeric scores per benchmark; None while any is missing."""
        import json

        store = self.store()
        prefix = layout.export_prefix(self.pipeline, stage).rsplit("/", 1)[0] + "/" + EVAL_DIR
        out: dict[str, dict[str, float]] = {}
        for bench in benches:
            key = f"{prefix}/{bench}/{SCORES_FILE}"
            if not store.exists(key):
                return None
            doc = json.loads(store.get_bytes(key))
            out[bench] = {k: float(v) for k, v in (doc.get("scores") or {}).items()
                          if isinstance(v, int | float) and not isinstance(v, bool)}
        return out


def _validation(extra: dict[str, Any]) -> tuple[float | None, int | None]:
    """(val loss, its step) from a stage-complete manifest's extra; (None, None) without (older ones)."""
    loss, step = extra.get(N.MANIFEST_VAL_LOSS), extra.get(N.MANIFEST_VAL_STEP)
    if not isinstance(loss, int | float) or isinstance(loss, bool) or not math.isfinite(loss):
        return None, None  # a NaN would make the status JSON the API server refuses
    return float(loss), int(step) if isinstance(step, int) and not isinstance(step, bool) else None


#: eve-eval's default output beside an export (<pipeline>/<stage>/eval/<bench>/scores.json; docs/eval.md)
EVAL_DIR, SCORES_FILE = "eval", "scores.json"

__all__ = ["JobReport", "StageReader", "StoreReads", "observe", "observe_evals", "current_beats"]
