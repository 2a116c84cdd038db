"""The pipeline core: a pure state machine shared by the local backend and the operator.

    decide(spec, status, observation, now) -> Decision(status, actions)

It reads what the shell observed (the current stage job's state, whether the stage's
stage-complete manifest exists and verifies) and returns the new status plus the actions
the shell must carry out (submit a job, suspend it, emit an event). It performs no I/O,
so every transition is unit-tested as data.

A stage is done only when its stage-complete manifest verifies: a PyTorchJob reports
Succeeded as soon as the Master exits, even while workers still run or upload.

Stall rule: a running stage's `step` is the highest step in its current attempt's
heartbeats, `trainerPhase` theirs, and `progressAt` the time either last changed (or the
job was first seen running). When neither has changed for the stage's stallTimeoutSeconds
(at least STARTUP_GRACE_S during start-up and checkpoints), the
stage stalled: the job is stopped (each rank's stacks dumped first), its MLflow run closed
as KILLED, and a new attempt resumes from the last checkpoint (counting against maxAttempts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, Field

from eve_contract import goodput
from eve_contract.exit_codes import FailureClass, failure_class_of_exit
from eve_contract.goodput import Goodput
from eve_contract.naming import job_name
from eve_operator.spec import PipelineSpec

JobState = Literal["Absent", "Pending", "Running", "Succeeded", "Failed", "Suspended"]
StageState = Literal["Pending", "Submitted", "Running", "Succeeded", "Failed"]
Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"]

#: How long a job may report Succeeded without a verified stage-complete manifest
#: before the attempt counts as failed (uploads by the last ranks may still be running).
COMPLETE_GRACE_S = 600.0
#: Before an attempt's first heartbeat (imports, model load, rendezvous), the stall limit is at
#: least this long, however short stallTimeoutSeconds is.
STARTUP_GRACE_S = 300.0


class SegmentStatus(BaseModel):
    """One trainer incarnation of a stage: what goodput is counted from (eve_contract.goodput).

    A segment starts when the operator submits an attempt (or when a pod restarted in place
    brings a new rank-0 process); its other facts come from the attempt's heartbeats."""

    attempt: int
    submitted_at: float | None = Field(None, alias="submittedAt")
    started_at: float | None = Field(None, alias="startedAt")
    """When the last rank's process started (every pod runs)."""
    loop_at: float | None = Field(None, alias="loopAt")
    start_step: int | None = Field(None, alias="startStep")
    step: int | None = None
    beat_at: float | None = Field(None, alias="beatAt")
    ended_at: float | None = Field(None, alias="endedAt")
    step_s: float = Field(0.0, alias="stepSeconds")
    data_s: float = Field(0.0, alias="dataSeconds")
    checkpoint_s: float = Field(0.0, alias="checkpointSeconds")
    eval_s: float = Field(0.0, alias="evalSeconds")

    model_config = {"populate_by_name": True}


class StageStatus(BaseModel):
    name: str
    state: StageState = "Pending"
    attempt: int = 0
    job_name: str | None = Field(None, alias="jobName")
    init_from: str | None = Field(None, alias="initFrom")
    checkpoint: str | None = None
    mlflow_run_id: str | None = Field(None, alias="mlflowRunId")
    message: str = ""
    started_at: float | None = Field(None, alias="startedAt")
    finished_at: float | None = Field(None, alias="finishedAt")
    step: int | None = None
    """The highest step in the current attempt's heartbeats."""
    trainer_phase: str | None = Field(None, alias="trainerPhase")
    """startup | train | checkpoint | done, from the current attempt's heartbeats."""
    progress_at: float | None = Field(None, alias="progressAt")
    """When `step` or `trainerPhase` last changed, or the job was first seen running (stall clock)."""
    segments: list[SegmentStatus] = Field(default_factory=list)
    """Goodput's timeline: one entry per attempt (and per in-place pod restart); see `goodput`."""
    val_loss: float | None = Field(None, alias="valLoss")
    """The finished stage's last validation loss on held-out samples (the trainer's validation.data),
    from its stage-complete manifest; None without validation."""
    val_step: int | None = Field(None, alias="valStep")
    """The stage step that validation loss was measured at."""

    model_config = {"populate_by_name": True}


