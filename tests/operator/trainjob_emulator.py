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
It is pure (dicts in, dicts out); the pod-executing emulator runs the pods it returns.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

JOBSET_NAME = "jobset.sigs.k8s.io/jobset-name"
REPLICATED_JOB_NAME = "jobset.sigs.k8s.io/replicatedjob-name"
JOB_INDEX = "jobset.sigs.k8s.io/job-index"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
ANCESTOR = "trainer.kubeflow.org/trainjob-ancestor-step"
MASTER_PORT = 29500
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


def node_pods(trainjob: dict[str, Any], runtime: dict[str, Any]) -> list[dict[str, Any]]:
    """The pods the JobSet of this TrainJob runs: one per node, index order."""
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
               {"name": "PET_NODE_RANK", "value": str(index)},  # a fieldRef to the completion index
               {"name": "PET_MASTER_ADDR", "value": f"{name}-node-0-0.{name}"},
               {"name": "PET_MASTER_PORT", "value": str(MASTER_PORT)}]
        pod = copy.deepcopy(pod_template)
        (c,) = [c for c in pod["spec"]["containers"] if c["name"] == "node"]
        c["env"] = strategic_merge(copy.deepcopy(env), pet, "env")
        hostname = f"{name}-node-0-{index}"
        suffix = hashlib.sha256(f"{namespace}/{hostname}".encode()).hexdigest()[:5]
        meta = pod.setdefault("metadata", {})
        meta["name"], meta["namespace"] = f"{hostname}-{suffix}", namespace
        meta["labels"] = {**(meta.get("labels") or {}), JOBSET_NAME: name, REPLICATED_JOB_NAME: node_job["name"],
                          JOB_INDEX: "0", COMPLETION_INDEX: str(index)}
        meta["annotations"] = {**(meta.get("annotations") or {}), COMPLETION_INDEX: str(index)}
        if "scheduling.volcano.sh/queue-name" in annotations:
            meta["annotations"]["scheduling.volcano.sh/queue-name"] = annotations["scheduling.volcano.sh/queue-name"]
        pod["spec"]["hostname"], pod["spec"]["subdomain"] = hostname, name
        pods.append(pod)
    return pods


def trainjob_status(nodes: int, exit_codes: list[int | None], *, restarts: int = 0, max_restarts: int = 0,
                    now: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    """The TrainJob status for node pods with these exit codes (None: still running).

    The chart runtime's rules: an exit code 1-127 fails the JobSet at once (FailJobSet on
    PodFailurePolicy); another failure restarts it until max_restarts (then ReachedMaxRestarts).
    """
    running = sum(1 for c in exit_codes if c is None)
    failed = [c for c in exit_codes if c not in (None, 0)]
    succeeded = sum(1 for c in exit_codes if c == 0)
    jobs = [{"name": "node", "active": running, "ready": running, "failed": len(failed),
             "succeeded": succeeded, "suspended": 0}]
    conditions = []
    if any(1 <= c <= 127 for c in failed):
        conditions.append({"type": "Failed", "status": "True", "reason": "FailJobSetFailurePolicyAction",
                           "lastTransitionTime": now, "message": "jobset failed due to FailJobSet action of "
                                                                   "failure policy rule trainerExitCode"})
    elif failed and restarts >= max_restarts:
        conditions.append({"type": "Failed", "status": "True", "reason": "ReachedMaxRestarts",
                           "lastTransitionTime": now, "message": "jobset failed due to reaching max number of restarts"})
    elif succeeded == nodes:
        conditions.append({"type": "Complete", "status": "True", "reason": "AllJobsCompleted",
                           "lastTransitionTime": now, "message": "jobset completed successfully"})
    return {"conditions": conditions, "jobsStatus": jobs}


__all__ = ["node_pods", "trainjob_status", "strategic_merge", "check_webhook", "TrainJobError"]
