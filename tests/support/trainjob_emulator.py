"""What Kubeflow Trainer v2.3 (with JobSet) makes of a TrainJob: its node pods and its status.

The test stand-in for trainer-controller-manager + jobset-controller, built from their source
(kubeflow/trainer v2.3.0 pkg/runtime/core/trainingruntime.go, plugins/torch, plugins/jobset,
plugins/trainjobstatus) so the operator's TrainJobs are exercised against the same rules:
- the ClusterTrainingRuntime's `node` job template, with each runtimePatches entry merged in
  order as a strategic merge patch (lists keyed by name, volumeMounts by mountPath);
- the trainer's image, command, args, env and resourcesPerNode on container `node`;
- the torch plugin's PET_* env: PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK (the Job
  completion index), PET_MASTER_ADDR=<trainjob>-node-0-0.<trainjob>, PET_MASTER_PORT=29500;
- one pod per node, named `<trainjob>-node-0-<index>-<suffix>`, labelled as JobSet does;
- status: `Complete` / `Failed` conditions (reason and message from the JobSet's) and
  `jobsStatus` of the `node` job.
The rules are pure (`node_pods`, `reconcile`: dicts in, dicts out). `TrainerV2` applies them
against the emulated API server, and `TrainerCluster` is cluster_emulator.ClusterEmulator with
it beside the training-operator and a kubelet that also runs TrainJob pods (the completion-
index fieldRef, container `node`). Simplifications: pods are owned by the TrainJob directly
(really Pod -> Job -> JobSet -> TrainJob); no Kueue, PodGroups or activeDeadlineSeconds; the
runtime is given as a dict (the chart's, rendered by helm), not read from the API.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes

from support.cluster_emulator import (
    CONTAINER,
    ClusterEmulator,
    Kubelet,
    _ignore,
    _Loop,
    api_client,
    now_iso,
    reconcile_each_job,
)
from support.kube_emulator import Emulator, PodLog

JOBSET_NAME = "jobset.sigs.k8s.io/jobset-name"
REPLICATED_JOB_NAME = "jobset.sigs.k8s.io/replicatedjob-name"
JOB_INDEX = "jobset.sigs.k8s.io/job-index"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
COMPLETION_INDEX_FIELD = f"metadata.annotations['{COMPLETION_INDEX}']"  # Trainer's JobCompletionIndexFieldPath
RESTART_ATTEMPT = "jobset.sigs.k8s.io/restart-attempt"
ANCESTOR = "trainer.kubeflow.org/trainjob-ancestor-step"
MASTER_PORT = 29500
GROUP, VERSION, PLURAL, KIND = "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"
API_VERSION = f"{GROUP}/{VERSION}"
#: Strategic-merge keys of the lists a runtimePatch touches (k8s.io/api core/v1, JobSet v1alpha2).
MERGE_KEYS = {"replicatedJobs": "name", "containers": "name", "initContainers": "name", "volumes": "name",
              "env": "name", "imagePullSecrets": "name", "volumeMounts": "mountPath", "ports": "containerPort"}


class TrainJobError(ValueError):
    """What Trainer's webhook would reject (the message says which rule)."""


