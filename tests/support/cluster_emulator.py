"""The rest of a cluster beside kmock: the training-operator's PyTorchJob controller and a kubelet.

kube_emulator.py is an API server that stores objects. This module adds the two actors that
make PyTorchJobs run, each talking to that API server over HTTP through the official
`kubernetes` client, as the real ones do:

- `TrainingOperator`: the Kubeflow training-operator v1.9 PyTorchJob controller. For each job it
  creates the Master and Worker pods (names, labels, ownerReferences and injected env as v1.9
  makes them), and keeps `status.conditions`, `replicaStatuses`, `startTime` and
  `completionTime` by the v1.9 rules: restartPolicy, backoffLimit, cleanPodPolicy,
  runPolicy.suspend, activeDeadlineSeconds, ttlSecondsAfterFinished, and Succeeded when the
  Master succeeds. The rules are a pure function, `reconcile(job, pods, now) -> Plan`, ported
  from kubeflow/training-operator@v1.9.0; each function names the Go source it follows.
- `Kubelet`: one node that runs every pod. A pod's container command runs as a local process
  group (the image is ignored: commands resolve on the PATH of this test's virtualenv), with the
  pod's env (secretKeyRef resolved from Secrets, fieldRef for the pod's name, namespace, uid, IP
  and node) on top of a fixed "image" env. It records exit codes, restart counts and the pod
  phase in the pod status, keeps each container's log in a file that the API server serves as
  pods/<name>/log, and stops a deleted pod the way a kubelet does: SIGTERM to the container's
  main process, SIGKILL to the whole group after the grace period.

Where it differs from a real cluster (docs/operator.md, "The emulated cluster"):
- no containers: processes share this machine's filesystem, network and Python environment;
- no cluster DNS and no Services: MASTER_ADDR / PET_MASTER_ADDR (`<job>-master-0`) become
  127.0.0.1, and MASTER_PORT / PET_MASTER_PORT (23456 for every job) become a free port per job,
  so concurrent jobs and test sessions never collide;
- no GPUs (CUDA_VISIBLE_DEVICES is empty) and no scheduler: every pod is bound at once to one
  node; schedulerName, PodGroups, resources and node selectors are ignored (the controller runs
  as with `--gang-scheduler-name` unset), and there is no Worker init container (it only waits
  for the Master's DNS name);
- graceful deletion is held by a kubelet finalizer (`FINALIZER`), which the kubelet removes once
  the process is gone; in-place restarts (pod restartPolicy OnFailure/Always) have no back-off.
"""

from __future__ import annotations

import base64
import copy
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes

from eve_contract.topology import free_port
from support.kube_emulator import Emulator, PodLog
from support.pod_security import restricted_violations

GROUP, VERSION, PLURAL, KIND = "kubeflow.org", "v1", "pytorchjobs", "PyTorchJob"
# pkg/apis/kubeflow.org/v1/common_types.go and pytorch_types.go
JOB_NAME_LABEL = "training.kubeflow.org/job-name"
OPERATOR_NAME_LABEL = "training.kubeflow.org/operator-name"
REPLICA_TYPE_LABEL = "training.kubeflow.org/replica-type"
REPLICA_INDEX_LABEL = "training.kubeflow.org/replica-index"
JOB_ROLE_LABEL = "training.kubeflow.org/job-role"
CONTROLLER_NAME = "pytorchjob-controller"  # pkg/controller.v1/pytorch/pytorchjob_controller.go
CONTAINER = "pytorch"
PORT_NAME, DEFAULT_PORT = "pytorchjob-port", 23456
DEFAULT_RESTART_POLICY = "OnFailure"
RETRYABLE_EXIT_CODE = 128  # pkg/util/train/train_util.go: IsRetryableExitCode = exitCode >= 128
NO_EXIT_CODE = 0xBEEF  # pkg/controller.v1/common/pod.go: the magic "no terminated state" code
NODE = "emulated-node"
FINALIZER = "emulator.eve-platform.io/kubelet"
LOOPBACK = "127.0.0.1"


def now_iso(now: float) -> str:
    return datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(value: str) -> float:
    return datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC).timestamp()


# == the training-operator: pure rules ====================================================


def defaulted(job: dict[str, Any]) -> dict[str, Any]:
    """The job as the controller sees it after `r.Scheme.Default(job)`: defaults in memory only.

    pkg/apis/kubeflow.org/v1/pytorch_defaults.go (SetDefaults_PyTorchJob): cleanPodPolicy None,
    replicas 1, restartPolicy OnFailure, the `pytorchjob-port` 23456 on the `pytorch` container,
    nprocPerNode "auto" (non-elastic jobs).
    """
    job = copy.deepcopy(job)
    spec = job.setdefault("spec", {})
    run = spec.setdefault("runPolicy", {}) or {}
    spec["runPolicy"] = run
    run.setdefault("cleanPodPolicy", "None")
    for rspec in (spec.get("pytorchReplicaSpecs") or {}).values():
        rspec.setdefault("replicas", 1)
        rspec.setdefault("restartPolicy", DEFAULT_RESTART_POLICY)
        for container in rspec.setdefault("template", {}).setdefault("spec", {}).setdefault("containers", []):
            if container.get("name") == CONTAINER:
                ports = container.setdefault("ports", [])
                if not any(p.get("name") == PORT_NAME for p in ports):
                    ports.append({"name": PORT_NAME, "containerPort": DEFAULT_PORT})
    if "elasticPolicy" not in spec or not (spec["elasticPolicy"] or {}).get("nProcPerNode"):
        spec.setdefault("nprocPerNode", "auto")
    return job


def _replicas(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Replica specs, Master first: the Go code ranges over a map, this emulator in a fixed order."""
    specs = job["spec"].get("pytorchReplicaSpecs") or {}
    return {rtype: specs[rtype] for rtype in sorted(specs, key=lambda r: (r != "Master", r))}


def total_replicas(job: dict[str, Any]) -> int:
    return sum(int(r.get("replicas", 1)) for r in _replicas(job).values())


def nproc_per_node_int(job: dict[str, Any]) -> int:
    """pkg/controller.v1/pytorch/envvar.go getNprocPerNodeInt: the int value, else 1 (auto, gpu, cpu)."""
    try:
        return int(job["spec"].get("nprocPerNode"))
    except (TypeError, ValueError):
        return 1


def master_port(job: dict[str, Any]) -> int:
    """envvar.go getPortFromPyTorchJob: the Master's `pytorch` container port `pytorchjob-port`."""
    for container in job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]:
        if container.get("name") == CONTAINER:
            for port in container.get("ports") or []:
                if port.get("name") == PORT_NAME:
                    return int(port["containerPort"])
    raise ValueError("port not found")


