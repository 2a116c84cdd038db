"""kopf handlers: one reconcile loop per EvePipeline, fed by spec changes, child events and a timer.

    observe (PyTorchJob + stage-complete manifest in S3) -> decide() -> act -> status + Events

The state machine (eve_operator.pipeline.decide) is pure; everything here is the I/O
shell around it. Each pipeline gets a kopf daemon: the only writer of its status, so
reconciles of one pipeline never race. It runs a pass at start (create and operator
restart alike), whenever a child PyTorchJob changes or the spec is edited (both wake it
at once), and every `resync_s` as a safety net (a manifest appearing in S3 sends no event).

Idempotence: child names are deterministic (pipeline.job_name), a 409 on create counts
as success, and the status written is recomputed from what is observed, so a restart at
any point resumes without duplicate jobs.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import kopf
from pydantic import ValidationError

from eve_trainer.config import ConfigError

from eve_operator import metrics, tracking
from eve_operator.defaults import operator_defaults
from eve_operator.crd import GROUP, PLURAL, VERSION
from eve_operator.jobspec import LABEL_PIPELINE, build_job_spec
from eve_operator.pipeline import (
    Emit, Observation, PipelineStatus, SetSuspended, StageComplete, SubmitJob, decide, initial_status,
)
from eve_operator.pytorchjob import CONTAINER, build_pytorchjob, job_state
from eve_operator.pytorchjob import GROUP as JOB_GROUP
from eve_operator.pytorchjob import PLURAL as JOB_PLURAL
from eve_operator.pytorchjob import VERSION as JOB_VERSION
from eve_operator.spec import PipelineSpec, validate_name

log = logging.getLogger("eve_operator")
JOB_NAME_LABEL = "training.kubeflow.org/job-name"
#: The trainer's exit code for bad input (config, data): retrying cannot help (docs/contracts.md).
PERMANENT_EXIT_CODE = 2


@dataclass
class Config:
    """Operator settings: flags of `eve-operator`, or EVE_OPERATOR_* in the environment."""

    resync_s: float = 30.0
    """Safety-net reconcile period of each pipeline (manifests in S3 send no events)."""
    metrics_port: int = 0
    """Serve /metrics on this port; 0: off."""
    deep_verify: bool = True
    """Re-hash every export file before a stage counts as complete (else: sizes only)."""

    @classmethod
    def from_env(cls) -> Config:
        return cls(resync_s=float(os.environ.get("EVE_OPERATOR_RESYNC_S", cls.resync_s)),
                   metrics_port=int(os.environ.get("EVE_OPERATOR_METRICS_PORT", 0)),
                   deep_verify=os.environ.get("EVE_OPERATOR_VERIFY", "deep") != "size")


CONFIG = Config.from_env()


class WaitError(Exception):
    """A dependency is missing (Secret, S3): explain in status, warn, submit nothing, retry."""


# -- the Kubernetes API (official client, in threads) -------------------------------------


class Kube:
    """The few calls the handlers make, each counted in eve_operator_api_requests_total."""

    def __init__(self) -> None:
        import kubernetes

        cfg = kubernetes.client.Configuration()
        try:
            kubernetes.config.load_incluster_config(client_configuration=cfg)
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=cfg)
        cfg.connection_pool_maxsize = 32
        self.client = kubernetes.client.ApiClient(cfg)
        self.custom = kubernetes.client.CustomObjectsApi(self.client)
        self.core = kubernetes.client.CoreV1Api(self.client)
        self.ApiException = kubernetes.client.ApiException

    async def call(self, verb: str, resource: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        code = "201" if verb == "create" else "200"
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except self.ApiException as err:
            code = str(err.status)
            raise
        except Exception:
            code = "error"
            raise
        finally:
            metrics.API_REQUESTS.inc(verb=verb, resource=resource, code=code)

    async def get_job(self, ns: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.call("get", JOB_PLURAL, self.custom.get_namespaced_custom_object,
                                   JOB_GROUP, JOB_VERSION, ns, JOB_PLURAL, name)
        except self.ApiException as err:
            if err.status == 404:
                return None
            raise

    async def create_job(self, ns: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """Create; an existing job of that name (409) is success: names are deterministic."""
        try:
            return await self.call("create", JOB_PLURAL, self.custom.create_namespaced_custom_object,
                                   JOB_GROUP, JOB_VERSION, ns, JOB_PLURAL, body)
        except self.ApiException as err:
            if err.status == 409:
                return None
            raise

    async def suspend_job(self, ns: str, name: str, suspended: bool) -> None:
        await self.call("patch", JOB_PLURAL, self.custom.patch_namespaced_custom_object,
                        JOB_GROUP, JOB_VERSION, ns, JOB_PLURAL, name,
                        {"spec": {"runPolicy": {"suspend": suspended}}})

    async def delete_children(self, ns: str, pipeline: str) -> list[str]:
        listed = await self.call("list", JOB_PLURAL, self.custom.list_namespaced_custom_object,
                                 JOB_GROUP, JOB_VERSION, ns, JOB_PLURAL,
                                 label_selector=f"{LABEL_PIPELINE}={pipeline}")
        # filter here too: the selector is a server-side nicety some API servers (kmock) ignore
        names = [j["metadata"]["name"] for j in listed.get("items", [])
                 if (j["metadata"].get("labels") or {}).get(LABEL_PIPELINE) == pipeline]
        for name in names:
            try:
                await self.call("delete", JOB_PLURAL, self.custom.delete_namespaced_custom_object,
                                JOB_GROUP, JOB_VERSION, ns, JOB_PLURAL, name,
                                propagation_policy="Background")
            except self.ApiException as err:
                if err.status != 404:
                    raise
        return names

    async def exit_codes(self, ns: str, job: str) -> list[int]:
        """Exit codes of the `pytorch` containers of a job's pods (its failed pods stay: cleanPodPolicy
        Running deletes only running ones)."""
        pods = await self.call("list", "pods", self.core.list_namespaced_pod, ns,
                               label_selector=f"{JOB_NAME_LABEL}={job}")
        codes = []
        for pod in pods.items:
            if (pod.metadata.labels or {}).get(JOB_NAME_LABEL) != job:
                continue  # the selector is a server-side nicety some API servers (kmock) ignore
            for container in (pod.status.container_statuses if pod.status else None) or []:
                if container.name != CONTAINER:
                    continue
                for state in (container.state, container.last_state):
                    if state is not None and state.terminated is not None:
                        codes.append(int(state.terminated.exit_code))
        return codes

    async def secret_data(self, ns: str, name: str) -> dict[str, str] | None:
        try:
            secret = await self.call("get", "secrets", self.core.read_namespaced_secret, name, ns)
        except self.ApiException as err:
            if err.status == 404:
                return None
            raise
        return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}

    async def patch_status(self, ns: str, name: str, status: dict[str, Any]) -> None:
        await self.call("patch", f"{PLURAL}/status", self.custom.patch_namespaced_custom_object_status,
                        GROUP, VERSION, ns, PLURAL, name, {"status": status})


# -- S3 ----------------------------------------------------------------------------------


_S3_CLIENTS: dict[tuple[str | None, str | None, str | None], Any] = {}


def _open_store(spec: PipelineSpec, creds: dict[str, str] | None) -> Any:
    """The pipeline's output store, with the pipeline's credentials, failing fast."""
    from eve_trainer.storage import S3Store, open_store

    store = open_store(spec.output, endpoint_url=spec.s3.endpoint_url, region=spec.s3.region)
    if isinstance(store, S3Store):
        endpoint = spec.s3.endpoint_url or os.environ.get("EVE_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
        key_id = (creds or {}).get("AWS_ACCESS_KEY_ID")
        key = (endpoint, spec.s3.region, key_id)
        if key not in _S3_CLIENTS:  # clients are thread-safe and costly to build: one per endpoint + key
            import boto3
            from botocore.config import Config as BotoConfig

            keys = {}
            if creds:
                keys = {"aws_access_key_id": key_id, "aws_secret_access_key": creds.get("AWS_SECRET_ACCESS_KEY")}
            # a reconcile must not hang on an unreachable store: short timeouts, one retry
            _S3_CLIENTS[key] = boto3.session.Session().client(
                "s3", endpoint_url=endpoint,
                region_name=spec.s3.region or os.environ.get("AWS_REGION") or "us-east-1",
                config=BotoConfig(connect_timeout=3, read_timeout=20, retries={"max_attempts": 2},
                                  max_pool_connections=32, s3={"addressing_style": "path"} if endpoint else {}),
                **keys)
        store.client = _S3_CLIENTS[key]
    return store


# -- one pipeline's reconcile loop --------------------------------------------------------


def spec_error(err: ValidationError) -> str:
    """'invalid spec: spec.<field>: <problem>' for every problem pydantic found."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"spec.{loc}: {msg}" if loc else f"spec: {msg}")
    return "invalid spec: " + "; ".join(parts)