def strategic_merge(base: Any, patch: Any, key: str | None = None) -> Any:
    """A strategic merge patch as the API machinery applies it to these types."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = strategic_merge(out[k], v, k) if k in out else copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list) and key in MERGE_KEYS:
        merge_key = MERGE_KEYS[key]
        out = [copy.deepcopy(b) for b in base]
        for item in patch:
            at = next((i for i, b in enumerate(out) if b.get(merge_key) == item.get(merge_key)), None)
            if at is None:
                out.append(copy.deepcopy(item))
            else:
                out[at] = strategic_merge(out[at], item)
        return out
    return copy.deepcopy(patch)  # scalars and atomic lists (tolerations, args) are replaced


def check_webhook(trainjob: dict[str, Any], runtime: dict[str, Any]) -> None:
    """The v2.3 validating webhook rules a TrainJob of ours could break."""
    spec = trainjob["spec"]
    ref = spec["runtimeRef"]
    if ref.get("kind", "ClusterTrainingRuntime") != "ClusterTrainingRuntime" or ref["name"] != runtime["metadata"]["name"]:
        raise TrainJobError(f"spec.runtimeRef: ClusterTrainingRuntime {ref['name']!r} not found")
    reserved = {"PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT"}
    if used := sorted(reserved & {e["name"] for e in spec.get("trainer", {}).get("env", [])}):
        raise TrainJobError(f"spec.trainer.env: must not have reserved envs, invalid envs configured: {used}")
    jobs = {j["name"]: j for j in runtime["spec"]["template"]["spec"]["replicatedJobs"]}
    managers = [p["manager"] for p in spec.get("runtimePatches", [])]
    if len(managers) != len(set(managers)) or len(managers) > 16:
        raise TrainJobError("spec.runtimePatches: at most 16, one per manager")
    for patch in spec.get("runtimePatches", []):
        if "/" not in patch["manager"]:
            raise TrainJobError(f"spec.runtimePatches.manager: {patch['manager']!r} must be domain-prefixed")
        for rjob in ((patch.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec", {}).get(
                "replicatedJobs", []):
            if rjob["name"] not in jobs:
                raise TrainJobError("spec.runtimePatches: must not have replicated job that doesn't exist "
                                    "in the runtime job template")
            pod = rjob.get("template", {}).get("spec", {}).get("template", {}).get("spec", {})
            names = {c["name"] for c in jobs[rjob["name"]]["template"]["spec"]["template"]["spec"]["containers"]}
            for c in pod.get("containers", []):
                if c["name"] not in names:
                    raise TrainJobError(f"spec.runtimePatches: must not have container that doesn't exist "
                                        f"in the runtime job {rjob['name']}")
                if c.get("env") and c["name"] == "node":
                    raise TrainJobError("spec.runtimePatches: must not have envs for the dataset-initializer, "
                                        "model-initializer, node containers")


def node_pods(trainjob: dict[str, Any], runtime: dict[str, Any], attempt: int = 0) -> list[dict[str, Any]]:
    """The pods the JobSet of this TrainJob runs: one per node, index order (attempt: the JobSet
    restart they belong to)."""
    check_webhook(trainjob, runtime)
    name, namespace = trainjob["metadata"]["name"], trainjob["metadata"].get("namespace", "default")
    spec = trainjob["spec"]
    jobset_template = copy.deepcopy(runtime["spec"]["template"])
    annotations = dict((jobset_template.get("metadata") or {}).get("annotations") or {})
    for patch in spec.get("runtimePatches", []):
        template = (patch.get("trainingRuntimeSpec") or {}).get("template") or {}
        annotations.update((template.get("metadata") or {}).get("annotations") or {})
        if template.get("spec"):
            jobset_template["spec"] = strategic_merge(jobset_template["spec"], template["spec"])
    (node_job,) = [j for j in jobset_template["spec"]["replicatedJobs"]
                   if (j["template"].get("metadata") or {}).get("labels", {}).get(ANCESTOR) == "trainer"]
    trainer = spec.get("trainer") or {}
    nodes = int(trainer.get("numNodes") or runtime["spec"]["mlPolicy"].get("numNodes") or 1)
    pod_template = node_job["template"]["spec"]["template"]
    pod_spec = pod_template["spec"]
    (container,) = [c for c in pod_spec["containers"] if c["name"] == "node"]
    for key in ("image", "command", "args"):
        if trainer.get(key):
            container[key] = copy.deepcopy(trainer[key])
    if trainer.get("resourcesPerNode"):
        container["resources"] = strategic_merge(container.get("resources") or {}, trainer["resourcesPerNode"])
    gpus = int((container.get("resources") or {}).get("limits", {}).get("nvidia.com/gpu", 0))
    procs = trainer.get("numProcPerNode") or (gpus or max(1, int(float(
        (container.get("resources") or {}).get("requests", {}).get("cpu", 1)))))
    env = strategic_merge(container.get("env") or [], trainer.get("env") or [], "env")
    container["ports"] = strategic_merge(container.get("ports") or [], [{"containerPort": MASTER_PORT}], "ports")
    if len(longest := f"{name}-node-0-{nodes - 1}-abcde") > 63:  # JobSet's webhook
        raise TrainJobError(f"pod name {longest!r} would be longer than 63 characters")
    pods = []
    for index in range(nodes):
        pet = [{"name": "PET_NNODES", "value": str(nodes)},
               {"name": "PET_NPROC_PER_NODE", "value": str(procs)},
               {"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX_FIELD}}},
               {"name": "PET_MASTER_ADDR", "value": f"{name}-node-0-0.{name}"},
               {"name": "PET_MASTER_PORT", "value": str(MASTER_PORT)}]
        pod = copy.deepcopy(pod_template)
        (c,) = [c for c in pod["spec"]["containers"] if c["name"] == "node"]
        c["env"] = strategic_merge(copy.deepcopy(env), pet, "env")
        hostname = f"{name}-node-0-{index}"
        suffix = hashlib.sha256(f"{namespace}/{hostname}/{attempt}".encode()).hexdigest()[:5]
        meta = pod.setdefault("metadata", {})
        meta["name"], meta["namespace"] = f"{hostname}-{suffix}", namespace
        meta["labels"] = {**(meta.get("labels") or {}), JOBSET_NAME: name, REPLICATED_JOB_NAME: node_job["name"],
                          JOB_INDEX: "0", COMPLETION_INDEX: str(index), RESTART_ATTEMPT: str(attempt)}
        if uid := trainjob["metadata"].get("uid"):  # really Pod -> Job -> JobSet -> TrainJob; one hop here
            meta["ownerReferences"] = [{"apiVersion": API_VERSION, "kind": KIND, "name": name, "uid": uid,
                                        "controller": True, "blockOwnerDeletion": True}]
        meta["annotations"] = {**(meta.get("annotations") or {}), COMPLETION_INDEX: str(index)}
        if "scheduling.volcano.sh/queue-name" in annotations:
            meta["annotations"]["scheduling.volcano.sh/queue-name"] = annotations["scheduling.volcano.sh/queue-name"]
        pod["spec"]["hostname"], pod["spec"]["subdomain"] = hostname, name
        pods.append(pod)
    return pods


def exit_code(pod: dict[str, Any]) -> int | None:
    """The `node` container's exit code; None while it has not ended."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if (terminated := (status.get("state") or {}).get("terminated")) is not None:
            return int(terminated["exitCode"])
    return None