def pod_name(job: str, rtype: str, index: int) -> str:
    """envvar.go replicaName / common GenGeneralName: `<job>-<rtype lowercase>-<index>`."""
    return f"{job}-{rtype.lower()}-{index}".replace("/", "-")


def injected_env(job: dict[str, Any], rtype: str, index: int) -> list[dict[str, str]]:
    """What the controller appends to every container's env (job already defaulted).

    pkg/controller.v1/pytorch/envvar.go setPodEnv and master.go MasterEnvVarGenerator:
    PYTHONUNBUFFERED=1 always; with a Master spec MASTER_PORT, PET_MASTER_PORT, MASTER_ADDR and
    PET_MASTER_ADDR (= `<job>-master-0`), WORLD_SIZE = total replicas x nprocPerNode when that is
    an integer, else total replicas, RANK = PET_NODE_RANK = the node rank (Master 0, Worker i ->
    i+1); PET_NPROC_PER_NODE verbatim; PET_NNODES = total replicas (non-elastic jobs; elastic
    ones are not emulated).
    """
    if job["spec"].get("elasticPolicy"):
        raise NotImplementedError("elasticPolicy is not emulated")
    total = total_replicas(job)
    env = [{"name": "PYTHONUNBUFFERED", "value": "1"}]
    if "Master" in job["spec"]["pytorchReplicaSpecs"]:
        port, addr = str(master_port(job)), pod_name(job["metadata"]["name"], "Master", 0)
        env += [{"name": "MASTER_PORT", "value": port}, {"name": "PET_MASTER_PORT", "value": port},
                {"name": "MASTER_ADDR", "value": addr}, {"name": "PET_MASTER_ADDR", "value": addr}]
        rank = index + 1 if rtype == "Worker" else index
        env += [{"name": "WORLD_SIZE", "value": str(total * nproc_per_node_int(job))},
                {"name": "RANK", "value": str(rank)}, {"name": "PET_NODE_RANK", "value": str(rank)}]
    if job["spec"].get("nprocPerNode") is not None:
        env.append({"name": "PET_NPROC_PER_NODE", "value": str(job["spec"]["nprocPerNode"])})
    env.append({"name": "PET_NNODES", "value": str(total)})
    return env


def new_pod(job: dict[str, Any], rtype: str, index: int) -> dict[str, Any]:
    """The Pod the controller creates for one replica (job already defaulted).

    pkg/controller.v1/common/pod.go createNewPod: the template, named `<job>-<rt>-<i>`, labelled
    job-name, operator-name, replica-type (lower case), replica-index and job-role=master on the
    Master (IsMasterRole), with a controller ownerReference (job_controller.go GenOwnerReference);
    pkg/core/pod.go SetRestartPolicy: the replica's policy, ExitCode becoming pod `Never`.
    """
    meta, rspec = job["metadata"], job["spec"]["pytorchReplicaSpecs"][rtype]
    template = copy.deepcopy(rspec.get("template") or {})
    pod_meta = template.get("metadata") or {}
    labels = dict(pod_meta.get("labels") or {})
    labels.update({OPERATOR_NAME_LABEL: CONTROLLER_NAME, JOB_NAME_LABEL: meta["name"].replace("/", "-"),
                   REPLICA_TYPE_LABEL: rtype.lower(), REPLICA_INDEX_LABEL: str(index)})
    if rtype == "Master":
        labels[JOB_ROLE_LABEL] = "master"
    spec = template.get("spec") or {}
    for container in spec.get("containers") or []:
        container["env"] = list(container.get("env") or []) + injected_env(job, rtype, index)
    policy = rspec.get("restartPolicy", DEFAULT_RESTART_POLICY)
    spec["restartPolicy"] = "Never" if policy == "ExitCode" else policy
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {**{k: v for k, v in pod_meta.items() if k not in ("name", "labels")},
                     "name": pod_name(meta["name"], rtype, index), "namespace": meta.get("namespace"),
                     "labels": labels,
                     "ownerReferences": [{"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": meta["name"],
                                          "uid": meta.get("uid"), "controller": True,
                                          "blockOwnerDeletion": True}]},
        "spec": spec,
    }


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), None)


def has_condition(status: dict[str, Any], type_: str) -> bool:
    """pkg/util/status.go isStatusConditionTrue."""
    cond = _condition(status, type_)
    return cond is not None and cond.get("status") == "True"


def set_condition(status: dict[str, Any], type_: str, value: str, reason: str, message: str, now: str) -> None:
    """pkg/util/status.go UpdateJobConditions / setCondition / filterOutCondition.

    Failed is sticky (nothing changes once Failed=True); an unchanged condition (same status and
    reason) is not re-appended; Running and Restarting exclude each other; Succeeded or Failed
    turn Running to status False; the newest condition is the last element.
    """
    if has_condition(status, "Failed"):
        return
    current = _condition(status, type_)
    if current is not None and current.get("status") == value and current.get("reason") == reason:
        return
    transition = current["lastTransitionTime"] if current is not None and current.get("status") == value else now
    kept = []
    for cond in status.get("conditions") or []:
        if cond.get("type") == type_ or {cond.get("type"), type_} == {"Running", "Restarting"}:
            continue
        if type_ in ("Failed", "Succeeded") and cond.get("type") == "Running":
            cond = {**cond, "status": "False"}
        kept.append(cond)
    kept.append({"type": type_, "status": value, "reason": reason, "message": message,
                 "lastUpdateTime": now, "lastTransitionTime": transition})
    status["conditions"] = kept


