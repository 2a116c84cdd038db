"""One pipeline's reconcile loop in the operator: observe -> decide -> act -> status + Events.

    observe (eve_operator.observe over the job API and S3) -> decide() -> act

The state machine (eve_operator.pipeline.decide) and the observer are pure; this is the
I/O shell around them. Kubernetes and S3 calls block, so they run in threads.

Idempotence: child names are deterministic (eve_contract.naming.job_name), a 409 on create counts
as success, and the status written is recomputed from what is observed, so a restart at
any point resumes without duplicate jobs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import kopf
from pydantic import ValidationError

from eve_contract.errors import validation_message
from eve_contract.naming import validate_pipeline_name
from eve_operator import metrics, tracking
from eve_operator.defaults import operator_defaults
from eve_operator.jobapi import job_api_for
from eve_operator.jobspec import build_job_spec
from eve_operator.kube import Kube, open_store
from eve_operator.observe import JobReport, StoreReads, error_line, observe
from eve_operator.pipeline import (
    Emit,
    EndStageRun,
    Observation,
    PipelineStatus,
    SetSuspended,
    StageComplete,
    StopJob,
    SubmitJob,
    decide,
    initial_status,
    parent_run_params,
    parent_run_tags,
)
from eve_operator.spec import PipelineSpec
from eve_trainer.config import ConfigError

log = logging.getLogger("eve_operator")


class WaitError(Exception):
    """A dependency is missing (Secret, S3): explain in status, warn, submit nothing, retry."""


class ClusterReader:
    """The observer's `StageReader` on a cluster: the job API for jobs, S3 for the rest."""

    def __init__(self, loop: PipelineLoop, spec: PipelineSpec, creds: dict[str, str] | None):
        self.loop, self.spec = loop, spec
        self.store = StoreReads(loop.name, spec.output, lambda: open_store(spec, creds), deep=loop.deep_verify)
        self.store.verified = loop.verified  # verified exports stay verified across passes

    def job(self, name: str) -> JobReport:
        kube, ns = self.loop.kube, self.loop.namespace
        obj = self.loop.jobs.get((ns, kube.jobs.object_name(name)))  # as last seen by the watch (saves a GET)
        if obj is None:
            obj = kube.get_job(ns, name)
        return kube.jobs.report(obj)

    def exit_codes(self, name: str) -> list[int]:
        return self.loop.kube.exit_codes(self.loop.namespace, name)

    def error_line(self, name: str) -> str:
        messages = [m for code, m in self.loop.kube.terminations(self.loop.namespace, name) if code]
        return error_line("\n".join(messages))

    def complete(self, stage: str) -> StageComplete | None:
        return self._s3(self.store.complete, stage)

    def heartbeats(self, stage: str) -> list[Any]:
        return self._s3(self.store.heartbeats, stage)

    def _s3(self, fn: Any, stage: str) -> Any:
        try:
            return fn(stage)
        except Exception as err:  # noqa: BLE001 - endpoint down, bucket missing, access denied
            raise WaitError(f"cannot read {self.spec.output} (S3 {self.spec.s3.endpoint_url or 'AWS'}): "
                            f"{type(err).__name__}: {err}") from err


