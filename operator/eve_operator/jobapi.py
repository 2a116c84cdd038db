"""The seam between the pipeline and the training-job API it submits to.

Everything the operator knows about one job kind sits in a `JobApi`: where its objects
live (group/version/plural), how a stage `JobSpec` becomes one, how its status reads as a
`JobReport`, how it is suspended, and how its pods and trainer container are found (for
exit codes). The kopf loop and `Kube` use only this, so a second kind (Kubeflow Trainer's
TrainJob) plugs in as one more `JobApi` value.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from eve_operator import pytorchjob, trainjob
from eve_operator.jobspec import JobSpec
from eve_operator.observe import JobReport
from eve_operator.spec import PipelineSpec


@dataclass(frozen=True)
class JobApi:
    group: str
    version: str
    plural: str
    container: str
    """The trainer container: its exit codes count (2 = bad input, no retry)."""
    pod_label: str
    """The label that names a job on its pods."""
    build: Callable[..., dict[str, Any]]
    """build(job: JobSpec, *, namespace, owner) -> the object to create."""
    status: Callable[[dict[str, Any] | None], tuple[str, str, str | None]]
    """status(obj) -> (state, message, finished-at ISO), state as pipeline.JobState."""
    suspend_patch: Callable[[bool], dict[str, Any]]
    pod_order: Callable[[Mapping[str, str]], tuple[int, int]]
    """pod_order(pod labels) -> (role, index): the master (node 0) first, then by index."""
    object_name: Callable[[str], str] = lambda name: name
    """The object's name for a stage attempt's job name (TrainJob shortens long ones)."""

    def report(self, obj: dict[str, Any] | None) -> JobReport:
        state, message, finished = self.status(obj)
        return JobReport(state, message, _epoch(finished))  # type: ignore[arg-type]

    def body(self, job: JobSpec, namespace: str, owner: dict[str, str] | None) -> dict[str, Any]:
        return self.build(job, namespace=namespace, owner=owner)


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


#: A TrainJob's node index on its pods (the JobSet's indexed Job).
COMPLETION_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"


def _replica_order(labels: Mapping[str, str]) -> tuple[int, int]:
    role = 0 if labels.get(pytorchjob.REPLICA_TYPE_LABEL, "master") == "master" else 1
    return role, int(labels.get(pytorchjob.REPLICA_INDEX_LABEL) or 0)


PYTORCHJOB = JobApi(
    group=pytorchjob.GROUP, version=pytorchjob.VERSION, plural=pytorchjob.PLURAL,
    container=pytorchjob.CONTAINER, pod_label=pytorchjob.JOB_NAME_LABEL,
    build=pytorchjob.build_pytorchjob, status=pytorchjob.job_state,
    suspend_patch=lambda suspended: {"spec": {"runPolicy": {"suspend": suspended}}},
    pod_order=_replica_order)

TRAINJOB = JobApi(
    group=trainjob.GROUP, version=trainjob.VERSION, plural=trainjob.PLURAL,
    container=trainjob.CONTAINER, pod_label=trainjob.JOBSET_NAME_LABEL,
    build=lambda job, *, namespace, owner: trainjob.build_trainjob(
        job, namespace=namespace, owner=owner, runtime=trainjob.runtime_of(os.environ),
        runtime_gang=trainjob.runtime_gang_of(os.environ)),
    status=trainjob.job_state,
    suspend_patch=lambda suspended: {"spec": {"suspend": suspended}},
    pod_order=lambda labels: (0, int(labels.get(COMPLETION_INDEX_LABEL) or 0)),
    object_name=trainjob.trainjob_name)

JOB_APIS = {"PyTorchJob": PYTORCHJOB, "TrainJob": TRAINJOB}


def job_api_for(spec: PipelineSpec, *, require_enabled: bool = True) -> JobApi:
    """The pipeline's job API: spec.jobApi, else the operator's EVE_JOB_API, else PyTorchJob.

    Raises ValueError when it is TrainJob and this operator runs without Trainer v2 support
    (`require_enabled=False`: the CLI, which renders jobs without the operator's env).
    """
    name = trainjob.job_api_of(spec, os.environ)
    if require_enabled and name == "TrainJob" and not trainjob.enabled(os.environ):
        raise ValueError("jobApi=TrainJob, but this operator runs without Kubeflow Trainer v2 support: "
                         "install the chart with trainJob.enabled=true (docs/install.md), or use jobApi=PyTorchJob")
    return JOB_APIS[name]


__all__ = ["JobApi", "PYTORCHJOB", "TRAINJOB", "JOB_APIS", "job_api_for", "COMPLETION_INDEX_LABEL"]