def _set_condition(status: dict[str, Any], type_: str, value: str, reason: str, message: str, now: str) -> None:
    conditions = status.setdefault("conditions", [])
    old = next((c for c in conditions if c["type"] == type_), None)
    if old is not None and (old["status"], old["reason"], old["message"]) == (value, reason, message):
        return
    new = {"type": type_, "status": value, "reason": reason, "message": message,
           "lastTransitionTime": old["lastTransitionTime"] if old and old["status"] == value else now}
    status["conditions"] = [c for c in conditions if c["type"] != type_] + [new]


@dataclass
class Plan:
    create: list[dict[str, Any]] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    restarts: int = 0


def reconcile(job: dict[str, Any], pods: list[dict[str, Any]], runtime: dict[str, Any], restarts: int,
              now: str) -> Plan:
    """One pass of trainer-controller-manager + jobset-controller over a TrainJob and its pods.

    The chart runtime's failure rules (podFailurePolicy + JobSet failurePolicy): a `node` exit
    code 1-127 fails the JobSet at once (FailJobSetFailurePolicyAction); another failure
    recreates every node (a JobSet restart) until failurePolicy.maxRestarts, then
    ReachedMaxRestarts. Complete when every node succeeded. Suspend deletes the pods.
    """
    status = copy.deepcopy(job.get("status") or {})
    plan = Plan(status=status, restarts=restarts)
    done = {c["type"] for c in status.get("conditions") or [] if c["status"] == "True"} & {"Complete", "Failed"}
    active = [p for p in pods if exit_code(p) is None and not p["metadata"].get("deletionTimestamp")]
    nodes = int((job["spec"].get("trainer") or {}).get("numNodes") or 1)
    jobs_status = {"name": "node", "active": 0, "ready": 0, "failed": 0, "succeeded": 0, "suspended": 0}
    if done:
        plan.delete = [p["metadata"]["name"] for p in active]
        return plan
    if job["spec"].get("suspend"):
        plan.delete = [p["metadata"]["name"] for p in active]
        _set_condition(status, "Suspended", "True", "Suspended", "TrainJob is suspended", now)
        status["jobsStatus"] = [{**jobs_status, "suspended": 1}]
        return plan
    if any(c["type"] == "Suspended" and c["status"] == "True" for c in status.get("conditions") or []):
        _set_condition(status, "Suspended", "False", "Resumed", "TrainJob is resumed", now)
    attempt = [p for p in pods if (p["metadata"].get("labels") or {}).get(RESTART_ATTEMPT) == str(restarts)]
    if not attempt:
        plan.create = node_pods(job, runtime, restarts)
        status["jobsStatus"] = [jobs_status]
        return plan
    codes = [exit_code(p) for p in attempt]
    jobs_status.update(active=sum(c is None for c in codes), ready=sum(c is None for c in codes),
                       failed=sum(c not in (None, 0) for c in codes), succeeded=sum(c == 0 for c in codes))
    status["jobsStatus"] = [jobs_status]
    max_restarts = int((runtime["spec"]["template"]["spec"].get("failurePolicy") or {}).get("maxRestarts", 0))
    if any(c is not None and 1 <= c <= 127 for c in codes):
        plan.delete = [p["metadata"]["name"] for p in active]
        _set_condition(status, "Failed", "True", "FailJobSetFailurePolicyAction",
                       "jobset failed due to FailJobSet action of failure policy rule trainerExitCode", now)
    elif any(c not in (None, 0) for c in codes):
        plan.delete = [p["metadata"]["name"] for p in active]
        if restarts < max_restarts:
            plan.restarts = restarts + 1
            plan.delete = [p["metadata"]["name"] for p in attempt if not p["metadata"].get("deletionTimestamp")]
        else:
            _set_condition(status, "Failed", "True", "ReachedMaxRestarts",
                           "jobset failed due to reaching max number of restarts", now)
    elif len(codes) == nodes and all(c == 0 for c in codes):
        _set_condition(status, "Complete", "True", "AllJobsCompleted", "jobset completed successfully", now)
    return plan