@dataclass
class PipelineLoop:
    name: str
    namespace: str
    body: kopf.Body
    kube: Kube
    jobs: dict[tuple[str, str], dict[str, Any]]
    """Stage jobs as last seen by the watch (saves a GET per pass)."""
    status: PipelineStatus | None = None
    verified: dict[str, StageComplete] = field(default_factory=dict)
    last_warning: str = ""
    mlflow_tried: bool = False
    woken_at: float | None = None
    creds: tuple[float, dict[str, str]] | None = None
    effective: dict[str, dict[str, str]] = field(default_factory=dict)
    """Effective defaultable fields and their source (eve_operator.defaults), for describe."""

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
        await self.kube.patch_status(self.namespace, self.name, body)
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
            validate_name(self.name)
            spec, self.effective = operator_defaults().parse(self.body.get("spec")), \
                operator_defaults().provenance(self.body.get("spec"))
        except ValidationError as err:
            return await self.fail(status, spec_error(err), "InvalidSpec")
        except ValueError as err:
            return await self.fail(status, f"invalid name: {err}", "InvalidSpec")
        if status.phase == "Failed" and not status.stages and status.message.startswith("invalid "):
            status = PipelineStatus()  # the spec was fixed: start over
        if status.done:
            return status
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
        if new.done and new.mlflow_run_id and spec.mlflow.tracking_uri:
            await self.finish_parent_run(spec, new)
        return new

    async def fail(self, status: PipelineStatus, message: str, reason: str) -> PipelineStatus:
        """Permanent: the spec or config cannot run. Nothing is submitted."""
        if status.phase == "Failed" and status.message == message:
            return status
        failed = status.model_copy(update={"phase": "Failed", "message": message})
        await self.write_status(failed)
        self.event("Warning", reason, message)
        return failed

    async def parent_run(self, spec: PipelineSpec) -> str | None:
        if not spec.mlflow.tracking_uri or self.mlflow_tried:
            return None
        self.mlflow_tried = True
        try:
            return await asyncio.to_thread(
                tracking.create_pipeline_run, spec.mlflow.tracking_uri, spec.mlflow.experiment, self.name,
                {"eve.pipeline": self.name, "eve.namespace": self.namespace, "eve.preset": spec.preset})
        except tracking.TrackingError as err:
            log.warning("[%s/%s] continuing without an MLflow parent run: %s", self.namespace, self.name, err)
            self.event("Warning", "MlflowUnavailable", f"continuing without an MLflow parent run: {err}")
            return None

    async def finish_parent_run(self, spec: PipelineSpec, status: PipelineStatus) -> None:
        try:
            await asyncio.to_thread(tracking.finish_run, spec.mlflow.tracking_uri or "", status.mlflow_run_id or "",
                                    "FINISHED" if status.phase == "Succeeded" else "FAILED")
        except tracking.TrackingError as err:
            log.warning("[%s/%s] could not close the MLflow run: %s", self.namespace, self.name, err)

    # -- observe ---------------------------------------------------------------------

    async def credentials(self, spec: PipelineSpec) -> dict[str, str] | None:
        secret = spec.s3.credentials_secret
        if not secret or not operator_defaults().read_pipeline_secrets:
            return None  # the operator's own identity (its env, IRSA / workload identity)
        if self.creds is not None and time.monotonic() - self.creds[0] < 60:
            return self.creds[1]
        data = await self.kube.secret_data(self.namespace, secret)
        if data is None:
            raise WaitError(f"Secret {self.namespace}/{secret} (spec.s3.credentialsSecret) not found; "
                            "create it with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        missing = [k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if k not in data]
        if missing:
            raise WaitError(f"Secret {self.namespace}/{secret} lacks {', '.join(missing)}")
        self.creds = (time.monotonic(), data)
        return data

    async def complete(self, spec: PipelineSpec, stage: str, creds: dict[str, str] | None) -> StageComplete | None:
        if stage in self.verified:
            return self.verified[stage]
        from eve_trainer import layout

        def check() -> StageComplete | None:
            store = _open_store(spec, creds)
            manifest = layout.stage_complete(store, self.name, stage, deep=CONFIG.deep_verify)
            if manifest is None:
                return None
            url = f"{spec.output.rstrip('/')}/{layout.export_prefix(self.name, stage)}"
            return StageComplete(url, manifest.mlflow_run_id)

        try:
            found = await asyncio.to_thread(check)
        except Exception as err:  # noqa: BLE001 - endpoint down, bucket missing, access denied
            raise WaitError(f"cannot read {spec.output} (S3 {spec.s3.endpoint_url or 'AWS'}): "
                            f"{type(err).__name__}: {err}") from err
        if found is not None:
            self.verified[stage] = found
        return found

    async def observe(self, spec: PipelineSpec, status: PipelineStatus) -> Observation:
        current = next((s for s in status.stages if s.state != "Succeeded"), None)
        if current is None:
            return Observation()
        creds = await self.credentials(spec)  # checked every pass: nothing is submitted without it
        state, message, finished, permanent = "Absent", "", None, False
        if current.job_name and current.attempt > 0:
            job = self.jobs.get((self.namespace, current.job_name))
            if job is None:
                job = await self.kube.get_job(self.namespace, current.job_name)
            state, message, finished_iso = job_state(job)
            finished = _epoch(finished_iso)
            if (state == "Suspended" and not spec.suspend and spec.scheduling.gang_scheduler == "kueue"):
                state = "Pending"  # queued by Kueue, which un-suspends on admission: never fight it
            if state == "Failed":
                codes = await self.kube.exit_codes(self.namespace, current.job_name)
                permanent = PERMANENT_EXIT_CODE in codes
                if permanent:
                    message = f"{message} (the trainer exited with {PERMANENT_EXIT_CODE}: bad config or data)"
        previous = None
        if current.attempt == 0 and not spec.init_from and current.name == status.stages[0].name:
            if (prev := spec.previous_stage(current.name)) is not None:
                previous = await self.complete(spec, prev, creds)
        complete = None
        if current.attempt == 0 or state in ("Succeeded", "Failed", "Absent"):
            complete = await self.complete(spec, current.name, creds)
        return Observation(state, message, finished, complete, previous,  # type: ignore[arg-type]
                           job_permanent=permanent)

    # -- act -------------------------------------------------------------------------

    async def act(self, spec: PipelineSpec, actions: list[Any], status: PipelineStatus) -> None:
        """Submit/suspend jobs. Jobs are built (and so validated) before any is created."""
        bodies = []
        for action in actions:
            if isinstance(action, SubmitJob):
                job = build_job_spec(self.name, spec, action, parent_run_id=status.mlflow_run_id)
                bodies.append(build_pytorchjob(job, namespace=self.namespace,
                                               owner={"name": self.name, "uid": self.uid}))
        for body in bodies:
            await self.kube.create_job(self.namespace, body)
        for action in actions:
            if isinstance(action, SetSuspended) and action.job_name:
                try:
                    await self.kube.suspend_job(self.namespace, action.job_name, action.suspended)
                except self.kube.ApiException as err:
                    if err.status != 404:
                        raise


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    from datetime import datetime

    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


# -- kopf wiring --------------------------------------------------------------------------


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.persistence.finalizer = f"{GROUP}/cleanup"
    settings.posting.level = logging.ERROR  # Events are posted explicitly, one per transition
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(16, thread_name_prefix="eve-io"))
    memo.kube = Kube()
    log.info("operator defaults: %s", operator_defaults(reload=True))
    memo.wakers = {}
    memo.phases = {}
    memo.jobs = {}
    memo.metrics_runner = await _serve_metrics(CONFIG.metrics_port) if CONFIG.metrics_port else None


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    if getattr(memo, "metrics_runner", None) is not None:
        await memo.metrics_runner.cleanup()


