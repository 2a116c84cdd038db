"""The PyTorchJob builder: pure, every scheduler variant, valid under the PyTorchJob CRD."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.schema_check import VENDORED_PYTORCHJOB, load_crd_schema, strip_descriptions, validate

from eve_contract.naming import LABEL_PIPELINE, LABEL_STAGE, job_name
from eve_operator.jobspec import build_job_spec
from eve_operator.pipeline import SubmitJob
from eve_operator.pytorchjob import build_pytorchjob, job_state
from eve_operator.spec import PipelineSpec

OWNER = {"name": "demo", "uid": "0b9d1c4e-1111-2222-3333-444455556666"}


def make_job(spec: dict[str, Any] | None = None, *, stage: str = "prealign", attempt: int = 1,
             ns: str = "ml") -> dict[str, Any]:
    # a global batch every variant's world size (2 to 32 ranks) splits: submit checks it
    pspec = PipelineSpec.model_validate({"output": "s3://ckpt/eve", "overrides": {"global_batch_size": 96,
                                                                                "micro_batch_size": 1},
                                         **(spec or {})})
    submit = SubmitJob(stage, attempt, job_name("demo", stage, attempt), None, None)
    return build_pytorchjob(build_job_spec("demo", pspec, submit), namespace=ns, owner=OWNER)


def pod(job: dict[str, Any], replica: str = "Master") -> dict[str, Any]:
    return job["spec"]["pytorchReplicaSpecs"][replica]["template"]["spec"]


VARIANTS = {
    "volcano-4-nodes": {"resources": {"nodes": 4}, "scheduling": {"gangScheduler": "volcano", "queue": "gpu",
                                                                  "priorityClass": "train-high"}},
    "scheduler-plugins": {"resources": {"nodes": 2}, "scheduling": {"gangScheduler": "scheduler-plugins",
                                                                    "scheduleTimeoutSeconds": 600}},
    "kueue": {"resources": {"nodes": 3}, "scheduling": {"gangScheduler": "kueue", "queue": "team-a"}},
    "none-single-node": {"scheduling": {"gangScheduler": "none"}},
    "cpu-only": {"resources": {"gpusPerNode": 0, "nprocPerNode": 2, "cpu": 4, "memory": "8Gi", "shmSize": "1Gi"},
                 "scheduling": {"gangScheduler": "none"}},
    "secrets-deadline-suspend": {"s3": {"endpointUrl": "http://minio:9000", "credentialsSecret": "s3-creds"},
                                 "activeDeadlineSeconds": 86400, "suspend": True,
                                 "mlflow": {"trackingUri": "http://mlflow:5000"},
                                 "resources": {"tolerations": [{"key": "dedicated", "operator": "Equal",
                                                                "value": "train", "effect": "NoSchedule"}]}},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_validates_against_the_vendored_pytorchjob_schema(variant: str) -> None:
    validate(make_job(VARIANTS[variant]), load_crd_schema(VENDORED_PYTORCHJOB))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_validates_against_the_reference_crd(variant: str, shared_dir: Path) -> None:
    validate(make_job(VARIANTS[variant]), load_crd_schema(shared_dir / "reference/pytorchjob-crd.yaml"))


def test_vendored_schema_is_the_reference_crd_without_descriptions(shared_dir: Path) -> None:
    reference = load_crd_schema(shared_dir / "reference/pytorchjob-crd.yaml")
    assert strip_descriptions(reference) == load_crd_schema(VENDORED_PYTORCHJOB)


def test_a_misspelt_field_fails_validation() -> None:
    job = make_job()
    job["spec"]["runPolicy"]["cleanPodPolicyy"] = "All"
    with pytest.raises(Exception, match="cleanPodPolicyy"):
        validate(job, load_crd_schema(VENDORED_PYTORCHJOB))


def test_master_plus_workers_gang_and_volcano_scheduler() -> None:
    job = make_job(VARIANTS["volcano-4-nodes"])
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 3
    assert {r["restartPolicy"] for r in replicas.values()} == {"ExitCode"}
    run = job["spec"]["runPolicy"]
    assert run["cleanPodPolicy"] == "Running" and run["backoffLimit"] == 3 and run["suspend"] is False
    assert run["schedulingPolicy"] == {"minAvailable": 4, "queue": "gpu", "priorityClass": "train-high",
                                       "scheduleTimeoutSeconds": 3600}
    assert pod(job)["schedulerName"] == pod(job, "Worker")["schedulerName"] == "volcano"
    assert pod(job)["priorityClassName"] == "train-high"
    assert job["spec"]["nprocPerNode"] == "8"


def test_single_node_has_no_worker_and_no_gang_without_a_scheduler() -> None:
    job = make_job(VARIANTS["none-single-node"])
    assert list(job["spec"]["pytorchReplicaSpecs"]) == ["Master"]
    assert "schedulingPolicy" not in job["spec"]["runPolicy"]
    assert "schedulerName" not in pod(job)


def test_scheduler_plugins_names_its_secondary_scheduler() -> None:
    job = make_job(VARIANTS["scheduler-plugins"])
    assert pod(job)["schedulerName"] == "scheduler-plugins-scheduler"
    assert job["spec"]["runPolicy"]["schedulingPolicy"] == {"minAvailable": 2, "scheduleTimeoutSeconds": 600}


def test_kueue_labels_the_job_and_creates_it_suspended() -> None:
    job = make_job(VARIANTS["kueue"])
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert job["spec"]["runPolicy"]["suspend"] is True
    assert "schedulingPolicy" not in job["spec"]["runPolicy"]  # Kueue admits the whole job: quota gang
    assert "schedulerName" not in pod(job)


def test_gpu_pod_resources_selector_tolerations_and_shm() -> None:
    job = make_job(VARIANTS["secrets-deadline-suspend"])
    spec = pod(job)
    container = spec["containers"][0]
    assert container["name"] == "pytorch"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert spec["tolerations"][0] == {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    assert spec["tolerations"][1]["key"] == "dedicated"
    assert spec["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}}]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert job["spec"]["runPolicy"]["activeDeadlineSeconds"] == 86400
    assert job["spec"]["runPolicy"]["suspend"] is True


def test_credentials_come_from_the_secret_never_inline() -> None:
    job = make_job(VARIANTS["secrets-deadline-suspend"])
    env = {e["name"]: e for e in pod(job)["containers"][0]["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"] == {"secretKeyRef": {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"}}
    assert "value" not in env["AWS_SECRET_ACCESS_KEY"]
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio:9000"
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow:5000"
    assert env["EVE_STAGE"]["value"] == "prealign"


def test_cpu_job_has_no_gpu_bits() -> None:
    job = make_job(VARIANTS["cpu-only"])
    spec = pod(job)
    assert "nvidia.com/gpu" not in spec["containers"][0]["resources"]["limits"]
    assert "nodeSelector" not in spec and "tolerations" not in spec
    assert spec["containers"][0]["resources"]["requests"]["cpu"] == "4"
    assert job["spec"]["nprocPerNode"] == "2"


def test_names_labels_owner_and_command_are_deterministic() -> None:
    first, again = make_job(stage="pretrain", attempt=2), make_job(stage="pretrain", attempt=2)
    assert first == again
    meta = first["metadata"]
    assert meta["name"] == "demo-pretrain-r2" and meta["namespace"] == "ml"
    assert meta["labels"][LABEL_PIPELINE] == "demo" and meta["labels"][LABEL_STAGE] == "pretrain"
    assert meta["ownerReferences"] == [{"apiVersion": "eve-platform.io/v1alpha1", "kind": "EvePipeline",
                                        "name": "demo", "uid": OWNER["uid"], "controller": True,
                                        "blockOwnerDeletion": True}]
    command = pod(first)["containers"][0]["command"]
    assert command[:3] == ["eve-launch", "--", "eve-train"] and "pretrain" in command and "pipeline=demo" in command


@pytest.mark.parametrize(("status", "spec", "expected"), [
    (None, {}, ("Pending", "waiting for the pod(s) to start", None)),
    ({"conditions": [{"type": "Created", "status": "True"}]},
     {"pytorchReplicaSpecs": {"Master": {"replicas": 1}, "Worker": {"replicas": 3}},
      "runPolicy": {"schedulingPolicy": {"minAvailable": 4}}},
     ("Pending", "waiting for all 4 pods to be scheduled together (gang)", None)),
    ({"conditions": [{"type": "Created", "status": "True"}]}, {"pytorchReplicaSpecs": {"Master": {}}},
     ("Pending", "waiting for 1 pod(s) to start", None)),
    ({"conditions": [{"type": "Running", "status": "True"}]}, {}, ("Running", "", None)),
    ({"conditions": [{"type": "Restarting", "status": "True", "message": "pod demo-worker-1 exited 143"}]}, {},
     ("Running", "restarting: pod demo-worker-1 exited 143", None)),
    ({"conditions": [{"type": "Running", "status": "True"}]}, {"runPolicy": {"suspend": True}},
     ("Suspended", "", None)),
    ({"conditions": [{"type": "Succeeded", "status": "False"}]}, {}, ("Pending", "waiting for the pod(s) to start", None)),
    ({"conditions": [{"type": "Running", "status": "False"},
                     {"type": "Succeeded", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}, {},
     ("Succeeded", "", "2026-01-01T00:00:00Z")),
    ({"completionTime": "2026-01-02T00:00:00Z",
      "conditions": [{"type": "Failed", "status": "True", "reason": "PyTorchJobFailed",
                      "message": "job demo has failed because it has reached the backoff limit"}]}, {},
     ("Failed", "job demo has failed because it has reached the backoff limit", "2026-01-02T00:00:00Z")),
])
def test_job_state_reads_conditions_with_status_true(status: Any, spec: dict, expected: tuple) -> None:
    job = {"spec": spec, **({"status": status} if status is not None else {})}
    assert job_state(job) == expected


def test_absent_job() -> None:
    assert job_state(None) == ("Absent", "", None)
