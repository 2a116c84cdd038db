"""JobSpec -> Kubeflow Trainer v2 TrainJob (trainer.kubeflow.org/v1alpha1), as a plain dict.

Pure: no I/O, unit-tested as data and validated against the v2.3.0 TrainJob CRD schema.
The second job API next to eve_operator.pytorchjob (docs/operator.md compares them).

How the stage pod reaches the cluster (Trainer v2.3 rules, read in kubeflow/trainer):
- `trainer.{image, command, env, numNodes, numProcPerNode, resourcesPerNode}` carry the
  trainer container: the launcher command, our env (credentials by secretKeyRef), the
  resources (quantities as strings; extended resources such as nvidia.com/gpu in limits).
- one `runtimePatches` entry (manager `eve-platform.io/operator`) carries the rest of the
  pod: labels, annotations, nodeSelector, tolerations, affinity, volumes, volumeMounts,
  securityContext, serviceAccountName, imagePullSecrets, terminationGracePeriodSeconds.
  The webhook rejects env on the `node` container in a patch, so env goes in trainer.env.
- what a patch cannot set (schedulerName, priorityClassName, the JobSet failure policy,
  pod restartPolicy) is the ClusterTrainingRuntime's: the chart ships it
  (charts/eve-platform/templates/clustertrainingruntime.yaml). A pod customisation a
  TrainJob cannot carry is a ConfigError naming the key, never dropped silently.
- the torch plugin injects PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR
  (`<trainjob>-node-0-0.<trainjob>`) and PET_MASTER_PORT (29500) into container `node`;
  the launcher (eve-launch) reads them and starts the node's ranks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from eve_operator.crd import API_VERSION, KIND
from eve_operator.jobspec import JobSpec
from eve_operator.podtemplate import build_pod_template
from eve_operator.spec import PipelineSpec
from eve_trainer.config import ConfigError

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
JOB_KIND = "TrainJob"
RUNTIME_KIND = "ClusterTrainingRuntime"
#: The runtime the chart installs (value trainJob.runtime.name; operator env EVE_TRAINJOB_RUNTIME).
DEFAULT_RUNTIME = "eve-torch"
#: Container and replicated job of the trainer in a torch runtime (Trainer's constants.Node).
CONTAINER = "node"
REPLICATED_JOB = "node"
#: Our runtimePatches entry; Kueue writes its own (kueue.x-k8s.io/manager) and we never touch it.
PATCH_MANAGER = "eve-platform.io/operator"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
VOLCANO_QUEUE_ANNOTATION = "scheduling.volcano.sh/queue-name"
#: Label JobSet puts on every pod of the TrainJob's JobSet (JobSet name = TrainJob name).
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
#: JobSet's webhook requires `<trainjob>-node-0-<last index>-abcde` (the pod name) to be a DNS
#: label (<= 63 characters): with up to 512 nodes (3-digit indexes) that leaves 46.
MAX_NAME = 46
#: The PET_* env the v2 torch plugin injects: reserved, the webhook rejects them in trainer.env.
PET_ENV = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")
MASTER_PORT = 29500

#: Pod spec fields a runtimePatch may set (TrainJob CRD v2.3.0, runtimePatches ... template.spec).
_PATCH_POD_FIELDS = ("affinity", "imagePullSecrets", "initContainers", "nodeSelector", "schedulingGates",
                     "securityContext", "serviceAccountName", "terminationGracePeriodSeconds", "tolerations",
                     "volumes")
#: Container fields a runtimePatch may set on container `node` (env is rejected by the webhook).
_PATCH_CONTAINER_FIELDS = ("securityContext", "volumeMounts")
#: Trainer container fields that go to spec.trainer, or that the runtime owns.
_TRAINER_CONTAINER_FIELDS = ("name", "image", "command", "args", "env", "resources", "imagePullPolicy", "ports")
#: Pod spec fields the runtime owns; where a pipeline asks for one, the key to change.
_RUNTIME_POD_FIELDS = {
    "schedulerName": None,  # set by the chart's runtime for its gang scheduler (Trainer v2 never sets it)
    "priorityClassName": "scheduling.priorityClass / podTemplate.priorityClassName",
}


JOB_APIS = ("PyTorchJob", "TrainJob")
#: Operator env (chart values trainJob.defaultJobApi and trainJob.runtime.name).
ENV_JOB_API, ENV_RUNTIME = "EVE_JOB_API", "EVE_TRAINJOB_RUNTIME"


def job_api_of(spec: PipelineSpec, env: Mapping[str, str]) -> str:
    """The pipeline's spec.jobApi, else the operator's default (EVE_JOB_API), else PyTorchJob."""
    if spec.job_api:
        return spec.job_api
    default = env.get(ENV_JOB_API) or "PyTorchJob"
    if default not in JOB_APIS:
        raise ValueError(f"{ENV_JOB_API}={default!r} is not one of {', '.join(JOB_APIS)} "
                         "(chart value trainJob.defaultJobApi)")
    return default


def enabled(env: Mapping[str, str]) -> bool:
    """Trainer v2 support is on: the chart sets EVE_TRAINJOB_RUNTIME with trainJob.enabled (and
    grants the trainjobs RBAC); the operator then watches TrainJobs too."""
    return bool(env.get(ENV_RUNTIME))


def runtime_of(env: Mapping[str, str]) -> str:
    """The ClusterTrainingRuntime stage TrainJobs run on (EVE_TRAINJOB_RUNTIME, else eve-torch)."""
    return env.get(ENV_RUNTIME) or DEFAULT_RUNTIME


def trainjob_name(job_name: str) -> str:
    """The TrainJob of a stage attempt: the job name, shortened deterministically past MAX_NAME."""
    if len(job_name) <= MAX_NAME:
        return job_name
    digest = hashlib.sha256(job_name.encode()).hexdigest()[:6]
    return f"{job_name[: MAX_NAME - 7].rstrip('-')}-{digest}"


def pod_selector(job_name: str) -> str:
    """Label selector of a stage attempt's pods (one per node)."""
    return f"{JOBSET_NAME_LABEL}={trainjob_name(job_name)}"


