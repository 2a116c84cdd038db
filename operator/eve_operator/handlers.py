"""kopf wiring: one reconcile loop per EvePipeline, fed by spec changes, child events and a timer.

This module is what `eve-operator` (and `kopf run -m eve_operator.handlers`) loads. Importing it
only declares the handlers: the settings and the optional TrainJob watch are set by `configure`,
which `eve-operator` calls before kopf runs (a bare `kopf run` gets them from the environment at
startup). The loop itself is eve_operator.loop (observe -> decide -> act), the API calls
eve_operator.kube.

Each pipeline gets a kopf daemon: the only writer of its status, so reconciles of one
pipeline never race. It runs a pass at start (create and operator restart alike), whenever
a child job changes or the spec is edited (both wake it at once), and every `resync_s` as
a safety net (a manifest or heartbeat appearing in S3 sends no event).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from eve_contract.naming import LABEL_PIPELINE
from eve_operator import metrics, tracking, trainjob
from eve_operator.crd import GROUP, PLURAL, VERSION
from eve_operator.defaults import operator_defaults
from eve_operator.jobapi import PYTORCHJOB, TRAINJOB
from eve_operator.kube import Kube
from eve_operator.loop import PipelineLoop
from eve_operator.metrics import serve as serve_metrics  # prometheus-client's HTTP server
from eve_operator.settings import Config
from eve_operator.spec import MlflowSpec

log = logging.getLogger("eve_operator")
JOB_API = PYTORCHJOB


#: The settings in force; `configure` sets them (until then, the defaults).
CONFIG = Config()
_configured = False


def configure(config: Config | None = None) -> Config:
    """Put `config` (default: from the environment) in force and register the watches it needs:
    stage TrainJobs too when this operator runs with Kubeflow Trainer v2 support. Called by the
    runner before kopf starts; a second call replaces the settings."""
    global CONFIG, _configured
    CONFIG, _configured = config or Config.from_env(), True
    if trainjob.enabled(os.environ):
        watch_trainjobs()
    return CONFIG


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    if not _configured:  # `kopf run -m eve_operator.handlers`: no runner configured it
        configure()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.persistence.finalizer = f"{GROUP}/cleanup"
    settings.posting.level = logging.ERROR  # Events are posted explicitly, one per transition
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(16, thread_name_prefix="eve-io"))
    memo.kube = Kube(JOB_API)
    log.info("operator defaults: %s", operator_defaults(reload=True))
    memo.wakers = {}
    memo.phases = {}
    memo.jobs = {}
    memo.metrics_runner = await serve_metrics(CONFIG.metrics_port) if CONFIG.metrics_port else None


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
    loop = PipelineLoop(name, namespace, body, memo.kube, memo.jobs, deep_verify=CONFIG.deep_verify)
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


@kopf.on.event(JOB_API.group, JOB_API.version, JOB_API.plural, labels={LABEL_PIPELINE: kopf.PRESENT})
def child_changed(type: str | None, name: str, namespace: str, labels: kopf.Labels, body: kopf.Body,
                  memo: kopf.Memo, **_: Any) -> None:
    """A stage job changed (running, succeeded, failed, deleted): reconcile its pipeline."""
    if type == "DELETED":
        memo.jobs.pop((namespace, name), None)
    else:
        memo.jobs[(namespace, name)] = dict(body)
    if type != "ADDED":  # our own create, or the initial listing: the daemon's own pass covers it
        _wake(memo, namespace, labels.get(LABEL_PIPELINE))


def watch_trainjobs() -> None:
    """Also watch stage TrainJobs (Kubeflow Trainer v2): on when the operator runs with Trainer v2
    support (EVE_TRAINJOB_RUNTIME, chart value trainJob.enabled, which also grants the RBAC)."""
    if not getattr(watch_trainjobs, "done", False):
        watch_trainjobs.done = True  # type: ignore[attr-defined]
        kopf.on.event(TRAINJOB.group, TRAINJOB.version, TRAINJOB.plural, id="trainjob_changed",
                      labels={LABEL_PIPELINE: kopf.PRESENT})(child_changed)


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def pipeline_deleted(name: str, namespace: str, status: kopf.Status, spec: kopf.Spec,
                           memo: kopf.Memo, **_: Any) -> None:
    """Delete the stage jobs explicitly: ownerReferences GC them on a cluster, but not everywhere."""
    deleted = await asyncio.to_thread(memo.kube.delete_children, namespace, name)
    if getattr(watch_trainjobs, "done", False):
        deleted += await asyncio.to_thread(memo.kube.using(TRAINJOB).delete_children, namespace, name)
    log.info("[%s/%s] deleted %d stage job(s): %s", namespace, name, len(deleted), ", ".join(deleted))
    run_id, mlflow = status.get("mlflowRunId"), operator_defaults().apply(spec).get("mlflow") or {}
    if run_id and mlflow.get("trackingUri") and status.get("phase") not in ("Succeeded", "Failed"):
        runs = tracking.RunRecords(mlflow["trackingUri"], MlflowSpec.model_validate(mlflow).experiment, name,
                                   warn=lambda msg: log.warning("[%s/%s] %s", namespace, name, msg))
        if stage := status.get("currentStage"):
            await asyncio.to_thread(runs.end_stage, run_id, stage, "KILLED", "the pipeline was deleted")
        await asyncio.to_thread(runs.finish, run_id, "KILLED")
