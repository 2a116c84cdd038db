"""JobSpec -> Kubeflow PyTorchJob (kubeflow.org/v1) manifest, as the API's JSON.

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
#: Labels training-operator puts on a job's pods (pkg/controller.v1/common/pod.go)
JOB_NAME_LABEL = "training.kubeflow.org/job-name"
REPLICA_TYPE_LABEL = "training.kubeflow.org/replica-type"
REPLICA_INDEX_LABEL = "training.kubeflow.org/replica-index"


def build_pytorchjob(job: JobSpec, *, namespace: str, owner: dict[str, str] | None = None) -> dict[str, Any]:
    """The PyTorchJob of one stage attempt, as the JSON the API server takes.

    Built from kubeflow-training's typed models (the SDK of training-operator v1.9), so a
    misnamed field is an AttributeError here, not a silently dropped key; serialised with the
    kubernetes client, as TrainingClient.create_job does. owner: {"name", "uid"} of the
    EvePipeline; the job gets a controller ownerReference so deleting the pipeline
    garbage-collects it.
    """
    from kubeflow.training.models import KubeflowOrgV1PyTorchJob, KubeflowOrgV1PyTorchJobSpec, KubeflowOrgV1ReplicaSpec
    from kubernetes.client import ApiClient, V1ObjectMeta, V1OwnerReference

    gang = job.scheduling.gang_scheduler
    labels = dict(job.labels)
    if gang == "kueue":
        labels[KUEUE_QUEUE_LABEL] = job.scheduling.queue or ""
    owners = None
    if owner is not None:
        owners = [V1OwnerReference(api_version=API_VERSION, kind=KIND, name=owner["name"], uid=owner["uid"],
                                   controller=True, block_owner_deletion=True)]
    # ExitCode: 1-127 fail the job at once (2 = config error), >=128 (143 = SIGTERM after a
    # checkpoint) restart the pod, counted against backoffLimit.
    template = build_pod_template(job)
    replicas = {"Master": KubeflowOrgV1ReplicaSpec(replicas=1, restart_policy="ExitCode", template=template)}
    if job.nodes > 1:
        replicas["Worker"] = KubeflowOrgV1ReplicaSpec(replicas=job.nodes - 1, restart_policy="ExitCode",
                                                      template=template)
    body = KubeflowOrgV1PyTorchJob(
        api_version=f"{GROUP}/{VERSION}", kind="PyTorchJob",
        metadata=V1ObjectMeta(name=job.name, namespace=namespace, labels=labels, owner_references=owners),
        spec=KubeflowOrgV1PyTorchJobSpec(nproc_per_node=str(job.procs_per_node), run_policy=_run_policy(job),
                                         pytorch_replica_specs=replicas))
    return ApiClient().sanitize_for_serialization(body)


def _run_policy(job: JobSpec) -> Any:
    from kubeflow.training.models import KubeflowOrgV1RunPolicy, KubeflowOrgV1SchedulingPolicy

    gang = job.scheduling.gang_scheduler
    scheduling = None
    if gang in SCHEDULER_NAMES:
        scheduling = KubeflowOrgV1SchedulingPolicy(
            min_available=job.nodes,  # all ranks or none: DDP needs every one
            queue=job.scheduling.queue if gang == "volcano" else None,
            priority_class=job.scheduling.priority_class or None,
            schedule_timeout_seconds=job.scheduling.schedule_timeout_s or None)
    return KubeflowOrgV1RunPolicy(
        clean_pod_policy="Running", backoff_limit=job.backoff_limit,
        # Kueue admits a job by un-suspending it: it must be created suspended.
        suspend=job.suspend or gang == "kueue",
        active_deadline_seconds=job.active_deadline_s or None, scheduling_policy=scheduling)


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


__all__ = ["build_pytorchjob", "job_state", "GROUP", "VERSION", "PLURAL", "CONTAINER", "SCHEDULER_NAMES",
           "JOB_NAME_LABEL", "REPLICA_TYPE_LABEL", "REPLICA_INDEX_LABEL"]