EvalState = Literal["Submitted", "Running", "Succeeded", "Failed"]


class EvalStatus(BaseModel):
    """The benchmark evaluation of one stage's export (spec.eval): its job and its scores."""

    stage: str
    model: str
    """The export URL evaluated."""
    state: EvalState = "Submitted"
    attempt: int = 0
    job_name: str | None = Field(None, alias="jobName")
    scores: dict[str, dict[str, float]] = Field(default_factory=dict)
    """benchmark -> score name -> value, as eve-eval wrote them (scores.json)."""
    gate: str = ""
    """'' (no gate), 'passed', or what fell short: 'pope.f1 = 0.62, not >= 0.8'."""
    message: str = ""
    started_at: float | None = Field(None, alias="startedAt")
    finished_at: float | None = Field(None, alias="finishedAt")

    model_config = {"populate_by_name": True}


class Failure(BaseModel):
    """Why a pipeline failed, as fields: `class` is what a client acts on (never the message)."""

    failure_class: FailureClass = Field(alias="class")
    """permanent (fix something, do not retry), transient or stalled (the attempts ran out),
    cancelled (stopped by the user); eve_contract.exit_codes."""
    exit_code: int | None = Field(None, alias="exitCode")
    """The trainer's deciding exit code, where a job's exit led to the failure."""
    message: str = ""

    model_config = {"populate_by_name": True}