def is_active(pod: dict[str, Any]) -> bool:
    """pkg/util/k8sutil/k8sutil.go IsPodActive: not Succeeded, not Failed, not being deleted."""
    phase = (pod.get("status") or {}).get("phase")
    return phase not in ("Succeeded", "Failed") and not pod["metadata"].get("deletionTimestamp")


def _phase(pod: dict[str, Any]) -> str:
    return (pod.get("status") or {}).get("phase") or "Pending"


def exit_code(pod: dict[str, Any]) -> int:
    """common/pod.go ReconcilePods: the terminated exit code of the `pytorch` container, else 0xbeef."""
    code = NO_EXIT_CODE
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (cs.get("state") or {}).get("terminated")
        if cs.get("name") == CONTAINER and terminated is not None:
            code = int(terminated.get("exitCode", 0))
    return code


@dataclass
class Plan:
    """What one reconcile decides: the new status and the API calls that carry it out."""

    status: dict[str, Any]
    create: list[dict[str, Any]] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    """(type, reason, message) Events on the job."""
    delete_job: bool = False


def _delete_pods(plan: Plan, run: dict[str, Any], pods: list[dict[str, Any]], finished: bool) -> None:
    """common/job.go DeletePodsAndServices: cleanPodPolicy applies only to a finished job
    (None keeps every pod, Running deletes Running and Pending ones, All deletes all); an
    unfinished job (suspend, backoff limit, deadline) loses all its pods."""
    policy = run.get("cleanPodPolicy", "None")
    if finished and policy == "None":
        return
    for pod in pods:
        if finished and policy == "Running" and _phase(pod) not in ("Running", "Pending"):
            continue
        if not pod["metadata"].get("deletionTimestamp"):
            plan.delete.append(pod["metadata"]["name"])


def _cleanup_job(plan: Plan, run: dict[str, Any], status: dict[str, Any], now: float) -> None:
    """common/job.go CleanupJob: after completionTime + ttlSecondsAfterFinished, delete the job."""
    ttl = run.get("ttlSecondsAfterFinished")
    if ttl is None or run.get("suspend") or not status.get("completionTime"):
        return
    if now >= parse_iso(status["completionTime"]) + int(ttl):
        plan.delete_job = True


def past_backoff_limit(run: dict[str, Any], job: dict[str, Any], pods: list[dict[str, Any]]) -> bool:
    """pkg/core/job.go PastBackoffLimit: the restartCounts of the containers of Running pods whose
    replica restarts (OnFailure, Always, ExitCode) reach backoffLimit (exceed 0 when it is 0).

    A pod that ExitCode deletes and re-creates starts again at restartCount 0, so these counts
    only grow for in-place restarts (pod restartPolicy OnFailure or Always)."""
    limit = run.get("backoffLimit")
    if limit is None:
        return False
    total = 0
    for rtype, rspec in _replicas(job).items():
        if rspec.get("restartPolicy") not in ("OnFailure", "Always", "ExitCode"):
            continue
        for pod in pods:
            if pod["metadata"].get("labels", {}).get(REPLICA_TYPE_LABEL) != rtype.lower() or _phase(pod) != "Running":
                continue
            status = pod.get("status") or {}
            for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
                total += int(cs.get("restartCount", 0))
    return total > 0 if int(limit) == 0 else total >= int(limit)


def past_active_deadline(run: dict[str, Any], status: dict[str, Any], now: float) -> bool:
    """pkg/core/job.go PastActiveDeadline: now - startTime >= activeDeadlineSeconds."""
    deadline, start = run.get("activeDeadlineSeconds"), status.get("startTime")
    return deadline is not None and start is not None and now - parse_iso(start) >= int(deadline)


def reconcile(job: dict[str, Any], pods: list[dict[str, Any]], now: float) -> Plan:
    """One reconcile of one PyTorchJob and the pods it owns (kubeflow/training-operator@v1.9.0).

    pytorchjob_controller.go Reconcile + onOwnerCreateFunc (Created), common/job.go ReconcileJobs
    (finished, suspended, resumed, backoff limit, active deadline), common/pod.go ReconcilePods
    (create missing pods, restart or fail on a failed pod), pytorchjob_controller.go
    UpdateJobStatus (startTime, Running, Succeeded, Restarting, Failed).

    Backoff: the controller's work queue is a FakeWorkQueue (pkg/common/util/fake_workqueue.go,
    NumRequeues is always 0), so its "new failures" rule fails a job at its first failed pod only
    when backoffLimit is 0; otherwise only the restartCounts of Running pods count
    (`past_backoff_limit`). ExitCode pods that exit >= 128 are deleted and re-created (restart
    count 0), so v1.9 restarts them without bound: the emulator keeps that behaviour.
    """
    job = defaulted(job)
    name, kind = job["metadata"]["name"], KIND
    run, replicas = job["spec"]["runPolicy"], _replicas(job)
    status = copy.deepcopy(job.get("status") or {})
    stamp = now_iso(now)
    plan = Plan(status)
    if run.get("managedBy") not in (None, "", "kubeflow.org/training-operator"):
        return plan  # Reconcile: "Skipping PyTorchJob managed by a custom controller" (MultiKueue)
    if not status.get("conditions"):  # onOwnerCreateFunc: the create event
        set_condition(status, "Created", "True", f"{kind}Created", f"{kind} {name} is created.", stamp)

    if has_condition(status, "Succeeded") or has_condition(status, "Failed"):
        _delete_pods(plan, run, pods, finished=True)
        _cleanup_job(plan, run, status, now)
        if has_condition(status, "Succeeded"):
            for rs in (status.get("replicaStatuses") or {}).values():
                rs["succeeded"] = rs.get("succeeded", 0) + rs.get("active", 0)
                rs["active"] = 0
        return plan

    if run.get("suspend"):
        _delete_pods(plan, run, pods, finished=False)
        for rs in (status.get("replicaStatuses") or {}).values():
            rs["active"] = 0
        msg = f"{kind} {name} is suspended."
        if has_condition(status, "Running"):
            set_condition(status, "Running", "False", f"{kind}Suspended", msg, stamp)
        if not has_condition(status, "Suspended"):
            set_condition(status, "Suspended", "True", f"{kind}Suspended", msg, stamp)
        plan.events.append(("Normal", f"{kind}Suspended", msg))
        return plan
    if has_condition(status, "Suspended"):
        msg = f"{kind} {name} is resumed."
        set_condition(status, "Suspended", "False", f"{kind}Resumed", msg, stamp)
        status["startTime"] = stamp
        plan.events.append(("Normal", f"{kind}Resumed", msg))

    active = sum(1 for p in pods if is_active(p))
    failed = sum(1 for p in pods if _phase(p) == "Failed")
    previous_failed = sum(rs.get("failed", 0) for rs in (status.get("replicaStatuses") or {}).values())
    exceeds = past = False
    if run.get("backoffLimit") is not None:
        new_failure = failed > previous_failed
        exceeds = new_failure and active != total_replicas(job) and 0 + 1 > int(run["backoffLimit"])
        past = past_backoff_limit(run, job, pods)
    failure = ""
    if exceeds or past:
        failure = f"Job {name} has failed because it has reached the specified backoff limit"
    elif past_active_deadline(run, status, now):
        failure = f"Job {name} has failed because it was active longer than specified deadline"
    if failure:
        status.setdefault("completionTime", stamp)
        _delete_pods(plan, run, pods, finished=False)
        _cleanup_job(plan, run, status, now)
        plan.events.append(("Normal", f"{kind}Failed", failure))
        set_condition(status, "Failed", "True", f"{kind}Failed", failure, stamp)
        return plan

    for rtype, rspec in replicas.items():
        _reconcile_pods(plan, job, rtype, rspec, pods, stamp)
    _update_job_status(plan, job, stamp)
    return plan


