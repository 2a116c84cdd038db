"""The TrainJob builder (Kubeflow Trainer v2): pure, every scheduler variant, valid under the
v2.3.0 TrainJob CRD, within what Trainer's webhook accepts; its status mapping; the CLI's dry run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.schema_check import load_crd_schema, strip_descriptions, validate
from typer.testing import CliRunner

from eve_contract.naming import LABEL_PIPELINE, LABEL_STAGE, job_name
from eve_operator.cli.main import app
from eve_operator.crd import crd_manifest
from eve_operator.jobspec import build_job_spec
from eve_operator.pipeline import SubmitJob
from eve_operator.podtemplate import CONTAINER_SECURITY_CONTEXT, POD_SECURITY_CONTEXT
from eve_operator.spec import PipelineSpec
from eve_operator.trainjob import (
    MAX_NAME,
    PATCH_MANAGER,
    PET_ENV,
    build_trainjob,
    job_api_of,
    job_state,
    pod_selector,
    runtime_of,
    trainjob_name,
)
from eve_trainer.config import ConfigError

DATA = Path(__file__).parent / "data"
VENDORED_TRAINJOB = DATA / "trainjob-v2.3.0-schema.json"
VENDORED_RUNTIME = DATA / "clustertrainingruntime-v2.3.0-schema.json"
REFERENCE = "reference/kubeflow-trainer-v2.3.0"
BATCH = {"overrides": {"global_batch_size": 96, "micro_batch_size": 1}}
OWNER = {"name": "demo", "uid": "0b9d1c4e-1111-2222-3333-444455556666"}


def vendored_form(schema: dict[str, Any]) -> dict[str, Any]:
    """What is vendored of a v2.3.0 CRD schema: no descriptions, no status (tests never send one)."""
    out = strip_descriptions(schema)
    out["properties"].pop("status", None)
    return out


def make_job(spec: dict[str, Any] | None = None, *, stage: str = "prealign", attempt: int = 1,
             name: str = "demo", runtime: str = "eve-torch") -> dict[str, Any]:
    # a global batch every variant's world size (8 to 32 ranks) splits: submit checks it
    pspec = PipelineSpec.model_validate({"output": "s3://ckpt/eve", "jobApi": "TrainJob", **BATCH, **(spec or {})})
    submit = SubmitJob(stage, attempt, job_name(name, stage, attempt), None, None)
    return build_trainjob(build_job_spec(name, pspec, submit), namespace="ml", owner=OWNER, runtime=runtime)


def node_patch(job: dict[str, Any]) -> dict[str, Any]:
    """The pod template of our runtimePatch on the `node` replicated job."""
    (patch,) = job["spec"]["runtimePatches"]
    (rjob,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert rjob["name"] == "node"
    return rjob["template"]["spec"]["template"]


VARIANTS = {
    "volcano-4-nodes": {"resources": {"nodes": 4}, "scheduling": {"gangScheduler": "volcano", "queue": "gpu"}},
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
    "pod-template": {"podTemplate": {
        "labels": {"team": "vision"}, "annotations": {"cost-center": "42"}, "serviceAccountName": "trainer",
        "imagePullSecrets": [{"name": "regcred"}], "nodeSelector": {"pool": "a100"},
        "env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}],
        "volumes": [{"name": "cache", "persistentVolumeClaim": {"claimName": "hf-cache"}}],
        "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}},
        "resources": {"limits": {"rdma/hca": 1}}}},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_validates_against_the_vendored_trainjob_schema(variant: str) -> None:
    validate(make_job(VARIANTS[variant]), load_crd_schema(VENDORED_TRAINJOB))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_validates_against_the_reference_crd(variant: str, shared_dir: Path) -> None:
    schema = load_crd_schema(shared_dir / REFERENCE / "trainer.kubeflow.org_trainjobs.yaml")
    validate(make_job(VARIANTS[variant]), schema)


@pytest.mark.parametrize(("vendored", "crd"), [
    (VENDORED_TRAINJOB, "trainer.kubeflow.org_trainjobs.yaml"),
    (VENDORED_RUNTIME, "trainer.kubeflow.org_clustertrainingruntimes.yaml")])
def test_vendored_schemas_are_the_reference_crds_without_descriptions(vendored: Path, crd: str,
                                                                      shared_dir: Path) -> None:
    assert vendored_form(load_crd_schema(shared_dir / REFERENCE / crd)) == load_crd_schema(vendored)


def test_a_misspelt_field_fails_validation() -> None:
    job = make_job()
    job["spec"]["trainer"]["numProcsPerNode"] = 8
    with pytest.raises(Exception, match="numProcsPerNode"):
        validate(job, load_crd_schema(VENDORED_TRAINJOB))


def test_trainer_fields_runtime_ref_and_resources() -> None:
    job = make_job(VARIANTS["volcano-4-nodes"])
    spec = job["spec"]
    assert spec["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                                  "name": "eve-torch"}
    trainer = spec["trainer"]
    assert trainer["numNodes"] == 4 and trainer["numProcPerNode"] == 8
    assert trainer["image"] == "ghcr.io/eve-platform/trainer:0.1.0"
    assert trainer["command"][0] in ("eve-train", "eve-launch") and "pipeline=demo" in trainer["command"]
    # quantities are strings; extended resources only in limits (kubeflow/trainer#2363)
    assert trainer["resourcesPerNode"] == {"requests": {"cpu": "32", "memory": "400Gi"},
                                           "limits": {"memory": "400Gi", "nvidia.com/gpu": "8"}}
    assert spec["suspend"] is False and "activeDeadlineSeconds" not in spec


def test_extra_resources_of_the_pod_template_go_to_limits() -> None:
    limits = make_job(VARIANTS["pod-template"])["spec"]["trainer"]["resourcesPerNode"]["limits"]
    assert limits["rdma/hca"] == "1" and limits["nvidia.com/gpu"] == "8"


def test_pod_customisation_goes_through_our_runtime_patch() -> None:
    job = make_job(VARIANTS["pod-template"])
    (patch,) = job["spec"]["runtimePatches"]
    assert patch["manager"] == PATCH_MANAGER == "eve-platform.io/operator"
    pod = node_patch(job)
    assert pod["metadata"]["labels"] == {"team": "vision", LABEL_PIPELINE: "demo", LABEL_STAGE: "prealign",
                                         "eve-platform.io/attempt": "1"}
    assert pod["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false", "cost-center": "42"}
    spec = pod["spec"]
    assert spec["serviceAccountName"] == "trainer" and spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "pool": "a100"}
    assert spec["affinity"]["nodeAffinity"]
    assert [v["name"] for v in spec["volumes"]] == ["dshm", "cache"]
    assert spec["terminationGracePeriodSeconds"] == 300
    assert spec["securityContext"] == POD_SECURITY_CONTEXT  # restricted by default
    (container,) = spec["containers"]
    assert container["name"] == "node" and set(container) == {"name", "securityContext", "volumeMounts"}
    assert container["securityContext"] == CONTAINER_SECURITY_CONTEXT
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/dev/shm", "/cache"]
    # the runtime owns these: Trainer's patch schema has no field for them
    assert not {"schedulerName", "priorityClassName", "restartPolicy"} & set(spec)


def test_credentials_and_env_go_to_trainer_env_by_reference() -> None:
    """The webhook rejects env on the `node` container in a runtimePatch: env is trainer.env."""
    job = make_job({**VARIANTS["secrets-deadline-suspend"], **VARIANTS["pod-template"]})
    env = {e["name"]: e for e in job["spec"]["trainer"]["env"]}
    assert env["AWS_ACCESS_KEY_ID"] == {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {
        "secretKeyRef": {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"}}}
    assert "value" not in env["AWS_SECRET_ACCESS_KEY"]
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio:9000"
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow:5000"
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "hf"
    assert not set(PET_ENV) & set(env), "PET_* are the torch plugin's (the webhook rejects them)"
    assert "env" not in node_patch(job)["spec"]["containers"][0]
    assert job["spec"]["activeDeadlineSeconds"] == 86400 and job["spec"]["suspend"] is True
    assert node_patch(job)["spec"]["tolerations"][1]["key"] == "dedicated"


def test_kueue_labels_the_job_and_creates_it_suspended() -> None:
    job = make_job(VARIANTS["kueue"])
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert job["spec"]["suspend"] is True
    assert "metadata" not in job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]


def test_volcano_queue_goes_through_the_runtime_annotation() -> None:
    template = make_job(VARIANTS["volcano-4-nodes"])["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]
    assert template["metadata"] == {"annotations": {"scheduling.volcano.sh/queue-name": "gpu"}}
    assert "kueue.x-k8s.io/queue-name" not in make_job(VARIANTS["volcano-4-nodes"])["metadata"]["labels"]


def test_cpu_job_has_no_gpu_bits() -> None:
    job = make_job(VARIANTS["cpu-only"])
    assert job["spec"]["trainer"]["resourcesPerNode"] == {"requests": {"cpu": "4", "memory": "8Gi"},
                                                          "limits": {"memory": "8Gi"}}
    assert job["spec"]["trainer"]["numProcPerNode"] == 2
    assert not {"nodeSelector", "tolerations"} & set(node_patch(job)["spec"])


@pytest.mark.parametrize(("spec", "key"), [
    ({"scheduling": {"priorityClass": "train-high"}}, "priorityClass"),
    ({"podTemplate": {"priorityClassName": "train-high"}}, "priorityClass"),
    ({"podTemplate": {"envFrom": [{"secretRef": {"name": "extra"}}]}}, "podTemplate.envFrom"),
])
def test_what_a_trainjob_cannot_carry_is_a_config_error_naming_the_key(spec: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        make_job(spec)


def test_names_fit_jobset_pod_hostnames_and_are_deterministic() -> None:
    assert trainjob_name("demo-pretrain-r2") == "demo-pretrain-r2"
    long = job_name("a" * 40, "sft-hd", 12)
    assert len(long) > MAX_NAME
    short = trainjob_name(long)
    assert len(short) <= MAX_NAME and short == trainjob_name(long) and short != trainjob_name(long + "x")
    assert len(f"{short}-node-0-511-abcde") <= 63  # JobSet's webhook check of the longest pod name
    job = make_job(name="a" * 40, stage="pretrain", attempt=12)
    assert job["metadata"]["name"] == trainjob_name(job_name("a" * 40, "pretrain", 12))
    assert pod_selector(long) == f"jobset.sigs.k8s.io/jobset-name={short}"
    first, again = make_job(stage="pretrain", attempt=2), make_job(stage="pretrain", attempt=2)
    assert first == again and first["metadata"]["name"] == "demo-pretrain-r2"
    assert first["metadata"]["ownerReferences"][0]["uid"] == OWNER["uid"]


def test_job_api_defaults_to_the_operator_env_then_pytorchjob() -> None:
    base = PipelineSpec.model_validate({"output": "s3://b/x"})
    assert job_api_of(base, {}) == "PyTorchJob"
    assert job_api_of(base, {"EVE_JOB_API": "TrainJob"}) == "TrainJob"
    assert job_api_of(base.model_copy(update={"job_api": "PyTorchJob"}), {"EVE_JOB_API": "TrainJob"}) == "PyTorchJob"
    with pytest.raises(ValueError, match="EVE_JOB_API='TrainJobs'.*PyTorchJob, TrainJob"):
        job_api_of(base, {"EVE_JOB_API": "TrainJobs"})
    assert runtime_of({}) == "eve-torch" and runtime_of({"EVE_TRAINJOB_RUNTIME": "mine"}) == "mine"


def test_the_crd_offers_job_api() -> None:
    spec = crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["jobApi"]["enum"] == ["PyTorchJob", "TrainJob"]


@pytest.mark.parametrize(("conditions", "extra", "expected"), [
    ([], {}, ("Pending", "waiting for 2 node pod(s) to start", None)),
    ([], {"jobsStatus": [{"name": "node", "active": 2, "ready": 1, "failed": 0, "succeeded": 0, "suspended": 0}]},
     ("Running", "1/2 node pod(s) ready", None)),
    ([], {"jobsStatus": [{"name": "node", "active": 2, "ready": 2, "failed": 0, "succeeded": 0, "suspended": 0}]},
     ("Running", "", None)),
    ([], {"jobsStatus": [{"name": "node", "active": 1, "ready": 1, "failed": 1, "succeeded": 0, "suspended": 0}]},
     ("Running", "restarting: 1 node pod(s) failed; the JobSet restarts every node", None)),
    ([{"type": "Suspended", "status": "True", "reason": "Suspended"}], {}, ("Suspended", "", None)),
    ([{"type": "Suspended", "status": "False", "reason": "Resumed"}], {}, ("Pending", "waiting for 2 node pod(s) to start", None)),
    ([{"type": "Complete", "status": "True", "reason": "AllJobsCompleted", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
     {}, ("Succeeded", "", "2026-01-01T00:00:00Z")),
    ([{"type": "Failed", "status": "True", "reason": "FailedJobs", "lastTransitionTime": "2026-01-02T00:00:00Z",
       "message": "jobset failed due to FailJobSet action of rule trainerExitCode"}], {},
     ("Failed", "FailedJobs: jobset failed due to FailJobSet action of rule trainerExitCode", "2026-01-02T00:00:00Z")),
    ([{"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": ""}], {},
     ("Failed", "DeadlineExceeded", None)),
])
def test_job_state_reads_conditions_and_jobs_status(conditions: list, extra: dict, expected: tuple) -> None:
    job = {"spec": {"trainer": {"numNodes": 2}}, "status": {"conditions": conditions, **extra}}
    assert job_state(job) == expected


def test_job_state_suspended_from_the_spec_and_absent() -> None:
    assert job_state({"spec": {"suspend": True}}) == ("Suspended", "", None)
    assert job_state(None) == ("Absent", "", None)


def test_cli_dry_run_prints_a_valid_trainjob() -> None:
    result = CliRunner().invoke(app, ["submit", "stage=prealign", "name=clu", "output=s3://ckpt/eve", "nodes=2",
                                      "global_batch_size=96", "micro_batch_size=1",
                                      "jobApi=TrainJob", "gang_scheduler=kueue", "queue=team-a",
                                      "credentials_secret=eve-s3", "--dry-run", "--backend", "kubernetes",
                                      "-n", "ml", "-o", "json"])
    assert result.exit_code == 0, result.output
    pipeline, job, *later = json.loads(result.stdout)  # then every later stage's job
    assert [j["kind"] for j in later] == ["TrainJob", "TrainJob"]
    assert pipeline["spec"]["jobApi"] == "TrainJob"
    assert job["kind"] == "TrainJob" and job["metadata"] == {
        "name": "clu-prealign", "namespace": "ml", "labels": {
            LABEL_PIPELINE: "clu", LABEL_STAGE: "prealign", "eve-platform.io/attempt": "1",
            "kueue.x-k8s.io/queue-name": "team-a"}}
    validate(job, load_crd_schema(VENDORED_TRAINJOB))
    yaml_out = CliRunner().invoke(app, ["submit", "stage=prealign", "output=s3://ckpt/eve", "jobApi=TrainJob",
                                        "global_batch_size=96", "micro_batch_size=1",
                                        "--dry-run", "--backend", "kubernetes", "-n", "ml"])
    assert yaml_out.exit_code == 0, yaml_out.output
    kinds = [d["kind"] for d in yaml.safe_load_all(yaml_out.stdout)]
    assert kinds == ["EvePipeline", "TrainJob", "TrainJob", "TrainJob"]


def test_cli_dry_run_names_what_a_trainjob_cannot_carry() -> None:
    result = CliRunner().invoke(app, ["submit", "stage=prealign", "output=s3://ckpt/eve", "jobApi=TrainJob",
                                      "global_batch_size=96", "micro_batch_size=1",
                                      "priority_class=high", "--dry-run", "--backend", "kubernetes", "-n", "ml"])
    assert result.exit_code == 2 and "trainJob.runtime.priorityClassName" in result.output