class PipelineStatus(BaseModel):
    phase: Phase = "Pending"
    current_stage: str | None = Field(None, alias="currentStage")
    stages: list[StageStatus] = Field(default_factory=list)
    message: str = ""
    mlflow_run_id: str | None = Field(None, alias="mlflowRunId")
    """The pipeline's parent MLflow run; stage runs nest under it."""
    failure: Failure | None = None
    """Set when phase is Failed: the class, exit code and message."""
    evals: list[EvalStatus] = Field(default_factory=list)
    """The evaluations of stage exports (spec.eval), in the order they started."""

    model_config = {"populate_by_name": True}

    def stage(self, name: str) -> StageStatus:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def done(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    def failed(self, failure_class: FailureClass, message: str, exit_code: int | None = None) -> None:
        """Mark the pipeline Failed, with its failure as fields."""
        self.phase, self.message = "Failed", message
        self.failure = Failure(failure_class=failure_class, exit_code=exit_code, message=message)


@dataclass(frozen=True)
class StageComplete:
    """A verified stage-complete manifest, as the shell found it."""

    export_url: str
    mlflow_run_id: str | None = None
    val_loss: float | None = None
    """The stage's last validation loss (validation.data) and its step, as the trainer recorded them."""
    val_step: int | None = None


@dataclass(frozen=True)
class Beat:
    """One rank's heartbeat of the current attempt, as the core needs it."""

    rank: int
    step: int
    time: float
    phase: str = "train"
    # goodput facts (layout.Heartbeat): process start, loop start, first step, timers as pairs
    started_at: float | None = None
    loop_at: float | None = None
    start_step: int | None = None
    timers: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Observation:
    job: JobState = "Absent"
    job_message: str = ""
    job_finished_at: float | None = None
    complete: StageComplete | None = None
    """The current stage's verified stage-complete manifest, if any."""
    previous_export: StageComplete | None = None
    """The previous stage's verified export, looked up when the pipeline starts mid-chain."""
    job_exit_code: int | None = None
    """A failed job's deciding exit code (eve_contract.exit_codes.deciding_exit_code), if known."""
    beats: tuple[Beat, ...] = ()
    """The current attempt's heartbeats, one per rank that wrote one (read while the job runs)."""
    evals: dict[str, EvalObservation] = field(default_factory=dict)
    """Per evaluated stage whose evaluation is not done: its job and, once written, its scores."""


@dataclass(frozen=True)
class EvalObservation:
    """An evaluation job as the shell saw it: its state, and the scores once every benchmark's
    scores.json exists (None before)."""

    job: JobState = "Absent"
    job_message: str = ""
    job_finished_at: float | None = None
    job_exit_code: int | None = None
    scores: dict[str, dict[str, float]] | None = None


# -- actions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SubmitJob:
    stage: str
    attempt: int
    job_name: str
    init_from: str | None
    previous_run_id: str | None


@dataclass(frozen=True)
class SubmitEval:
    """Run eve-eval on a stage's export (spec.eval.data's benchmarks) as its own job."""

    stage: str
    attempt: int
    job_name: str
    model: str


@dataclass(frozen=True)
class SetSuspended:
    job_name: str
    suspended: bool


@dataclass(frozen=True)
class StopJob:
    """End a stage job before its retry: dump every rank's Python stacks to its log, then stop it."""

    job_name: str
    reason: str


@dataclass(frozen=True)
class EndStageRun:
    """Close the stage's MLflow run if it is still RUNNING (its pods are gone or going)."""

    stage: str
    status: Literal["FAILED", "KILLED"]
    reason: str


@dataclass(frozen=True)
class Emit:
    reason: str
    message: str
    type: Literal["Normal", "Warning"] = "Normal"


Action = SubmitJob | SubmitEval | SetSuspended | StopJob | EndStageRun | Emit


@dataclass
class Decision:
    status: PipelineStatus
    actions: list[Action] = field(default_factory=list)


def parent_run_params(spec: PipelineSpec) -> dict[str, str]:
    """The pipeline's parent-run params: fixed when it is submitted."""
    return {"preset": spec.preset, "chain": " -> ".join(spec.chain()), "output": spec.output,
            "max_attempts": str(spec.max_attempts), "stall_timeout_s": str(spec.stall_timeout_s)}


def parent_run_tags(status: PipelineStatus) -> dict[str, str]:
    """What the pipeline's MLflow parent run says about it, updated as the pipeline moves."""
    finals = [s.checkpoint for s in status.stages if s.state == "Succeeded" and s.checkpoint]
    return {"eve.phase": status.phase, "eve.current_stage": status.current_stage or "",
            "eve.attempts": " ".join(f"{s.name}={s.attempt}" for s in status.stages),
            "eve.final_checkpoint": finals[-1] if status.phase == "Succeeded" and finals else "",
            "eve.message": status.message[:500]}


def initial_status(spec: PipelineSpec) -> PipelineStatus:
    return PipelineStatus(stages=[StageStatus(name=s) for s in spec.chain()])


def decide(name: str, spec: PipelineSpec, status: PipelineStatus, obs: Observation,
           now: float) -> Decision:
    """One reconciliation step. `status` is not modified; a new one is returned."""
    status = status.model_copy(deep=True)
    if not status.stages:
        status = initial_status(spec)
    d = Decision(status)
    if status.done:
        return d

    if status.evals:  # benchmark evaluations of exports (spec.eval): before the stages, they may gate them
        submitted = len(d.actions)
        _reconcile_evals(name, spec, status, obs, now, d)
        started_next = any(isinstance(a, SubmitJob) for a in d.actions[submitted:])
        if status.done or started_next or _waiting_for_eval(spec, status):
            return d

    current = next((s for s in status.stages if s.state != "Succeeded"), None)
    if current is None:  # every stage succeeded (status written by an older decide)
        if _evals_pending(status):
            status.phase, status.current_stage = "Running", None
            return d
        status.phase, status.current_stage = "Succeeded", None
        return d
    status.current_stage = current.name
    _note_beats(current, obs)

    # The current stage's export verifies: the stage is done, whatever the job says.
    if obs.complete is not None:
        _finish_stage(name, spec, status, current, obs.complete, now, d)
        return d

    if current.attempt == 0:
        return _start_first(name, spec, status, current, obs, now, d)

    if spec.suspend and obs.job not in ("Suspended", "Absent"):
        status.phase = "Suspended"
        current.progress_at = None  # the stall clock restarts when the job runs again
        d.actions += [SetSuspended(current.job_name or "", True),
                      Emit("Suspended", f"stage {current.name} suspended")]
        return d
    if not spec.suspend and obs.job == "Suspended":
        status.phase = "Running"
        current.progress_at = None
        d.actions += [SetSuspended(current.job_name or "", False),
                      Emit("Resumed", f"stage {current.name} resumed")]
        return d

    match obs.job:
        case "Absent":  # lost before or after create (operator restart): creating again is safe
            d.actions.append(_submit(name, status, current, current.attempt, now))
        case "Pending" | "Suspended":
            status.phase = "Suspended" if obs.job == "Suspended" else "Running"
            current.message = obs.job_message
            current.progress_at = None  # the stall clock runs only while the job runs
        case "Running":
            status.phase = "Running"
            current.message = obs.job_message
            if current.state != "Running":
                current.state = "Running"
                d.actions.append(Emit("StageRunning", f"stage {current.name} is running ({current.job_name})"))
            if (stalled := _stalled(spec, current, obs, now)) is not None:
                d.actions += [StopJob(current.job_name or "", stalled),
                              EndStageRun(current.name, "KILLED", stalled),
                              Emit("StageStalled", stalled, "Warning")]
                _retry_or_fail(name, spec, status, current, now, d, stalled, "stalled")
        case "Succeeded":
            waited = now - (obs.job_finished_at or now)
            if waited > COMPLETE_GRACE_S:
                reason = (f"job {current.job_name} succeeded but no verified stage-complete "
                          f"manifest appeared within {COMPLETE_GRACE_S:.0f}s")
                d.actions.append(EndStageRun(current.name, "FAILED", reason))
                _retry_or_fail(name, spec, status, current, now, d, reason, "transient", None, obs.job_finished_at)
            else:
                current.message = "job succeeded; waiting for the verified stage-complete manifest"
        case "Failed" if failure_class_of_exit(obs.job_exit_code) == "permanent":
            reason = f"job {current.job_name} failed permanently: {obs.job_message or 'no reason given'}"
            d.actions.append(EndStageRun(current.name, "FAILED", reason))
            _fail(status, current, now, d, reason, "permanent", obs.job_exit_code)
        case "Failed":
            reason = f"job {current.job_name} failed: {obs.job_message or 'no reason given'}"
            d.actions.append(EndStageRun(current.name, "FAILED", reason))
            _retry_or_fail(name, spec, status, current, now, d, reason, "transient", obs.job_exit_code,
                           obs.job_finished_at)
    return d


def stage_goodput(stage: StageStatus, now: float) -> Goodput:
    """The stage's goodput so far (eve_contract.goodput over its segments)."""
    return goodput.account(stage.segments, now)


def pipeline_goodput(status: PipelineStatus, now: float) -> Goodput:
    return Goodput.total(stage_goodput(s, now) for s in status.stages)


def _note_beats(current: StageStatus, obs: Observation) -> None:
    """Copy rank 0's goodput facts of the current attempt into its segment; a new rank-0 process
    within the same attempt (a pod restarted in place) opens a new segment."""
    first = min(obs.beats, key=lambda b: b.rank, default=None)
    if first is None or first.started_at is None or not current.segments:
        return
    seg = current.segments[-1]
    if seg.attempt != current.attempt:
        return
    if seg.loop_at is not None and first.loop_at != seg.loop_at and first.started_at != seg.started_at \
            and first.started_at > (seg.beat_at or 0.0):
        current.segments.append(SegmentStatus(attempt=current.attempt))  # restarted in place
        seg = current.segments[-1]
    starts = [b.started_at for b in obs.beats if b.started_at is not None]
    seg.started_at = max(starts)  # every rank's process runs
    if first.loop_at is not None:
        timers = dict(first.timers)
        seg.loop_at, seg.start_step, seg.step, seg.beat_at = first.loop_at, first.start_step, first.step, first.time
        seg.step_s, seg.data_s = timers.get("step", 0.0), timers.get("data", 0.0)
        seg.checkpoint_s, seg.eval_s = timers.get("checkpoint", 0.0), timers.get("eval", 0.0)


def _end_segment(stage: StageStatus, at: float) -> None:
    if stage.segments and stage.segments[-1].ended_at is None:
        stage.segments[-1].ended_at = at


def stall_timeout(spec: PipelineSpec, stage: str) -> int:
    """The stage's stallTimeoutSeconds, else the pipeline's; 0: never."""
    own = spec.stage(stage).stall_timeout_s
    return spec.stall_timeout_s if own is None else own


def _stalled(spec: PipelineSpec, current: StageStatus, obs: Observation, now: float) -> str | None:
    """Advance the stall clock from the heartbeats; the reason when the stage has stalled."""
    top = max((b.step for b in obs.beats), default=None)
    phase = _trainer_phase(obs.beats)
    if current.progress_at is None or (top, phase) != (current.step, current.trainer_phase):
        current.progress_at = now  # first seen running (the start-up grace starts), or progress
        current.step, current.trainer_phase = top, phase
        return None
    timeout = stall_timeout(spec, current.name)
    limit = max(timeout, STARTUP_GRACE_S) if phase in (None, "startup", "checkpoint", "validation") else timeout
    if not timeout or phase == "done" or now - current.progress_at < limit:
        return None  # phase done: every rank finished, the grace for the manifest applies
    resources = spec.resources_for(current.name)
    world = resources.nodes * resources.procs_per_node
    head = f"stage {current.name} attempt {current.attempt} stalled: "
    if top is None:
        return (f"{head}no rank wrote a heartbeat within {limit:.0f}s of the job starting "
                f"(ranks 0-{world - 1} stopped during start-up)")
    low = min(b.step for b in obs.beats)
    behind = [b.rank for b in obs.beats if b.step == low]
    silent = sorted(set(range(world)) - {b.rank for b in obs.beats})
    stopped = f"ranks {_ranks(behind)} stopped at step {low}" if low < top or len(behind) < world \
        else f"all {world} ranks stopped at step {low}"
    if silent:
        stopped += f"; ranks {_ranks(silent)} wrote no heartbeat"
    what = f"no rank's step advanced past {top}" if phase == "train" else f"ranks stuck in {phase} at step {top}"
    return f"{head}{what} for {now - current.progress_at:.0f}s (stallTimeoutSeconds={timeout}); {stopped}"


def _trainer_phase(beats: tuple[Beat, ...]) -> str | None:
    """The stage's phase from its ranks' beats: startup or checkpoint while any rank is in it."""
    phases = {b.phase for b in beats}
    for busy in ("startup", "checkpoint", "validation"):
        if busy in phases:
            return busy
    if phases == {"done"}:
        return "done"
    return "train" if phases else None


def _ranks(ranks: list[int]) -> str:
    return ",".join(str(r) for r in ranks[:16]) + (f",... ({len(ranks)})" if len(ranks) > 16 else "")


def _start_first(name: str, spec: PipelineSpec, status: PipelineStatus, current: StageStatus,
                 obs: Observation, now: float, d: Decision) -> Decision:
    """Submit a stage for the first time, working out where it starts from."""
    first = current.name == status.stages[0].name
    if first:
        if spec.init_from:
            current.init_from = spec.init_from
        elif (prev := spec.previous_stage(current.name)) is not None:
            if obs.previous_export is None:
                return _fail(status, current, now, d,
                             f"stage {current.name} needs an init checkpoint: no complete {prev} "
                             f"export found for pipeline {name}; run `eve-platform submit "
                             f"stage={prev}` first or pass init_from=<export URL>", "permanent")
            current.init_from = obs.previous_export.export_url
            d.actions.append(Emit("InitFound", f"{current.name} starts from {current.init_from}"))
    status.phase = "Suspended" if spec.suspend else "Running"
    current.started_at = current.started_at or now
    submit = _submit(name, status, current, 1, now)
    d.actions += [submit, Emit("StageSubmitted", f"stage {current.name} submitted as {submit.job_name}"
                               + (f", starting from {current.init_from}" if current.init_from else ""))]
    return d


def _submit(name: str, status: PipelineStatus, stage: StageStatus, attempt: int, now: float,
            ended_at: float | None = None) -> SubmitJob:
    _end_segment(stage, min(ended_at or now, now))
    stage.segments.append(SegmentStatus(attempt=attempt, submitted_at=now))
    stage.attempt = attempt
    stage.state = "Submitted"
    stage.step = stage.progress_at = stage.trainer_phase = None  # a new attempt's clock starts when it runs
    stage.job_name = job_name(name, stage.name, attempt)
    prev_run = None
    i = [s.name for s in status.stages].index(stage.name)
    if i > 0:
        prev_run = status.stages[i - 1].mlflow_run_id
    return SubmitJob(stage.name, attempt, stage.job_name, stage.init_from, prev_run)


def _finish_stage(name: str, spec: PipelineSpec, status: PipelineStatus, current: StageStatus,
                  complete: StageComplete, now: float, d: Decision) -> None:
    current.state, current.finished_at = "Succeeded", now
    _end_segment(current, now)
    current.checkpoint, current.mlflow_run_id = complete.export_url, complete.mlflow_run_id
    current.val_loss, current.val_step = complete.val_loss, complete.val_step
    current.message = "stage-complete manifest verified"
    d.actions.append(Emit("StageSucceeded", f"stage {current.name} complete: {complete.export_url}"
                          + (f" (validation loss {val_text(complete.val_loss, complete.val_step)})"
                             if complete.val_loss is not None else "")))
    if current.name in spec.eval_after():
        _submit_eval(name, status, EvalStatus(stage=current.name, model=complete.export_url, started_at=now), 1, d)
        if spec.eval is not None and spec.eval.mode == "before":
            following = [s.name for s in status.stages if s.state != "Succeeded"]
            status.phase, status.current_stage = "Running", current.name
            status.message = (f"evaluating the {current.name} export"
                              + (f" before {following[0]} starts" if following else ""))
            return
    _start_next(name, spec, status, complete.export_url, now, d)


def val_text(loss: float, step: int | None) -> str:
    """'0.2410 at step 300': a validation loss as the transition lines and summaries show it."""
    return f"{loss:.4f}" + (f" at step {step}" if step is not None else "")


def _start_next(name: str, spec: PipelineSpec, status: PipelineStatus, export_url: str, now: float,
                d: Decision) -> None:
    """The stage after a finished one starts from its export; or, with none left, the pipeline ends
    (once its evaluations are done)."""
    following = [s for s in status.stages if s.state != "Succeeded"]
    if not following:
        if _evals_pending(status):
            status.phase, status.current_stage = "Running", None
            status.message = f"all stages complete; final checkpoint {export_url}; evaluating"
            return
        status.phase, status.current_stage = "Succeeded", None
        status.message = f"all stages complete; final checkpoint {export_url}"
        d.actions.append(Emit("PipelineSucceeded", status.message))
        return
    nxt = following[0]
    nxt.init_from, nxt.started_at = export_url, now
    status.current_stage = nxt.name
    status.phase = "Suspended" if spec.suspend else "Running"
    d.actions.append(_submit(name, status, nxt, 1, now))
    d.actions.append(Emit("StageSubmitted", f"stage {nxt.name} starts from {export_url}"))


def _retry_or_fail(name: str, spec: PipelineSpec, status: PipelineStatus, current: StageStatus,
                   now: float, d: Decision, reason: str, failure_class: FailureClass,
                   exit_code: int | None = None, _ended: float | None = None) -> None:
    if current.attempt < spec.max_attempts:
        current.message = reason
        d.actions.append(Emit("StageRetry", f"{reason}; attempt {current.attempt + 1} of "
                              f"{spec.max_attempts} resumes from the last checkpoint", "Warning"))
        d.actions.append(_submit(name, status, current, current.attempt + 1, now, _ended))
        return
    _end_segment(current, min(_ended or now, now))
    _fail(status, current, now, d, f"{reason} (attempt {current.attempt} of {spec.max_attempts})",
          failure_class, exit_code)


def _fail(status: PipelineStatus, current: StageStatus, now: float, d: Decision, reason: str,
          failure_class: FailureClass, exit_code: int | None = None) -> Decision:
    _end_segment(current, now)
    current.state, current.finished_at, current.message = "Failed", now, reason
    status.failed(failure_class, reason, exit_code)
    d.actions.append(Emit("PipelineFailed", reason, "Warning"))
    return d


# -- evaluation jobs (spec.eval) ------------------------------------------------------------------
# Once a stage in spec.eval.after has a verified export, an eve-eval job scores it. mode=before holds
# the next stage until the scores are in and every gate passed; mode=beside starts the next stage at
# once. A gate that fails stops the pipeline (permanent: the export is what it is), and in beside
# mode stops the stage that already started. The pipeline succeeds when every stage and every
# evaluation did. An evaluation job is retried like a stage (maxAttempts); exit code 2 is permanent.


def eval_job_name(pipeline: str, stage: str, attempt: int) -> str:
    return job_name(pipeline, f"eval-{stage}", attempt)


def _evals_pending(status: PipelineStatus) -> bool:
    return any(e.state in ("Submitted", "Running") for e in status.evals)


def _waiting_for_eval(spec: PipelineSpec, status: PipelineStatus) -> bool:
    """mode=before: an export's evaluation still runs, so the next stage may not start."""
    return spec.eval is not None and spec.eval.mode == "before" and _evals_pending(status)


def _submit_eval(name: str, status: PipelineStatus, ev: EvalStatus, attempt: int, d: Decision) -> None:
    ev.attempt, ev.state = attempt, "Submitted"
    ev.job_name = eval_job_name(name, ev.stage, attempt)
    if ev not in status.evals:
        status.evals.append(ev)
    d.actions += [SubmitEval(ev.stage, attempt, ev.job_name, ev.model),
                  Emit("EvalSubmitted", f"evaluation of the {ev.stage} export submitted as {ev.job_name}")]


def _reconcile_evals(name: str, spec: PipelineSpec, status: PipelineStatus, obs: Observation, now: float,
                     d: Decision) -> None:
    for ev in status.evals:
        if ev.state in ("Succeeded", "Failed") or status.done:
            continue
        o = obs.evals.get(ev.stage, EvalObservation())
        if o.scores is not None:
            _eval_scored(name, spec, status, ev, o.scores, now, d)
            continue
        match o.job:
            case "Absent":  # lost (runner or operator restarted before the create): create it again
                _submit_eval(name, status, ev, ev.attempt, d)
            case "Pending" | "Suspended":
                ev.message = o.job_message or "waiting to be scheduled"
            case "Running":
                ev.message = o.job_message
                if ev.state != "Running":
                    ev.state = "Running"
                    d.actions.append(Emit("EvalRunning", f"evaluation of the {ev.stage} export is running "
                                                         f"({ev.job_name})"))
            case "Succeeded":
                if now - (o.job_finished_at or now) > COMPLETE_GRACE_S:
                    _eval_retry_or_fail(name, spec, status, ev, now, d, f"job {ev.job_name} succeeded but wrote "
                                        f"no scores within {COMPLETE_GRACE_S:.0f}s", "transient")
                else:
                    ev.message = "job succeeded; waiting for its scores"
            case "Failed":
                reason = f"job {ev.job_name} failed: {o.job_message or 'no reason given'}"
                if failure_class_of_exit(o.job_exit_code) == "permanent":
                    _eval_fail(status, ev, now, d, f"evaluation of the {ev.stage} export failed permanently: "
                                                   f"{o.job_message or 'bad benchmark data or keys'}",
                               "permanent", o.job_exit_code)
                else:
                    _eval_retry_or_fail(name, spec, status, ev, now, d, reason, "transient", o.job_exit_code)


def _headline(scores: dict[str, dict[str, float]]) -> str:
    """'pope accuracy 0.81 f1 0.80' from the top-level scores eve-eval writes."""
    parts = []
    for bench, values in scores.items():
        shown = [k for k in ("accuracy", "f1") if k in values] or [k for k in values if "/" not in k][:2]
        parts.append(f"{bench} " + " ".join(f"{k} {values[k]:.3f}" for k in shown))
    return "; ".join(parts)


def _eval_scored(name: str, spec: PipelineSpec, status: PipelineStatus, ev: EvalStatus,
                 scores: dict[str, dict[str, float]], now: float, d: Decision) -> None:
    ev.state, ev.scores, ev.finished_at = "Succeeded", scores, now
    gates = spec.eval.gates() if spec.eval is not None else []
    short = []
    for g in gates:
        value = scores.get(g.bench, {}).get(g.metric)
        if value is None:
            short.append(f"{g.bench}.{g.metric} is not among the scores ({', '.join(sorted(scores.get(g.bench, {})))})")
        elif not g.passes(value):
            short.append(f"{g.bench}.{g.metric} = {value:.4g}, not {g.op} {g.threshold:g}")
    ev.message = _headline(scores)
    if short:
        ev.gate = "; ".join(short)
        _gate_failed(status, ev, now, d)
        return
    ev.gate = "passed" if gates else ""
    d.actions.append(Emit("EvalSucceeded", f"{ev.stage} export: {ev.message}"
                          + (f" (gate {', '.join(str(g) for g in gates)} passed)" if gates else "")))
    nxt = next((s for s in status.stages if s.state != "Succeeded"), None)
    if nxt is None:
        if not _evals_pending(status):
            status.phase, status.current_stage = "Succeeded", None
            final = [s.checkpoint for s in status.stages if s.checkpoint][-1:]
            status.message = f"all stages complete; final checkpoint {final[0] if final else '-'}; {ev.message}"
            d.actions.append(Emit("PipelineSucceeded", status.message))
        return
    if nxt.attempt == 0 and spec.eval is not None and spec.eval.mode == "before":
        _start_next(name, spec, status, ev.model, now, d)


def _gate_failed(status: PipelineStatus, ev: EvalStatus, now: float, d: Decision) -> None:
    """The export falls short: stop the chain (and in beside mode the stage that already runs)."""
    running = next((s for s in status.stages if s.state in ("Submitted", "Running")), None)
    waiting = next((s for s in status.stages if s.state == "Pending"), None)
    if running is not None:
        what = f"stage {running.name} stopped"
    elif waiting is not None:
        what = f"stage {waiting.name} not started"
    else:
        what = "no stage left"
    reason = f"gate failed on the {ev.stage} export: {ev.gate}; {what}"
    if running is not None:
        d.actions += [StopJob(running.job_name or "", reason), EndStageRun(running.name, "KILLED", reason)]
        running.state, running.finished_at, running.message = "Failed", now, reason
    for other in status.evals:
        if other.state in ("Submitted", "Running") and other.job_name:
            d.actions.append(StopJob(other.job_name, reason))
            other.state, other.finished_at, other.message = "Failed", now, "stopped: " + reason
    status.failed("permanent", reason)
    d.actions += [Emit("GateFailed", reason, "Warning"), Emit("PipelineFailed", reason, "Warning")]


def _eval_retry_or_fail(name: str, spec: PipelineSpec, status: PipelineStatus, ev: EvalStatus, now: float,
                        d: Decision, reason: str, failure_class: FailureClass, exit_code: int | None = None) -> None:
    if ev.attempt < spec.max_attempts:
        ev.message = reason
        d.actions.append(Emit("EvalRetry", f"{reason}; attempt {ev.attempt + 1} of {spec.max_attempts}", "Warning"))
        _submit_eval(name, status, ev, ev.attempt + 1, d)
        return
    _eval_fail(status, ev, now, d, f"evaluation of the {ev.stage} export: {reason} (attempt {ev.attempt} of "
                                   f"{spec.max_attempts})", failure_class, exit_code)


def _eval_fail(status: PipelineStatus, ev: EvalStatus, now: float, d: Decision, reason: str,
               failure_class: FailureClass, exit_code: int | None = None) -> None:
    """An evaluation that cannot finish fails the pipeline: a gate or a chain waiting on it has no answer."""
    ev.state, ev.finished_at, ev.message = "Failed", now, reason
    running = next((s for s in status.stages if s.state in ("Submitted", "Running")), None)
    if running is not None:
        d.actions += [StopJob(running.job_name or "", reason), EndStageRun(running.name, "KILLED", reason)]
        running.state, running.finished_at, running.message = "Failed", now, reason
    status.failed(failure_class, reason, exit_code)
    d.actions.append(Emit("PipelineFailed", reason, "Warning"))