def _reconcile_pods(plan: Plan, job: dict[str, Any], rtype: str, rspec: dict[str, Any],
                    pods: list[dict[str, Any]], stamp: str) -> None:
    """common/pod.go ReconcilePods + pkg/core/status.go UpdateJobReplicaStatuses."""
    status, name, kind, rt = plan.status, job["metadata"]["name"], KIND, rtype.lower()
    mine = [p for p in pods if (p["metadata"].get("labels") or {}).get(REPLICA_TYPE_LABEL) == rt]
    rs = status.setdefault("replicaStatuses", {})[rtype] = {"active": 0, "succeeded": 0, "failed": 0}
    num = int(rspec.get("replicas", 1))
    slices: dict[int, list[dict[str, Any]]] = {}
    for pod in mine:
        try:
            slices.setdefault(int(pod["metadata"]["labels"][REPLICA_INDEX_LABEL]), []).append(pod)
        except (KeyError, ValueError):
            continue  # GetPodSlices: a pod without a valid index is skipped
    policy = rspec.get("restartPolicy", DEFAULT_RESTART_POLICY)
    for index in range(max([num, *(i + 1 for i in slices)])):
        found = slices.get(index, [])
        if len(found) > 1:
            continue  # "We have too many pods"
        if not found:
            if index < num:
                plan.create.append(new_pod(job, rtype, index))
            continue
        pod = found[0]
        being_deleted = bool(pod["metadata"].get("deletionTimestamp"))
        if index >= num and not being_deleted:
            plan.delete.append(pod["metadata"]["name"])
        code = exit_code(pod)
        if code != NO_EXIT_CODE:
            plan.events.append(("Normal", "ExitedWithCode",
                                f"Pod: {pod['metadata'].get('namespace')}.{pod['metadata']['name']} "
                                f"exited with code {code}"))
        if _phase(pod) == "Failed":
            if (policy == "ExitCode" and code >= RETRYABLE_EXIT_CODE) or policy in ("OnFailure", "Always"):
                if not being_deleted:
                    plan.delete.append(pod["metadata"]["name"])
                msg = f"job {name} is restarting because {rtype} replica(s) failed."
                plan.events.append(("Warning", f"{kind}Restarting", msg))
                set_condition(status, "Restarting", "True", f"{kind}Restarting", msg, stamp)
            elif policy == "ExitCode":
                msg = f'job "{name}" is failing because "{rtype}" replica(s) failed.'
                plan.events.append(("Warning", f"{kind}Failed", msg))
                set_condition(status, "Failed", "True", f"{kind}Failed", msg, stamp)
        phase = _phase(pod)
        if phase == "Running":
            rs["failed" if being_deleted else "active"] += 1
        elif phase == "Succeeded":
            rs["succeeded"] += 1
        elif phase == "Failed":
            rs["failed"] += 1


def _update_job_status(plan: Plan, job: dict[str, Any], stamp: str) -> None:
    """pytorchjob_controller.go UpdateJobStatus (the job has a Master in every eve-platform job;
    without one, Succeeded needs every Worker to succeed)."""
    status, name, kind = plan.status, job["metadata"]["name"], KIND
    status.setdefault("startTime", stamp)
    replicas = _replicas(job)
    has_master = "Master" in replicas
    for rtype, rspec in replicas.items():
        rs = status["replicaStatuses"][rtype]
        labels = {JOB_NAME_LABEL: name, OPERATOR_NAME_LABEL: CONTROLLER_NAME, REPLICA_TYPE_LABEL: rtype.lower()}
        rs["selector"] = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        num = int(rspec.get("replicas", 1))
        succeeded, running, failed = rs["succeeded"], rs["active"], rs["failed"]
        expected = num - succeeded
        if has_master and rtype == "Master" or not has_master and rtype == "Worker":
            if has_master and running > 0 or not has_master and expected != 0 and running > 0:
                set_condition(status, "Running", "True", f"{kind}Running", f"{kind} {name} is running.", stamp)
            if expected == 0:
                msg = f"{kind} {name} is successfully completed."
                plan.events.append(("Normal", f"{kind}Succeeded", msg))
                status.setdefault("completionTime", stamp)
                set_condition(status, "Succeeded", "True", f"{kind}Succeeded", msg, stamp)
                if has_master:
                    return
        if failed > 0 and num > succeeded + running:
            if rspec.get("restartPolicy") != "Never":
                msg = f"{kind} {name} is restarting because {failed} {rtype} replica(s) failed."
                plan.events.append(("Warning", f"{kind}Restarting", msg))
                set_condition(status, "Restarting", "True", f"{kind}Restarting", msg, stamp)
            else:
                msg = f"{kind} {name} is failed because {failed} {rtype} replica(s) failed."
                plan.events.append(("Normal", f"{kind}Failed", msg))
                status.setdefault("completionTime", stamp)
                set_condition(status, "Failed", "True", f"{kind}Failed", msg, stamp)