@kopf.on.probe(id="pipelines")
def probe_pipelines(memo: kopf.Memo, **_: Any) -> int:
    return len(getattr(memo, "wakers", {}))


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=10.0)
async def pipeline_daemon(name: str, namespace: str, body: kopf.Body, memo: kopf.Memo,
                          stopped: kopf.DaemonStopped, **_: Any) -> None:
    """The reconcile loop of one pipeline, for as long as it exists."""
    key = (namespace, name)
    wake = memo.wakers.setdefault(key, asyncio.Event())
    loop = PipelineLoop(name, namespace, body, memo.kube, memo.jobs)
    try:
        while not stopped:
            wake.clear()
            try:
                status = await loop.reconcile()
                metrics.RECONCILES.inc(outcome="ok")
                memo.phases[key] = status.phase
            except Exception as err:  # noqa: BLE001 - API hiccup: log, count, try again next pass
                metrics.RECONCILES.inc(outcome="error")
                log.exception("[%s/%s] reconcile failed: %s", namespace, name, err)
            metrics.PIPELINES.set_all("phase", _count(memo.phases.values()))
            try:
                await asyncio.wait_for(wake.wait(), timeout=CONFIG.resync_s)
            except TimeoutError:
                pass
            # event-driven passes are timed (event seen -> acted on); timer passes are not
            loop.woken_at = getattr(wake, "at", None) if wake.is_set() else None
            wake.at = None  # type: ignore[attr-defined]
    finally:
        memo.wakers.pop(key, None)
        memo.phases.pop(key, None)
        metrics.PIPELINES.set_all("phase", _count(memo.phases.values()))