# == the controller, a kubelet that knows TrainJob pods, the cluster ==========================


class TrainerV2:
    """trainer-controller-manager + jobset-controller: list TrainJobs and pods, `reconcile`, apply.

    runtimes: the ClusterTrainingRuntimes by name (rendered from the chart); the JobSet restart
    count of each TrainJob is kept here (JobSet keeps it in its status).
    """

    def __init__(self, api: Any, runtimes: dict[str, dict[str, Any]], interval_s: float = 0.1):
        self.custom = kubernetes.client.CustomObjectsApi(api)
        self.core = kubernetes.client.CoreV1Api(api)
        self.runtimes = runtimes
        self.restarts: dict[str, int] = {}
        self.loop = _Loop("trainer-v2", self.tick, interval_s)

    def tick(self) -> None:
        reconcile_each_job(self.custom, self.core, GROUP, VERSION, PLURAL, KIND, self.reconcile_job)

    def reconcile_job(self, job: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        meta = job["metadata"]
        runtime = self.runtimes[job["spec"]["runtimeRef"]["name"]]
        plan = reconcile(job, pods, runtime, self.restarts.get(meta["uid"], 0), now_iso(time.time()))
        self.restarts[meta["uid"]] = plan.restarts
        for pod in plan.create:
            _ignore(409, self.core.create_namespaced_pod, meta["namespace"], pod)
        for name in plan.delete:
            _ignore(404, self.core.delete_namespaced_pod, name, meta["namespace"])
        if plan.status != (job.get("status") or {}):
            _ignore(404, self.custom.patch_namespaced_custom_object_status, GROUP, VERSION, meta["namespace"],
                    PLURAL, meta["name"], {"status": plan.status})


_ANNOTATION_FIELD = re.compile(r"metadata\.annotations\['(.+)'\]")


class TrainerKubelet(Kubelet):
    """The emulated kubelet, taught what TrainJob pods need: the completion-index fieldRef
    (PET_NODE_RANK) and the logs of container `node`."""

    def _value(self, pod: dict[str, Any], var: dict[str, Any]) -> str:
        path = ((var.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath", "")
        if match := _ANNOTATION_FIELD.fullmatch(path):
            return str((pod["metadata"].get("annotations") or {}).get(match.group(1), ""))
        return super()._value(pod, var)

    def log_source(self, namespace: str, pod: str, container: str | None, previous: bool) -> PodLog | None:
        return super().log_source(namespace, pod, CONTAINER if container == "node" else container, previous)


class TrainerCluster(ClusterEmulator):
    """The emulated cluster with Trainer v2 beside the training-operator: both job APIs run."""

    def __init__(self, emulator: Emulator, kubeconfig: Path, root: Path, *, runtimes: dict[str, dict[str, Any]],
                 max_grace_s: float | None = None, extra_env: dict[str, str] | None = None,
                 interval_s: float = 0.1):
        super().__init__(emulator, kubeconfig, root, max_grace_s=max_grace_s, extra_env=extra_env,
                         interval_s=interval_s)
        self.kubelet = TrainerKubelet(api_client(kubeconfig), root, max_grace_s=max_grace_s, extra_env=extra_env,
                                      interval_s=interval_s)
        self.trainer = TrainerV2(api_client(kubeconfig), runtimes, interval_s)

    def start(self) -> TrainerCluster:
        super().start()
        self.trainer.loop.start()
        return self

    def stop(self) -> None:
        self.trainer.loop.stop()
        super().stop()

    @property
    def errors(self) -> list[str]:
        return super().errors + self.trainer.loop.errors

    def trainjob(self, name: str, namespace: str) -> dict[str, Any] | None:
        return _ignore(404, self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name)

    def trainjob_pods(self, namespace: str, job: str) -> dict[str, dict[str, Any]]:
        items = json.loads(self.core.list_namespaced_pod(namespace, _preload_content=False).data)["items"]
        return {p["metadata"]["name"]: p for p in items if (p["metadata"].get("labels") or {}).get(JOBSET_NAME) == job}


@contextmanager
def running_trainer_cluster(emulator: Emulator, kubeconfig: Path, root: Path, **options: Any
                            ) -> Iterator[TrainerCluster]:
    cluster = TrainerCluster(emulator, kubeconfig, root, **options).start()
    try:
        yield cluster
    finally:
        cluster.stop()


__all__ = ["node_pods", "reconcile", "exit_code", "strategic_merge", "check_webhook", "TrainJobError",
           "TrainerV2", "TrainerKubelet", "TrainerCluster", "running_trainer_cluster"]