# == the thin shell: API calls ==============================================================


def api_client(kubeconfig: Path) -> kubernetes.client.ApiClient:
    cfg = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(str(kubeconfig), client_configuration=cfg)
    return kubernetes.client.ApiClient(cfg)


def _ignore(status: int, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return call(*args, **kwargs)
    except kubernetes.client.ApiException as err:
        if err.status != status:
            raise
        return None


def _list_pods(core: Any) -> list[dict[str, Any]]:
    raw = core.list_pod_for_all_namespaces(_preload_content=False)
    return json.loads(raw.data)["items"]


class _Loop:
    """A daemon thread calling `tick` every `interval_s` until stopped; errors are kept and printed."""

    def __init__(self, name: str, tick: Callable[[], None], interval_s: float):
        self.tick, self.interval_s = tick, interval_s
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - a controller requeues and goes on
                trace = traceback.format_exc()
                self.errors.append(trace)
                print(f"[{self._thread.name}] {trace}", file=sys.stderr)
            self._stop.wait(self.interval_s)


def owned_pods(core: Any, kind: str) -> dict[str, list[dict[str, Any]]]:
    """Every pod whose controller ownerReference is of `kind`, by the owner's uid."""
    owned: dict[str, list[dict[str, Any]]] = {}
    for pod in _list_pods(core):
        ref = next((r for r in pod["metadata"].get("ownerReferences") or [] if r.get("controller")), None)
        if ref is not None and ref.get("kind") == kind:
            owned.setdefault(ref.get("uid"), []).append(pod)
    return owned


def collect_orphans(core: Any, owned: dict[str, list[dict[str, Any]]], live_uids: set[str]) -> None:
    """The garbage collector's part: delete the pods whose owning job is gone."""
    for uid, orphans in owned.items():
        if uid not in live_uids:
            for pod in orphans:
                if not pod["metadata"].get("deletionTimestamp"):
                    _ignore(404, core.delete_namespaced_pod, pod["metadata"]["name"], pod["metadata"]["namespace"])



def reconcile_each_job(custom: Any, core: Any, group: str, version: str, plural: str, kind: str,
                       each: Callable[[dict[str, Any], list[dict[str, Any]]], None]) -> None:
    """One pass of a job controller: list the jobs of the kind and the pods they own, call `each(job,
    its pods)` for every job not being deleted, then collect the pods whose job is gone."""
    jobs = custom.list_cluster_custom_object(group, version, plural)["items"]
    owned = owned_pods(core, kind)
    for job in jobs:
        if not job["metadata"].get("deletionTimestamp"):
            each(job, owned.get(job["metadata"].get("uid"), []))
    collect_orphans(core, owned, {job["metadata"].get("uid") for job in jobs})

class TrainingOperator:
    """The PyTorchJob controller: list jobs and pods, `reconcile` each job, apply the plan.

    Pods are matched to jobs by their controller ownerReference (common/pod.go GetPodsForJob
    claims by controllerRef); pods whose owning job is gone are deleted, as the garbage collector
    does for dependents."""

    def __init__(self, api: kubernetes.client.ApiClient, interval_s: float = 0.1):
        self.custom = kubernetes.client.CustomObjectsApi(api)
        self.core = kubernetes.client.CoreV1Api(api)
        self.loop = _Loop("training-operator", self.tick, interval_s)
        self._events: set[tuple[str, str, str]] = set()

    def tick(self) -> None:
        reconcile_each_job(self.custom, self.core, GROUP, VERSION, PLURAL, KIND,
                           lambda job, pods: self.apply(job, reconcile(job, pods, time.time())))

    def apply(self, job: dict[str, Any], plan: Plan) -> None:
        meta = job["metadata"]
        ns, name = meta["namespace"], meta["name"]
        for pod in plan.create:
            _ignore(409, self.core.create_namespaced_pod, ns, pod)
        for pod in dict.fromkeys(plan.delete):
            _ignore(404, self.core.delete_namespaced_pod, pod, ns)
        for type_, reason, message in plan.events:
            self.event(job, type_, reason, message)
        if plan.delete_job:
            _ignore(404, self.custom.delete_namespaced_custom_object, GROUP, VERSION, ns, PLURAL, name)
        elif plan.status != (job.get("status") or {}):
            _ignore(404, self.custom.patch_namespaced_custom_object_status, GROUP, VERSION, ns, PLURAL, name,
                    {"status": plan.status})

    def event(self, job: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """An Event on the job, once per (job, reason, message) (the recorder's aggregation)."""
        meta = job["metadata"]
        key = (meta.get("uid", ""), reason, message)
        if key in self._events:
            return
        self._events.add(key)
        self.core.create_namespaced_event(meta["namespace"], {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta.get("uid")},
            "type": type_, "reason": reason, "message": message,
            "source": {"component": CONTROLLER_NAME}, "firstTimestamp": now_iso(time.time()),
            "lastTimestamp": now_iso(time.time()), "count": 1})


# == the kubelet ===========================================================================


ExtraEnv = dict[str, str] | Callable[[dict[str, Any]], dict[str, str]]


class WaitingError(Exception):
    """The container cannot start yet (state.waiting): (reason, message)."""


def image_env() -> dict[str, str]:
    """What the "image" brings: this test's virtualenv and code, nothing of its credentials."""
    env = {k: os.environ[k] for k in ("HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "OMP_NUM_THREADS",
                                      "VIRTUAL_ENV") if k in os.environ}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")])
    env.setdefault("OMP_NUM_THREADS", "1")
    env["CUDA_VISIBLE_DEVICES"] = ""  # no GPUs
    return env


#: pkg/kubelet/container/runtime.go: the log tail a failed container's FallbackToLogsOnError message keeps
MAX_MESSAGE_LINES, MAX_MESSAGE_BYTES = 80, 2048


def termination_message(log: Path) -> str:
    """pkg/kubelet/kuberuntime/kuberuntime_container.go: with terminationMessagePolicy
    FallbackToLogsOnError and no /dev/termination-log (there is none here), a failed container's
    message is the last 80 lines of its log, at most 2048 bytes (the newest ones)."""
    try:
        lines = log.read_bytes().splitlines(keepends=True)[-MAX_MESSAGE_LINES:]
    except FileNotFoundError:
        return ""
    return b"".join(lines)[-MAX_MESSAGE_BYTES:].decode(errors="replace")


@dataclass
class Container:
    """One pod's container on this node: its process, log files and what the kubelet recorded."""

    pod: str
    namespace: str
    uid: str
    directory: Path
    proc: subprocess.Popen | None = None
    restarts: int = 0
    started_at: str = ""
    last_state: dict[str, Any] = field(default_factory=dict)
    terminated: dict[str, Any] | None = None
    term_sent_at: float | None = None

    def log(self, restart: int | None = None) -> Path:
        return self.directory / f"{CONTAINER}-{self.restarts if restart is None else restart}.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


class Kubelet:
    """One node that runs every pod: bind, start, watch the process, report, stop on deletion.

    max_grace_s caps every pod's termination grace period (the PyTorchJobs ask for 300 s);
    extra_env (a dict, or pod -> dict) is added to containers: a test knob, e.g.
    EVE_DEBUG_STEP_DELAY_S. `exits` lists every container exit: (namespace, pod, exit code).
    """

    def __init__(self, api: kubernetes.client.ApiClient, root: Path, *, max_grace_s: float | None = None,
                 extra_env: ExtraEnv | None = None, interval_s: float = 0.1):
        self.core = kubernetes.client.CoreV1Api(api)
        self.root = root
        self.max_grace_s = max_grace_s
        self.extra_env: ExtraEnv = extra_env or {}
        self.exits: list[tuple[str, str, int]] = []
        #: pod uid -> its container; only the kubelet's thread changes it (readers take a copy: the
        #: API server's thread asks for logs while this thread waits on the API server)
        self.containers: dict[str, Container] = {}
        self.ports: dict[str, int] = {}
        self.loop = _Loop("kubelet", self.tick, interval_s)
        self.refused: set[str] = set()  # pods Pod Security admission turned away

    # -- the loop -------------------------------------------------------------------------

    def tick(self) -> None:
        pods = _list_pods(self.core)
        seen = set()
        for pod in pods:
            uid = pod["metadata"].get("uid", "")
            seen.add(uid)
            container = self.containers.get(uid)
            if pod["metadata"].get("deletionTimestamp"):
                self._stop(pod, container)
            elif container is None:
                if _phase(pod) not in ("Succeeded", "Failed") and not pod["spec"].get("nodeName"):
                    self._admit(pod)
                elif _phase(pod) == "Pending" and pod["spec"].get("nodeName") == NODE:
                    self._admit(pod)  # bound, waiting for a Secret
            else:
                self._observe(pod, container)
        for uid in [u for u in self.containers if u not in seen]:  # force-deleted: no grace
            self.containers.pop(uid).signal_group(signal.SIGKILL)

    def shutdown(self) -> None:
        """SIGKILL every container left (the node goes away with the test); after the loop stopped."""
        for container in list(self.containers.values()):
            container.signal_group(signal.SIGKILL)
            if container.proc is not None:
                container.proc.wait()

    # -- lifecycle ---------------------------------------------------------------------

    def _admit(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        # the pipelines' namespace enforces Pod Security `restricted` (docs/install.md): every pod of a
        # job the operator rendered (label eve-platform.io/pipeline) is checked, and one that breaks
        # it fails the test (the loop's errors); the emulator's own unit tests' pods are left alone
        pipeline_pod = "eve-platform.io/pipeline" in (meta.get("labels") or {})
        if pipeline_pod and meta["uid"] not in self.refused and (
                violations := restricted_violations(spec, meta.get("annotations"))):
            self.refused.add(meta["uid"])
            raise PermissionError(f"pod {meta['namespace']}/{meta['name']} violates PodSecurity restricted: "
                                  + "; ".join(violations))
        if meta["uid"] in self.refused:
            return
        containers = spec.get("containers") or []
        if len(containers) != 1:
            raise NotImplementedError(f"pod {meta['name']}: the emulated kubelet runs one container per pod")
        if not spec.get("nodeName"):
            bound = _ignore(404, self.core.patch_namespaced_pod, meta["name"], meta["namespace"], {
                "metadata": {"finalizers": [*(meta.get("finalizers") or []), FINALIZER]},
                "spec": {"nodeName": NODE}})
            if bound is None:
                return  # deleted before it was bound (e.g. its job finished meanwhile): nothing to run
        container = Container(meta["name"], meta["namespace"], meta["uid"],
                              self.root / meta["namespace"] / f"{meta['name']}-{meta['uid'][:8]}")
        try:
            env = self.container_env(pod, containers[0])
        except WaitingError as err:
            reason, message = err.args
            self._status(pod, "Pending", {"waiting": {"reason": reason, "message": message}}, container)
            return
        container.directory.mkdir(parents=True, exist_ok=True)
        self.containers[meta["uid"]] = container
        self._start(pod, container, env)

    def _start(self, pod: dict[str, Any], container: Container, env: dict[str, str]) -> None:
        spec = pod["spec"]["containers"][0]
        argv = [*(spec.get("command") or []), *(spec.get("args") or [])]
        found = shutil.which(argv[0], path=env.get("PATH")) if argv else None
        container.started_at = now_iso(time.time())
        if found is None:  # what containerd reports for a missing executable
            container.log().write_text(f'exec: "{argv[0] if argv else ""}": executable file not found in $PATH\n')
            self._terminated(pod, container, RETRYABLE_EXIT_CODE, "StartError",
                             f'exec: "{argv[0] if argv else ""}": executable file not found in $PATH')
            return
        with open(container.log(), "ab") as log:
            container.proc = subprocess.Popen([found, *argv[1:]], env=env, stdout=log, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, start_new_session=True,
                                              cwd=spec.get("workingDir") or container.directory)
        self._status(pod, "Running", {"running": {"startedAt": container.started_at}}, container)

    def _observe(self, pod: dict[str, Any], container: Container) -> None:
        if container.proc is None or container.terminated is not None:
            return
        code = container.proc.poll()
        if code is None:
            return
        code = code if code >= 0 else 128 - code  # killed by signal N: the runtime reports 128 + N
        container.signal_group(signal.SIGKILL)  # the container ends with its main process
        self.exits.append((container.namespace, container.pod, code))
        reason = "Completed" if code == 0 else "Error"
        policy = pod["spec"].get("restartPolicy", "Always")
        if policy == "Always" or policy == "OnFailure" and code != 0:
            container.last_state = {"terminated": {"exitCode": code, "reason": reason,
                                                   "startedAt": container.started_at,
                                                   "finishedAt": now_iso(time.time())}}
            container.restarts += 1
            try:
                env = self.container_env(pod, pod["spec"]["containers"][0])
            except WaitingError as err:
                self._status(pod, "Running", {"waiting": {"reason": err.args[0], "message": err.args[1]}}, container)
                return
            self._start(pod, container, env)
            return
        self._terminated(pod, container, code, reason)

    def _terminated(self, pod: dict[str, Any], container: Container, code: int, reason: str,
                    message: str | None = None) -> None:
        container.terminated = {"exitCode": code, "reason": reason, "startedAt": container.started_at,
                                "finishedAt": now_iso(time.time())}
        policy = pod["spec"]["containers"][0].get("terminationMessagePolicy", "File")
        if message is None and code != 0 and policy == "FallbackToLogsOnError":
            message = termination_message(container.log())
        if message:
            container.terminated["message"] = message
        self.containers.setdefault(container.uid, container)
        phase = "Succeeded" if code == 0 else "Failed"
        self._status(pod, phase, {"terminated": container.terminated}, container)

    def _stop(self, pod: dict[str, Any], container: Container | None) -> None:
        """A pod being deleted: SIGTERM to the main process (as the runtime signals PID 1), SIGKILL
        to the group after the grace period, then release the pod (the object goes)."""
        meta = pod["metadata"]
        if container is not None and container.running:
            grace = float(meta.get("deletionGracePeriodSeconds",
                                   pod["spec"].get("terminationGracePeriodSeconds", 30)))
            if self.max_grace_s is not None:
                grace = min(grace, self.max_grace_s)
            now = time.monotonic()
            if container.term_sent_at is None:
                container.term_sent_at = now
                if grace > 0:
                    container.proc.send_signal(signal.SIGTERM)
            if now - container.term_sent_at >= grace:
                container.signal_group(signal.SIGKILL)
            return
        if container is not None and container.proc is not None and container.terminated is None:
            container.signal_group(signal.SIGKILL)
            code = container.proc.returncode
            code = code if code >= 0 else 128 - code
            self.exits.append((container.namespace, container.pod, code))
            self._terminated(pod, container, code, "Completed" if code == 0 else "Error")
        if FINALIZER in (meta.get("finalizers") or []):
            _ignore(404, self.core.patch_namespaced_pod, meta["name"], meta["namespace"],
                    {"metadata": {"finalizers": [f for f in meta["finalizers"] if f != FINALIZER]}})
        self.containers.pop(meta.get("uid", ""), None)

    def _status(self, pod: dict[str, Any], phase: str, state: dict[str, Any], container: Container) -> None:
        spec = pod["spec"]["containers"][0]
        terminal = "terminated" in state
        status = {
            "phase": phase, "podIP": LOOPBACK, "hostIP": LOOPBACK,
            "startTime": (pod.get("status") or {}).get("startTime") or now_iso(time.time()),
            "containerStatuses": [{
                "name": spec.get("name", CONTAINER), "image": spec.get("image", ""), "imageID": "",
                "containerID": f"emulated://{container.proc.pid}" if container.proc else "",
                "ready": "running" in state, "started": not terminal and "running" in state,
                "restartCount": container.restarts, "state": state, "lastState": container.last_state}],
        }
        _ignore(404, self.core.patch_namespaced_pod_status, pod["metadata"]["name"], pod["metadata"]["namespace"],
                {"status": status})

    # -- the container's environment -------------------------------------------------------

    def container_env(self, pod: dict[str, Any], spec: dict[str, Any]) -> dict[str, str]:
        """image env < the pod's env (values, secretKeyRef, fieldRef) < the emulator's mappings."""
        meta = pod["metadata"]
        env = image_env()
        env["HOSTNAME"] = meta["name"]
        for var in spec.get("env") or []:
            env[var["name"]] = self._value(pod, var)
        env.update(self.extra_env(pod) if callable(self.extra_env) else self.extra_env)
        # no cluster DNS: the Master's name is this machine; its port is one free port per job
        for var in ("MASTER_ADDR", "PET_MASTER_ADDR"):
            if var in env:
                env[var] = LOOPBACK
        owner = next((r.get("uid") for r in meta.get("ownerReferences") or [] if r.get("controller")), meta["uid"])
        for var in ("MASTER_PORT", "PET_MASTER_PORT"):
            if var in env:
                if owner not in self.ports:
                    self.ports[owner] = free_port()
                env[var] = str(self.ports[owner])
        return env

    def _value(self, pod: dict[str, Any], var: dict[str, Any]) -> str:
        if "valueFrom" not in var:
            return str(var.get("value", ""))
        source = var["valueFrom"]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            try:
                raw = self.core.read_namespaced_secret(ref["name"], pod["metadata"]["namespace"],
                                                       _preload_content=False)
            except kubernetes.client.ApiException as err:
                if err.status == 404 and not ref.get("optional"):
                    raise WaitingError("CreateContainerConfigError", f'secret "{ref["name"]}" not found') from None
                raise
            data = json.loads(raw.data).get("data") or {}
            if ref["key"] not in data:
                raise WaitingError("CreateContainerConfigError",
                                   f"couldn't find key {ref['key']} in Secret {pod['metadata']['namespace']}/{ref['name']}")
            return base64.b64decode(data[ref["key"]]).decode()
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            fields = {"metadata.name": pod["metadata"]["name"], "metadata.namespace": pod["metadata"]["namespace"],
                      "metadata.uid": pod["metadata"]["uid"], "spec.nodeName": NODE, "status.podIP": LOOPBACK,
                      "status.hostIP": LOOPBACK,
                      "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default")}
            if path not in fields:
                raise WaitingError("CreateContainerConfigError", f"fieldRef {path} is not emulated")
            return fields[path]
        raise WaitingError("CreateContainerConfigError", f"env {var['name']}: {sorted(source)} is not emulated")

    # -- for the API server and the tests --------------------------------------------------

    def log_source(self, namespace: str, pod: str, container: str | None, previous: bool) -> PodLog | None:
        """pods/<name>/log: the current (or previous) log file of the pod's container."""
        if container not in (None, CONTAINER):
            return None
        found = self.container(pod, namespace)
        if found is None or found.proc is None and found.terminated is None:
            return None
        if previous:
            return PodLog(found.log(found.restarts - 1), lambda: False) if found.restarts else None
        return PodLog(found.log(), lambda: found.running)

    def container(self, pod: str, namespace: str) -> Container | None:
        return next((c for c in list(self.containers.values()) if c.pod == pod and c.namespace == namespace), None)

    def kill_pod(self, pod: str, namespace: str) -> int:
        """Node loss: SIGKILL the pod's whole process group now. Returns the main process's pid."""
        container = self.container(pod, namespace)
        if container is None or not container.running:
            raise LookupError(f"pod {namespace}/{pod} has no running container on this node")
        container.signal_group(signal.SIGKILL)
        assert container.proc is not None
        return container.proc.pid


# == the whole cluster ======================================================================


class ClusterEmulator:
    """kmock's API server + the training-operator + one kubelet; `kill_pod` fails a node."""

    def __init__(self, emulator: Emulator, kubeconfig: Path, root: Path, *, max_grace_s: float | None = None,
                 extra_env: ExtraEnv | None = None, interval_s: float = 0.1):
        self.emulator, self.kubeconfig = emulator, kubeconfig
        self.api = api_client(kubeconfig)
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.custom = kubernetes.client.CustomObjectsApi(self.api)
        self.operator = TrainingOperator(api_client(kubeconfig), interval_s)
        self.kubelet = Kubelet(api_client(kubeconfig), root, max_grace_s=max_grace_s, extra_env=extra_env,
                               interval_s=interval_s)

    def start(self) -> ClusterEmulator:
        self.emulator.set_log_source(self.kubelet.log_source)
        self.kubelet.loop.start()
        self.operator.loop.start()
        return self

    def stop(self) -> None:
        self.operator.loop.stop()
        self.kubelet.loop.stop()
        self.kubelet.shutdown()
        self.emulator.set_log_source(None)

    @property
    def errors(self) -> list[str]:
        return self.operator.loop.errors + self.kubelet.loop.errors

    def kill_pod(self, name: str, namespace: str) -> int:
        return self.kubelet.kill_pod(name, namespace)

    def pod(self, name: str, namespace: str) -> dict[str, Any] | None:
        try:
            raw = self.core.read_namespaced_pod(name, namespace, _preload_content=False)
        except kubernetes.client.ApiException as err:
            if err.status == 404:
                return None
            raise
        return json.loads(raw.data)

    def pods(self, namespace: str, job: str | None = None) -> dict[str, dict[str, Any]]:
        items = json.loads(self.core.list_namespaced_pod(namespace, _preload_content=False).data)["items"]
        return {p["metadata"]["name"]: p for p in items
                if job is None or (p["metadata"].get("labels") or {}).get(JOB_NAME_LABEL) == job}

    def job(self, name: str, namespace: str) -> dict[str, Any] | None:
        return _ignore(404, self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name)

    def log(self, pod: str, namespace: str) -> str:
        """The pod's log through the API (pods/<name>/log), as kubectl logs reads it."""
        return self.core.read_namespaced_pod_log(pod, namespace, container=CONTAINER)


@contextmanager
def running_cluster(emulator: Emulator, kubeconfig: Path, root: Path, **options: Any) -> Iterator[ClusterEmulator]:
    cluster = ClusterEmulator(emulator, kubeconfig, root, **options).start()
    try:
        yield cluster
    finally:
        cluster.stop()


def conditions(job: dict[str, Any] | None) -> dict[str, str]:
    """{type: status} of a job's conditions (for assertions)."""
    return {c["type"]: c["status"] for c in ((job or {}).get("status") or {}).get("conditions") or []}


def main(argv: list[str] | None = None) -> int:
    """`PYTHONPATH=tests python -m support.cluster_emulator`: an emulated cluster to try the CLI against by hand.

    Starts the API server, the training-operator, the kubelet and (unless --no-operator) the
    eve-platform operator, writes a kubeconfig, and runs until Ctrl-C."""
    import argparse
    import signal as signals

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--dir", type=Path, default=Path(".eve-cluster"), help="kubeconfig, pod logs (default .eve-cluster)")
    parser.add_argument("--namespace", default="default", help="the kubeconfig's namespace")
    parser.add_argument("--grace-s", type=float, default=60.0, help="cap on terminationGracePeriodSeconds")
    parser.add_argument("--no-operator", action="store_true", help="do not run the eve-platform operator here")
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    emulator = Emulator().start()
    kubeconfig = emulator.write_kubeconfig(args.dir.resolve() / "kubeconfig", args.namespace)
    os.environ["KUBECONFIG"] = str(kubeconfig)
    stop = threading.Event()
    signals.signal(signals.SIGINT, lambda *_: stop.set())
    signals.signal(signals.SIGTERM, lambda *_: stop.set())
    with running_cluster(emulator, kubeconfig, args.dir.resolve() / "node", max_grace_s=args.grace_s):
        operator = None
        if not args.no_operator:
            from support.operator_harness import Operator

            operator = Operator()
            operator.start()
        print(f"emulated cluster at {emulator.url}\n  export KUBECONFIG={kubeconfig}\n"
              f"  eve-platform submit stage=prealign ... gpus_per_node=0 gang_scheduler=none --backend kubernetes\n"
              f"pod logs under {args.dir.resolve() / 'node'}; Ctrl-C stops it (and every pod)",
              file=sys.__stdout__, flush=True)  # kopf's runner swaps sys.stdout
        stop.wait()
        if operator is not None:
            operator.stop()
    emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