def build_trainjob(job: JobSpec, *, namespace: str, owner: dict[str, str] | None = None,
                   runtime: str = DEFAULT_RUNTIME) -> dict[str, Any]:
    """The TrainJob of one stage attempt.

    owner: {"name", "uid"} of the EvePipeline (a controller ownerReference, as for PyTorchJob).
    runtime: the ClusterTrainingRuntime to run on (the chart's, DEFAULT_RUNTIME).
    Raises ConfigError when the pipeline asks for something a TrainJob cannot carry.
    """
    gang = job.scheduling.gang_scheduler
    name = trainjob_name(job.name)
    labels = dict(job.labels)
    if gang == "kueue":
        labels[KUEUE_QUEUE_LABEL] = job.scheduling.queue or ""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels}
    if owner is not None:
        metadata["ownerReferences"] = [{
            "apiVersion": API_VERSION, "kind": KIND, "name": owner["name"], "uid": owner["uid"],
            "controller": True, "blockOwnerDeletion": True}]

    template = build_pod_template(job, container_name=CONTAINER, ports=[])
    container, pod_patch = _split(template)
    trainer: dict[str, Any] = {
        "image": container["image"],
        "command": list(container["command"]),
        "numNodes": job.nodes,
        "numProcPerNode": job.procs_per_node,
        "resourcesPerNode": _resources(container["resources"]),
    }
    if container.get("args"):
        trainer["args"] = list(container["args"])
    if container.get("env"):
        trainer["env"] = [dict(e) for e in container["env"]]
    if clash := sorted({e["name"] for e in trainer.get("env", [])} & set(PET_ENV)):
        raise ConfigError(f"podTemplate.env: {', '.join(clash)} is injected by Trainer v2's torch plugin "
                          "and must not be set (allowed: any other name)")

    spec: dict[str, Any] = {
        "runtimeRef": {"apiGroup": GROUP, "kind": RUNTIME_KIND, "name": runtime},
        "trainer": trainer,
        # Kueue admits a job by un-suspending it: it must be created suspended.
        "suspend": job.suspend or gang == "kueue",
        "runtimePatches": [_runtime_patch(job, pod_patch)],
    }
    if job.active_deadline_s:
        spec["activeDeadlineSeconds"] = job.active_deadline_s
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": JOB_KIND, "metadata": metadata, "spec": spec}