def _wake(memo: kopf.Memo, namespace: str | None, name: str | None) -> None:
    waker = getattr(memo, "wakers", {}).get((namespace, name))
    if waker is not None:
        if not waker.is_set():
            waker.at = time.monotonic()  # type: ignore[attr-defined]
        waker.set()


def _count(phases: Any) -> dict[str, float]:
    counts: dict[str, float] = {p: 0.0 for p in ("Pending", "Running", "Suspended", "Succeeded", "Failed")}
    for phase in phases:
        counts[phase] = counts.get(phase, 0.0) + 1
    return counts


@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def spec_changed(name: str, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    """Suspend/resume and edits take effect at once, not at the next resync."""
    _wake(memo, namespace, name)


@kopf.on.event(JOB_GROUP, JOB_VERSION, JOB_PLURAL, labels={LABEL_PIPELINE: kopf.PRESENT})
def child_changed(type: str | None, name: str, namespace: str, labels: kopf.Labels, body: kopf.Body,
                  memo: kopf.Memo, **_: Any) -> None:
    """A stage job changed (running, succeeded, failed, deleted): reconcile its pipeline."""
    if type == "DELETED":
        memo.jobs.pop((namespace, name), None)
    else:
        memo.jobs[(namespace, name)] = dict(body)
    if type != "ADDED":  # our own create, or the initial listing: the daemon's own pass covers it
        _wake(memo, namespace, labels.get(LABEL_PIPELINE))


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def pipeline_deleted(name: str, namespace: str, status: kopf.Status, spec: kopf.Spec,
                           memo: kopf.Memo, **_: Any) -> None:
    """Delete the stage jobs explicitly: ownerReferences GC them on a cluster, but not everywhere."""
    deleted = await memo.kube.delete_children(namespace, name)
    log.info("[%s/%s] deleted %d stage job(s): %s", namespace, name, len(deleted), ", ".join(deleted))
    run_id, uri = status.get("mlflowRunId"), (operator_defaults().apply(spec).get("mlflow") or {}).get("trackingUri")
    if run_id and uri and status.get("phase") not in ("Succeeded", "Failed"):
        try:
            await asyncio.to_thread(tracking.finish_run, uri, run_id, "KILLED")
        except tracking.TrackingError as err:
            log.warning("[%s/%s] could not close the MLflow run: %s", namespace, name, err)


async def _serve_metrics(port: int) -> Any:
    from aiohttp import web

    async def handle(_: web.Request) -> web.Response:
        return web.Response(text=metrics.render(), content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    log.info("metrics on :%d/metrics", port)
    return runner