@dataclass
class PipelineLoop:
    name: str
    namespace: str
    body: kopf.Body
    kube: Kube
    jobs: dict[tuple[str, str], dict[str, Any]]
    """Stage jobs as last seen by the watch (saves a GET per pass)."""
    deep_verify: bool = True
    status: PipelineStatus | None = None
    verified: dict[str, StageComplete] = field(default_factory=dict)
    last_warning: str = ""
    mlflow_tried: bool = False
    woken_at: float | None = None
    creds: tuple[float, dict[str, str]] | None = None
    effective: dict[str, dict[str, str]] = field(default_factory=dict)
    """Effective defaultable fields and their source (eve_operator.defaults), for describe."""
    runs: tracking.RunRecords | None = None

    @property
    def uid(self) -> str:
        return str(self.body.get("metadata", {}).get("uid", ""))

    def event(self, type_: str, reason: str, message: str) -> None:
        kopf.event(self.body, type=type_, reason=reason, message=message[:1000])

    def warn_once(self, reason: str, message: str) -> None:
        if message != self.last_warning:
            self.last_warning = message
            self.event("Warning", reason, message)
            log.warning("[%s/%s] %s: %s", self.namespace, self.name, reason, message)

    async def write_status(self, status: PipelineStatus) -> None:
        if self.status is not None and status == self.status:
            return
        body = {**status.model_dump(by_alias=True, mode="json"), "effective": self.effective}
        generation = self.body.get("metadata", {}).get("generation")
        if generation is not None:
            body["observedGeneration"] = generation
        await asyncio.to_thread(self.kube.patch_status, self.namespace, self.name, body)
        self.status = status

    def load_status(self) -> PipelineStatus:
        if self.status is None:  # first pass (create or operator restart): what the cluster has
            raw = dict(self.body.get("status") or {})  # unknown keys (kopf's, observedGeneration) ignored
            try:
                self.status = PipelineStatus.model_validate(raw) if raw.get("stages") else None
            except ValidationError:
                self.status = None
        return self.status if self.status is not None else PipelineStatus()

    async def reconcile(self) -> PipelineStatus:
        status = self.load_status()
        try:
            validate_pipeline_name(self.name)
            spec, self.effective = operator_defaults().parse(self.body.get("spec")), \
                operator_defaults().provenance(self.body.get("spec"))
        except ValidationError as err:
            return await self.fail(status, validation_message(err, what="spec", root="spec", values=False), "InvalidSpec")
        except ValueError as err:
            return await self.fail(status, f"invalid name: {err}", "InvalidSpec")
        try:
            self.kube = self.kube.using(job_api_for(spec))  # PyTorchJob or TrainJob (spec.jobApi)
        except ValueError as err:
            return await self.fail(status, f"invalid spec: spec.jobApi: {err}", "InvalidSpec")
        if status.phase == "Failed" and not status.stages:  # only an invalid spec or name fails before any stage
            status = PipelineStatus()  # the spec was fixed: start over
        if status.done:
            return status
        self.runs = self.run_records(spec)
        if not status.stages:
            status = initial_status(spec)
            status.mlflow_run_id = await self.parent_run(spec)
        try:
            observation = await self.observe(spec, status)
            decision = decide(self.name, spec, status, observation, time.time())
            await self.act(spec, decision.actions, decision.status)
        except WaitError as err:
            status = status.model_copy(update={"message": f"waiting: {err}"})
            self.warn_once("Waiting", str(err))
            await self.write_status(status)
            return status
        except ConfigError as err:  # an override the trainer does not know, or a bad value
            return await self.fail(status, f"invalid trainer config: {err}", "InvalidConfig")
        self.last_warning = ""
        new = decision.status
        if new.message.startswith("waiting: ") and new.message == status.message:
            new.message = ""
        await self.write_status(new)
        emitted = [a for a in decision.actions if isinstance(a, Emit)]
        for action in emitted:
            self.event(action.type, action.reason, action.message)
        if emitted and self.woken_at is not None:
            for action in emitted:
                metrics.TRANSITIONS.observe(time.monotonic() - self.woken_at, transition=action.reason)
        await asyncio.to_thread(self.runs.sync, new.mlflow_run_id, parent_run_tags(new))
        if new.done:
            await asyncio.to_thread(self.runs.finish, new.mlflow_run_id,
                                    "FINISHED" if new.phase == "Succeeded" else "FAILED")
        return new

    async def fail(self, status: PipelineStatus, message: str, reason: str) -> PipelineStatus:
        """Permanent: the spec or config cannot run. Nothing is submitted."""
        if status.phase == "Failed" and status.message == message:
            return status
        failed = status.model_copy(deep=True)
        failed.failed("permanent", message)
        await self.write_status(failed)
        self.event("Warning", reason, message)
        return failed

    def run_records(self, spec: PipelineSpec) -> tracking.RunRecords:
        if self.runs is None or (self.runs.uri, self.runs.experiment) != (spec.mlflow.tracking_uri,
                                                                          spec.mlflow.experiment):
            return tracking.RunRecords(spec.mlflow.tracking_uri, spec.mlflow.experiment, self.name,
                                       warn=lambda msg: self.warn_once("MlflowUnavailable", msg))
        return self.runs

    async def parent_run(self, spec: PipelineSpec) -> str | None:
        if self.mlflow_tried or self.runs is None:
            return None
        self.mlflow_tried = True
        tags = {"eve.pipeline": self.name, "eve.namespace": self.namespace, "eve.preset": spec.preset}
        return await asyncio.to_thread(self.runs.start, tags, parent_run_params(spec))

    # -- observe ---------------------------------------------------------------------

    def credentials(self, spec: PipelineSpec) -> dict[str, str] | None:
        secret = spec.s3.credentials_secret
        if not secret or not operator_defaults().read_pipeline_secrets:
            return None  # the operator's own identity (its env, IRSA / workload identity)
        if self.creds is not None and time.monotonic() - self.creds[0] < 60:
            return self.creds[1]
        data = self.kube.secret_data(self.namespace, secret)
        if data is None:
            raise WaitError(f"Secret {self.namespace}/{secret} (spec.s3.credentialsSecret) not found; "
                            "create it with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        missing = [k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if k not in data]
        if missing:
            raise WaitError(f"Secret {self.namespace}/{secret} lacks {', '.join(missing)}")
        self.creds = (time.monotonic(), data)
        return data

    async def observe(self, spec: PipelineSpec, status: PipelineStatus) -> Observation:
        if all(s.state == "Succeeded" for s in status.stages):
            return Observation()

        def run() -> Observation:
            creds = self.credentials(spec)  # checked every pass: nothing is submitted without it
            return observe(spec, status, ClusterReader(self, spec, creds))

        return await asyncio.to_thread(run)

    # -- act -------------------------------------------------------------------------

    async def act(self, spec: PipelineSpec, actions: list[Any], status: PipelineStatus) -> None:
        """Carry out the actions in order. Jobs are built (and so validated) before any is touched.

        StopJob deletes the job: there is no exec, so the stacks come from the trainer itself
        (the kubelet SIGTERMs each rank; its handler dumps every thread's stack to the log).
        """
        bodies = {}
        for action in actions:
            if isinstance(action, SubmitJob):
                job = build_job_spec(self.name, spec, action, parent_run_id=status.mlflow_run_id)
                bodies[action.job_name] = self.kube.jobs.body(job, self.namespace,
                                                              {"name": self.name, "uid": self.uid})
        for action in actions:
            if isinstance(action, SubmitJob):
                await asyncio.to_thread(self.kube.create_job, self.namespace, bodies[action.job_name])
            elif isinstance(action, SetSuspended) and action.job_name:
                await asyncio.to_thread(self.kube.suspend_job, self.namespace, action.job_name, action.suspended)
            elif isinstance(action, StopJob) and action.job_name:
                await asyncio.to_thread(self.kube.delete_job, self.namespace, action.job_name)
            elif isinstance(action, EndStageRun) and self.runs is not None:
                await asyncio.to_thread(self.runs.end_stage, status.mlflow_run_id, action.stage, action.status,
                                        action.reason)


__all__ = ["PipelineLoop", "WaitError", "ClusterReader"]
