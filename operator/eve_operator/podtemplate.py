"""JobSpec -> the pod template of a stage's pods (one pod per node), as a plain dict.

Pure, shared by the PyTorchJob and TrainJob builders. The pod is:
- the trainer container (command, env, credentials by reference, resources, /dev/shm);
- restricted by default: it passes the Pod Security Standards `restricted` profile
  (runAsNonRoot, no privilege escalation, all capabilities dropped, RuntimeDefault seccomp);
- with the pipeline's `podTemplate` merged on top (eve_operator.spec.PodTemplateSpec):
  maps key by key, lists by name (volumeMounts by mountPath, tolerations appended). The
  operator's own env, command and resources are never overwritten (the spec rejects
  them), and a security field is relaxed only when the podTemplate names it.
"""

from __future__ import annotations

from typing import Any

from eve_contract.dicts import deep_merge
from eve_operator.jobspec import JobSpec
from eve_operator.spec import SHM_PATH, SHM_VOLUME, merge_lists

CONTAINER = "pytorch"  # training-operator reads exit codes from the container of this name
PORT = 23456
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
#: Pod schedulerName per gang scheduler; training-operator only sets it itself when it
#: runs with --gang-scheduler-name, and a secondary scheduler must be named explicitly.
SCHEDULER_NAMES = {"volcano": "volcano", "scheduler-plugins": "scheduler-plugins-scheduler"}
#: Seconds between SIGTERM and SIGKILL: the trainer writes a final checkpoint, then exits 143.
TERMINATION_GRACE_S = 300
#: The trainer image's user (trainer/Dockerfile: USER 65532:65532).
TRAINER_UID = 65532
#: Pod Security Standards `restricted`, pod level.
POD_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True, "runAsUser": TRAINER_UID, "runAsGroup": TRAINER_UID, "fsGroup": TRAINER_UID,
    # a dataset PVC of millions of files is not re-chowned at every pod start
    "fsGroupChangePolicy": "OnRootMismatch",
    "seccompProfile": {"type": "RuntimeDefault"},
}
#: Pod Security Standards `restricted`, container level.
CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    "allowPrivilegeEscalation": False, "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
}


def build_pod_template(job: JobSpec, *, container_name: str = CONTAINER,
                       ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The pod template ({metadata, spec}) of one stage attempt's pods.

    container_name/ports: the PyTorchJob wants container `pytorch` with its rendezvous
    port; a TrainJob's runtime may name them otherwise.
    """
    res = job.resources
    custom = job.pod_template
    gpus = res.gpus_per_node
    requests: dict[str, Any] = {"cpu": res.cpu, "memory": res.memory}
    limits: dict[str, Any] = {"memory": res.memory}
    if gpus:
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = gpus
    requests.update(custom.resources.requests)  # extra resources only: the spec rejects ours
    limits.update(custom.resources.limits)
    own_env = [{"name": k, "value": v} for k, v in sorted(job.env.items())]
    own_env += [{"name": k, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
                for k, (secret, key) in sorted(job.secret_env.items())]
    ours = {e["name"] for e in own_env}
    env = own_env + [dict(e) for e in custom.env if e["name"] not in ours]  # the trainer's env wins
    container: dict[str, Any] = {
        "name": container_name,
        "image": job.image,
        "imagePullPolicy": "IfNotPresent",
        "command": job.pod_command,  # the node launcher: a pod is a node, not a rank
        # a failed container's last log lines become its termination message, which the operator
        # reads with the exit code (no pods/log permission needed): `describe` shows the trainer's
        # own error line
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "env": env,
        "resources": {"requests": requests, "limits": limits},
        "volumeMounts": merge_lists([{"name": SHM_VOLUME, "mountPath": SHM_PATH}],
                                    [dict(m) for m in custom.volume_mounts], "mountPath"),
        "securityContext": deep_merge(CONTAINER_SECURITY_CONTEXT, custom.container_security_context),
    }
    if ports is None:
        ports = [{"name": "pytorchjob-port", "containerPort": PORT, "protocol": "TCP"}]
    if ports:
        container["ports"] = ports
    if custom.env_from:
        container["envFrom"] = [dict(e) for e in custom.env_from]
    spec: dict[str, Any] = {
        "containers": [container],
        "volumes": merge_lists([{"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": res.shm_size}}],
                               [dict(v) for v in custom.volumes], "name"),
        "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
        "securityContext": deep_merge(POD_SECURITY_CONTEXT, custom.security_context),
    }
    node_selector: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = []
    if gpus:
        if res.gpu_product:
            node_selector[GPU_PRODUCT_LABEL] = res.gpu_product
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    node_selector.update(custom.node_selector)
    tolerations = merge_lists(tolerations, [dict(t) for t in res.tolerations], None)
    tolerations = merge_lists(tolerations, [dict(t) for t in custom.tolerations], None)
    if node_selector:
        spec["nodeSelector"] = node_selector
    if tolerations:
        spec["tolerations"] = tolerations
    if custom.affinity:
        spec["affinity"] = dict(custom.affinity)
    if (scheduler := SCHEDULER_NAMES.get(job.scheduling.gang_scheduler)) is not None:
        spec["schedulerName"] = scheduler
    if priority := custom.priority_class_name or job.scheduling.priority_class:
        spec["priorityClassName"] = priority
    if custom.service_account_name:
        spec["serviceAccountName"] = custom.service_account_name
    if custom.image_pull_secrets:
        spec["imagePullSecrets"] = [dict(s) for s in custom.image_pull_secrets]
    labels = {**custom.labels, **job.labels}  # the operator's labels find the pods: they win
    # an Istio sidecar keeps pods alive after training and breaks rendezvous
    annotations = {"sidecar.istio.io/inject": "false", **custom.annotations}
    return {"metadata": {"labels": labels, "annotations": annotations}, "spec": spec}


__all__ = ["build_pod_template", "CONTAINER", "PORT", "SCHEDULER_NAMES", "GPU_RESOURCE", "GPU_PRODUCT_LABEL",
           "POD_SECURITY_CONTEXT", "CONTAINER_SECURITY_CONTEXT", "TERMINATION_GRACE_S"]
