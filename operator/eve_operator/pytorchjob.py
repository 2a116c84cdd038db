"""JobSpec -> Kubeflow PyTorchJob (kubeflow.org/v1) manifest, as a plain dict.

The pod template comes from eve_operator.podtemplate (shared with the TrainJob builder).

Pure: no I/O, unit-tested as data and validated against the PyTorchJob CRD schema.
Every field that training-operator defaults surprisingly is set explicitly:
restartPolicy (the code default is OnFailure, not Never), cleanPodPolicy (default None
leaves workers holding GPUs after the Master exits), backoffLimit, nprocPerNode.
"""

from __future__ import annotations

from typing import Any

from eve_operator.crd import API_VERSION, KIND
from eve_operator.jobspec import JobSpec
from eve_operator.podtemplate import CONTAINER, SCHEDULER_NAMES, build_pod_template

GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


def build_pytorchjob(job: JobSpec, *, namespace: str, owner: dict[str, str] | None = None) -> dict[str, Any]:
    """The PyTorchJob of one stage attempt.

    owner: {"name", "uid"} of the EvePipeline; the job gets a controller ownerReference
    so deleting the pipeline garbage-collects it.
    """
    gang = job.scheduling.gang_scheduler
    labels = dict(job.labels)
    if gang == "kueue":
        labels[KUEUE_QUEUE_LABEL] = job.scheduling.queue or ""
    metadata: dict[str, Any] = {"name": job.name, "namespace": namespace, "labels": labels}
    if owner is not None:
        metadata["ownerReferences"] = [{
            "apiVersion": API_VERSION, "kind": KIND, "name": owner["name"], "uid": owner["uid"],
            "controller": True, "blockOwnerDeletion": True}]

    replicas = {"Master": _replica(job, 1)}
    if job.nodes > 1:
        replicas["Worker"] = _replica(job, job.nodes - 1)
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "PyTorchJob", "metadata": metadata,
        "spec": {
            "nprocPerNode": str(job.procs_per_node),
            "runPolicy": _run_policy(job),
            "pytorchReplicaSpecs": replicas,
        },
    }


def _run_policy(job: JobSpec) -> dict[str, Any]:
    gang = job.scheduling.gang_scheduler
    policy: dict[str, Any] = {
        "cleanPodPolicy": "Running",
        "backoffLimit": job.backoff_limit,
        # Kueue admits a job by un-suspending it: it must be created suspended.
        "suspend": job.suspend or gang == "kueue",
    }
    if job.active_deadline_s:
        policy["activeDeadlineSeconds"] = job.active_deadline_s
    if gang in SCHEDULER_NAMES:
        scheduling: dict[str, Any] = {"minAvailable": job.nodes}  # all ranks or none: DDP needs every one
        if job.scheduling.queue and gang == "volcano":
            scheduling["queue"] = job.scheduling.queue
        if job.scheduling.priority_class:
            scheduling["priorityClass"] = job.scheduling.priority_class
        if job.scheduling.schedule_timeout_s:
            scheduling["scheduleTimeoutSeconds"] = job.scheduling.schedule_timeout_s
        policy["schedulingPolicy"] = scheduling
    return policy


def _replica(job: JobSpec, replicas: int) -> dict[str, Any]:
    # ExitCode: 1-127 fail the job at once (2 = config error), >=128 (143 = SIGTERM after a
    # checkpoint) restart the pod, counted against backoffLimit.
    return {"replicas": replicas, "restartPolicy": "ExitCode", "template": build_pod_template(job)}


def job_state(job: dict[str, Any] | None) -> tuple[str, str, str | None]:
    """(state, message, finished_at ISO) of a PyTorchJob as the pipeline core sees it.

    Terminal only on a condition with status "True" (Failed is sticky in training-operator).
    Suspended comes from the spec too: after a suspend patch the condition follows later.
    """
    if job is None:
        return "Absent", "", None
    status = job.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    for terminal in ("Failed", "Succeeded"):
        if (cond := conditions.get(terminal)) is not None:
            message = cond.get("message") or cond.get("reason") or ""
            finished = status.get("completionTime") or cond.get("lastTransitionTime")
            return terminal, message, finished
    if (job.get("spec") or {}).get("runPolicy", {}).get("suspend") or "Suspended" in conditions:
        return "Suspended", "", None
    if "Restarting" in conditions:
        cond = conditions["Restarting"]
        return "Running", f"restarting: {cond.get('message') or cond.get('reason') or 'a pod failed'}", None
    if "Running" in conditions:
        return "Running", "", None
    spec = job.get("spec") or {}
    replicas = sum(int(r.get("replicas", 1)) for r in (spec.get("pytorchReplicaSpecs") or {}).values())
    gang = ((spec.get("runPolicy") or {}).get("schedulingPolicy") or {}).get("minAvailable")
    if gang:
        return "Pending", f"waiting for all {gang} pods to be scheduled together (gang)", None
    return "Pending", f"waiting for {replicas or 'the'} pod(s) to start", None


__all__ = ["build_pytorchjob", "job_state", "GROUP", "VERSION", "PLURAL", "CONTAINER", "SCHEDULER_NAMES"]