def _split(template: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod template as (trainer container, the pod patch); refuses what neither can carry."""
    pod = dict(template["spec"])
    containers = pod.pop("containers")
    container = dict(containers[0])
    container.pop("terminationMessagePolicy", None)  # the runtime's node container sets it (the chart)
    if len(containers) > 1:
        raise ConfigError("podTemplate: extra containers cannot be added to a TrainJob's pods "
                          "(a runtimePatch may only change the runtime's own containers)")
    for key, where in _RUNTIME_POD_FIELDS.items():
        value = pod.pop(key, None)
        if value is not None and where is not None:
            raise ConfigError(
                f"{where}={value!r}: a TrainJob cannot set priorityClassName (Trainer v2.3 runtimePatches "
                "cannot carry it); set it on the ClusterTrainingRuntime (chart value "
                "trainJob.runtime.priorityClassName) and leave it empty here, or use jobApi=PyTorchJob")
    if unknown := sorted(set(pod) - set(_PATCH_POD_FIELDS)):
        raise ConfigError(f"pod field(s) {', '.join(unknown)} cannot be carried by a TrainJob runtimePatch "
                          f"(allowed: {', '.join(_PATCH_POD_FIELDS)})")
    if container.get("envFrom"):
        raise ConfigError("podTemplate.envFrom cannot be used with jobApi=TrainJob (Trainer v2.3 takes env only "
                          "as trainer.env): list the variables in podTemplate.env with valueFrom instead")
    allowed = set(_PATCH_CONTAINER_FIELDS) | set(_TRAINER_CONTAINER_FIELDS)
    if unknown := sorted(set(container) - allowed):
        raise ConfigError(f"container field(s) {', '.join(unknown)} cannot be carried by a TrainJob "
                          f"(allowed: {', '.join(sorted(allowed))})")
    patch_container = {"name": CONTAINER, **{k: container[k] for k in _PATCH_CONTAINER_FIELDS if container.get(k)}}
    pod_spec = {k: v for k, v in pod.items() if v not in (None, [], {})}
    if len(patch_container) > 1:
        pod_spec["containers"] = [patch_container]
    return container, {"metadata": template.get("metadata") or {}, "spec": pod_spec}


def _resources(resources: dict[str, Any]) -> dict[str, Any]:
    """resourcesPerNode: quantities as strings; extended resources (GPUs, RDMA) in limits."""
    requests = {k: str(v) for k, v in (resources.get("requests") or {}).items()}
    limits = {k: str(v) for k, v in (resources.get("limits") or {}).items()}
    for name in list(requests):
        if "/" in name:  # an extended resource (nvidia.com/gpu, rdma/hca): limits only (#2363)
            limits.setdefault(name, requests.pop(name))
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _runtime_patch(job: JobSpec, pod: dict[str, Any]) -> dict[str, Any]:
    """Our runtimePatches entry: the pod customisation, on the runtime's `node` job."""
    node_job = {"name": REPLICATED_JOB, "template": {"spec": {"template": {
        "metadata": {k: dict(v) for k, v in pod["metadata"].items() if v},
        "spec": pod["spec"]}}}}
    template: dict[str, Any] = {"spec": {"replicatedJobs": [node_job]}}
    if job.scheduling.gang_scheduler == "volcano" and job.scheduling.queue:
        # the Volcano plugin reads the queue from the JobSet template's annotations
        template["metadata"] = {"annotations": {VOLCANO_QUEUE_ANNOTATION: job.scheduling.queue}}
    return {"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": template}}


def job_state(job: dict[str, Any] | None) -> tuple[str, str, str | None]:
    """(state, message, finished_at ISO) of a TrainJob as the pipeline core sees it.

    Terminal on `Complete` / `Failed` conditions with status "True" (the failure reason comes
    from the condition: FailedJobs, ReachedMaxRestarts, DeadlineExceeded, ...). Trainer v2 has
    no Running condition: progress comes from `jobsStatus` of the `node` job. Suspended comes
    from the spec too (the condition follows later). Exit codes are not in TrainJob status:
    they are read from the pods (pod_selector, container `node`).
    """
    if job is None:
        return "Absent", "", None
    status = job.get("status") or {}
    spec = job.get("spec") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    if (cond := conditions.get("Failed")) is not None:
        reason, text = cond.get("reason") or "", cond.get("message") or ""
        message = f"{reason}: {text}" if reason and text else (text or reason)
        return "Failed", message, cond.get("lastTransitionTime")
    if (cond := conditions.get("Complete")) is not None:
        return "Succeeded", "", cond.get("lastTransitionTime")
    if spec.get("suspend") or "Suspended" in conditions:
        return "Suspended", "", None
    nodes = int((spec.get("trainer") or {}).get("numNodes") or 1)
    node = next((j for j in status.get("jobsStatus") or [] if j.get("name") == REPLICATED_JOB), {})
    ready, failed = int(node.get("ready") or 0), int(node.get("failed") or 0)
    if failed:
        return "Running", f"restarting: {failed} node pod(s) failed; the JobSet restarts every node", None
    if ready >= nodes or int(node.get("succeeded") or 0):
        return "Running", "", None
    if ready:
        return "Running", f"{ready}/{nodes} node pod(s) ready", None
    return "Pending", f"waiting for {nodes} node pod(s) to start", None


__all__ = ["build_trainjob", "job_state", "trainjob_name", "pod_selector", "job_api_of", "runtime_of", "enabled", "JOB_APIS", "GROUP", "VERSION", "PLURAL",
           "CONTAINER", "DEFAULT_RUNTIME", "PATCH_MANAGER", "JOBSET_NAME_LABEL", "PET_ENV", "MASTER_PORT"]
