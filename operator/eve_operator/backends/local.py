"""The local backend: the embedded default when there is no cluster.

A stage job becomes N local processes (torchrun-style env: RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT) running `python -m eve_trainer`; the object store defaults to a
directory and MLflow to a SQLite file, both under the state directory (EVE_PLATFORM_HOME,
default ./.eve-platform). The same pure state machine as the operator drives it.

    .eve-platform/
      pipelines/<name>/pipeline.json           spec + status + runner pid
      pipelines/<name>/logs/<stage>/attempt-<k>/rank-<r>.log
      pipelines/<name>/runner.log              the runner's own output when detached
      store/                                   default object store (file://)
      mlflow.db                                default MLflow tracking store
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eve_contract.exit_codes import FailureClass, exit_code
from eve_contract.storage import StorageAccessError, StorageUnavailable, open_store
from eve_contract.topology import single_node
from eve_contract.tracking_names import LOGS_ARTIFACT_DIR, TAG_PARENT_RUN, TAG_STAGE
from eve_operator.jobspec import JobSpec, build_job_spec
from eve_operator.observe import JobReport, StoreReads, error_line, observe
from eve_operator.pipeline import (
    Decision,
    Emit,
    EndStageRun,
    JobState,
    Observation,
    PipelineStatus,
    SetSuspended,
    StopJob,
    SubmitJob,
    decide,
    initial_status,
    parent_run_params,
    parent_run_tags,
)
from eve_operator.spec import PipelineSpec
from eve_operator.tracking import RunRecords

POLL_S = 0.5
STORE_DOWN_REPORT_S = 10.0
#: SIGTERM -> SIGKILL grace of a stalled job: its ranks are blocked, no final checkpoint can come
STALL_GRACE_S = 5.0


def home() -> Path:
    return Path(os.environ.get("EVE_PLATFORM_HOME", ".eve-platform")).resolve()


def default_output() -> str:
    return f"file://{home() / 'store'}"


def default_tracking_uri() -> str:
    return f"sqlite:///{home() / 'mlflow.db'}"


def pipeline_dir(name: str) -> Path:
    return home() / "pipelines" / name


def log_dir(name: str, stage: str, attempt: int) -> Path:
    return pipeline_dir(name) / "logs" / stage / f"attempt-{attempt}"


# -- records ---------------------------------------------------------------------------


@dataclass
class Record:
    """What `eve-platform status/list/describe` read for a local pipeline."""

    name: str
    spec: PipelineSpec
    status: PipelineStatus = field(default_factory=PipelineStatus)
    runner_pid: int | None = None
    created_at: float = field(default_factory=time.time)
    events: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"apiVersion": "eve-platform.io/v1alpha1", "kind": "EvePipeline",
                "metadata": {"name": self.name, "creationTimestamp": self.created_at,
                             "backend": "local"},
                "spec": self.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
                "status": self.status.model_dump(mode="json", by_alias=True),
                "runnerPid": self.runner_pid, "events": self.events[-200:]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        return cls(name=data["metadata"]["name"], spec=PipelineSpec.model_validate(data["spec"]),
                   status=PipelineStatus.model_validate(data["status"]),
                   runner_pid=data.get("runnerPid"), created_at=data["metadata"]["creationTimestamp"],
                   events=data.get("events", []))

    def save(self) -> None:
        path = pipeline_dir(self.name) / "pipeline.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2))
        os.replace(tmp, path)

    @property
    def runner_alive(self) -> bool:
        return self.runner_pid is not None and _alive(self.runner_pid)


def load(name: str) -> Record | None:
    path = pipeline_dir(name) / "pipeline.json"
    if not path.is_file():
        return None
    return Record.from_json(json.loads(path.read_text()))


def list_records() -> list[Record]:
    root = home() / "pipelines"
    if not root.is_dir():
        return []
    records = [load(p.name) for p in sorted(root.iterdir()) if (p / "pipeline.json").is_file()]
    return sorted((r for r in records if r), key=lambda r: r.created_at)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child counts as gone
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


# -- a stage job as local processes ----------------------------------------------------------


class LocalJob:
    """One stage attempt: world_size processes of `python -m eve_trainer` on this machine."""

    def __init__(self, job: JobSpec, logs: Path):
        self.job, self.logs = job, logs
        self.procs: list[subprocess.Popen] = []
        self.finished_at: float | None = None
        self.message = ""
        self.exit_codes: list[int] = []
        self.suspended = False
        self.logs_uploaded = False  # a failed attempt's rank logs go to MLflow once

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        topo = single_node(self.job.world_size)  # one machine: the launcher's rank env, one rendezvous
        for rank in range(topo.world_size):
            env = dict(os.environ, **self.job.env, **topo.rank_env(rank),
                       OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
            if self.job.resources.gpus_per_node == 0:
                env["CUDA_VISIBLE_DEVICES"] = ""
            cmd = [sys.executable, "-m", "eve_trainer", *self.job.command[1:]]
            log = open(self.logs / f"rank-{rank}.log", "ab")  # noqa: SIM115 - owned by the child
            self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                               start_new_session=True))
            log.close()

    def state(self) -> JobState:
        # as a container runtime reports them: a rank killed by signal n exits 128 + n
        codes = [None if (c := p.poll()) is None else exit_code(c) for p in self.procs]
        failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            if not self.exit_codes:  # the codes of the ranks that failed first, before the rest is stopped
                self.exit_codes = [c for _, c in failed if c is not None]
            self.terminate()
            rank, code = failed[0]
            tail = _tail(self.logs / f"rank-{rank}.log", 3)
            self.message = f"rank {rank} exited with code {code}" + (f": {tail}" if tail else "")
            self.finished_at = self.finished_at or time.time()
            return "Failed"
        if all(c == 0 for c in codes):
            self.finished_at = self.finished_at or time.time()
            return "Succeeded"
        return "Suspended" if self.suspended else "Running"

    def set_suspended(self, suspended: bool) -> None:
        self.suspended = suspended
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGSTOP if suspended else signal.SIGCONT)

    def dump_stacks(self, wait_s: float = 5.0) -> None:
        """SIGUSR1 to each live rank: the trainer's faulthandler writes every thread's Python stack
        to its log (even while blocked in C). Waits, up to `wait_s`, for each log to grow."""
        sizes = {}
        for rank, p in enumerate(self.procs):
            if p.poll() is None:
                log = self.logs / f"rank-{rank}.log"
                sizes[log] = log.stat().st_size if log.exists() else 0
                _signal_group(p.pid, signal.SIGCONT)
                p.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + wait_s
        while sizes and time.monotonic() < deadline:
            sizes = {log: n for log, n in sizes.items() if (log.stat().st_size if log.exists() else 0) <= n}
            time.sleep(0.05)

    def terminate(self, grace_s: float = 30.0) -> None:
        """SIGTERM to each rank's main process, as the kubelet does to a container's PID 1 (the
        trainer checkpoints and exits 143); SIGKILL to what is left of the group after the grace.
        Its data-loader workers are not signalled: they must outlive the final checkpoint."""
        for p in self.procs:
            if p.poll() is None:
                _signal_group(p.pid, signal.SIGCONT)
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for p in self.procs:
            try:
                p.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(p.pid, signal.SIGKILL)
            p.wait()


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def _log_end(path: Path, size: int = 8192) -> list[str]:
    """The non-empty lines of the last `size` bytes of a log (never the whole file)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(f.seek(0, os.SEEK_END) - size, 0))
            return [line.strip() for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def _tail(path: Path, lines: int) -> str:
    return " | ".join(_log_end(path)[-lines:])


def last_line(path: Path, marker: str) -> str:
    """The newest line of a log that contains `marker` (the trainer's progress lines)."""
    return next((line for line in reversed(_log_end(path)) if marker in line), "")


def upload_rank_logs(tracking_uri: str, experiment: str, parent_run_id: str, stage: str, log_dir: str,
                     attempt: int) -> str | None:
    """Attach a failed attempt's rank logs to its stage run as logs/attempt-<k>/rank-<r>.log.

    For whoever holds the logs (the local backend's runner): the stage run is the newest run
    with this parent and stage. Returns its id, or None when the stage never reached MLflow."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
        filter_string=f"tags.`{TAG_PARENT_RUN}` = '{parent_run_id}' and tags.`{TAG_STAGE}` = '{stage}'")
    if not runs:
        return None
    run_id = runs[0].info.run_id
    client.log_artifacts(run_id, log_dir, f"{LOGS_ARTIFACT_DIR}/attempt-{attempt}")
    return run_id


def _upload_rank_logs(spec: PipelineSpec, parent_run_id: str | None, job: LocalJob) -> None:
    """A failed attempt's rank logs go to its stage run in MLflow (logs/attempt-<k>/)."""
    if not spec.mlflow.tracking_uri or not parent_run_id:
        return
    try:
        upload_rank_logs(spec.mlflow.tracking_uri, spec.mlflow.experiment, parent_run_id, job.job.stage,
                         str(job.logs), job.job.attempt)
    except Exception as err:  # noqa: BLE001 - tracking never stops the pipeline
        print(f"warning: rank logs of {job.job.name} not uploaded to MLflow: {err}", file=sys.stderr)


# -- the runner ----------------------------------------------------------------------------


class LocalRunner:
    """Runs one pipeline to the end: observe -> decide -> act, every POLL_S."""

    def __init__(self, record: Record, on_event: Callable[[Emit], None] | None = None,
                 on_tick: Callable[[Record, LocalJob | None], None] | None = None):
        self.record, self.on_event, self.on_tick = record, on_event, on_tick
        self.store = open_store(record.spec.output, endpoint_url=record.spec.s3.endpoint_url)
        self.job: LocalJob | None = None
        self.reads = StoreReads(record.name, record.spec.output, lambda: self.store)
        self.runs = RunRecords(record.spec.mlflow.tracking_uri, record.spec.mlflow.experiment, record.name,
                               warn=lambda msg: print(f"warning: {msg}", file=sys.stderr))
        self._cancelled = False
        self._store_down_since: float | None = None
        self._store_down_said = 0.0

    def cancel(self, *_: Any) -> None:
        self._cancelled = True

    # the observer's StageReader: this runner's processes, and the store

    def job_report(self, name: str) -> JobReport:
        if self.job is None or self.job.job.name != name:
            return JobReport()  # lost (runner restarted): the core submits it again
        state = self.job.state()
        return JobReport(state, self.job.message, self.job.finished_at)

    def exit_codes(self, name: str) -> list[int]:
        return list(self.job.exit_codes) if self.job is not None and self.job.job.name == name else []

    def error_line(self, name: str) -> str:
        if self.job is None or self.job.job.name != name:
            return ""
        return error_line("\n".join("\n".join(_log_end(p)) for p in sorted(self.job.logs.glob("rank-*.log"))))

    def observe(self) -> Observation:
        observation = observe(self.record.spec, self.record.status, _Reader(self))
        job = self.job
        if job is not None and not job.logs_uploaded and job.state() == "Failed":
            job.logs_uploaded = True
            _upload_rank_logs(self.record.spec, self.record.status.mlflow_run_id, job)
        return observation

    def act(self, decision: Decision) -> None:
        for action in decision.actions:
            if isinstance(action, SubmitJob):
                job = build_job_spec(self.record.name, self.record.spec, action,
                                     parent_run_id=self.record.status.mlflow_run_id)
                self.job = LocalJob(job, log_dir(self.record.name, action.stage, action.attempt))
                self.job.start()
            elif isinstance(action, SetSuspended) and self.job is not None:
                self.job.set_suspended(action.suspended)
            elif isinstance(action, StopJob) and self.job is not None and self.job.job.name == action.job_name:
                self.job.dump_stacks()
                self.job.terminate(grace_s=STALL_GRACE_S)
            elif isinstance(action, EndStageRun):
                self.runs.end_stage(self.record.status.mlflow_run_id, action.stage, action.status, action.reason)
            elif isinstance(action, Emit):
                self.record.events.append({"time": time.time(), "type": action.type,
                                           "reason": action.reason, "message": action.message})
                if self.on_event:
                    self.on_event(action)

    def run(self) -> PipelineStatus:
        rec = self.record
        rec.runner_pid = os.getpid()
        if not rec.status.stages:
            rec.status = initial_status(rec.spec)
        if rec.status.mlflow_run_id is None:
            rec.status.mlflow_run_id = self.runs.start(
                {"eve.pipeline": rec.name, "eve.preset": rec.spec.preset, "eve.backend": "local"},
                parent_run_params(rec.spec))
        rec.save()
        try:
            while not rec.status.done:
                if self._cancelled:
                    self._stop("cancelled by the user", "cancelled")
                    break
                try:
                    observation = self.observe()
                except StorageUnavailable as err:  # the world's: an outage ends, keep the pipeline
                    self._say_store_down(err)
                    time.sleep(POLL_S)
                    continue
                except StorageAccessError as err:  # the user's: no bucket, access denied, no credentials
                    self._stop(f"invalid output={rec.spec.output}: {err}", "permanent")
                    break
                self._store_down_since = None
                decision = decide(rec.name, rec.spec, rec.status, observation, time.time())
                rec.status = decision.status
                self.act(decision)
                rec.save()
                self.runs.sync(rec.status.mlflow_run_id, parent_run_tags(rec.status))
                if self.on_tick:
                    self.on_tick(rec, self.job)
                if not rec.status.done:
                    time.sleep(POLL_S)
        except BaseException:
            self._stop("runner interrupted", "cancelled")
            raise
        finally:
            rec.runner_pid = None
            rec.save()
            self.runs.sync(rec.status.mlflow_run_id, parent_run_tags(rec.status))
            self.runs.finish(rec.status.mlflow_run_id, "FINISHED" if rec.status.phase == "Succeeded" else "FAILED")
        return rec.status

    def _say_store_down(self, err: Exception) -> None:
        """While the object store does not answer, say so every STORE_DOWN_REPORT_S."""
        now = time.monotonic()
        if self._store_down_since is None:
            self._store_down_since, self._store_down_said = now, 0.0
        if now - self._store_down_said >= STORE_DOWN_REPORT_S:
            self._store_down_said = now
            print(f"waiting for the object store of {self.record.spec.output} "
                  f"({now - self._store_down_since:.0f} s so far): {err}", file=sys.stderr, flush=True)

    def _stop(self, why: str, failure_class: FailureClass) -> None:
        if self.job is not None:
            self.job.terminate()
        rec = self.record
        if not rec.status.done:
            rec.status.failed(failure_class, why)
            ended = []
            for s in rec.status.stages:
                if s.state in ("Submitted", "Running"):
                    s.state, s.message, s.finished_at = "Failed", why, time.time()
                    ended.append(EndStageRun(s.name, "KILLED", why))
            self.act(Decision(rec.status, [*ended, Emit("PipelineFailed", why, "Warning")]))
        rec.save()


class _Reader:
    def __init__(self, runner: LocalRunner):
        self.job, self.exit_codes, self.error_line = runner.job_report, runner.exit_codes, runner.error_line
        self.complete, self.heartbeats = runner.reads.complete, runner.reads.heartbeats


def run_detached(name: str) -> int:
    """Start the runner of a saved pipeline in the background; returns its pid."""
    path = pipeline_dir(name)
    log = open(path / "runner.log", "ab")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen([sys.executable, "-m", "eve_operator.backends.local", name],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env=dict(os.environ, EVE_PLATFORM_HOME=str(home())))
    log.close()
    return proc.pid


def _main() -> None:
    record = load(sys.argv[1])
    if record is None:
        raise SystemExit(f"no local pipeline {sys.argv[1]!r} under {home()}")
    runner = LocalRunner(record, on_event=lambda e: print(f"[{e.type}] {e.reason}: {e.message}", flush=True))
    signal.signal(signal.SIGTERM, runner.cancel)
    status = runner.run()
    raise SystemExit(0 if status.phase == "Succeeded" else 1)


if __name__ == "__main__":
    _main()
