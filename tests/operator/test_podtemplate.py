"""The stage pod template: restricted by default, spec.podTemplate merged by the documented rules,
valid under the Kubernetes PodSpec schema (the docs/install.md examples included)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError
from support.pod_security import restricted_violations

from eve_contract.naming import job_name
from eve_operator.jobspec import build_job_spec
from eve_operator.pipeline import SubmitJob
from eve_operator.podtemplate import build_pod_template
from eve_operator.pytorchjob import build_pytorchjob
from eve_operator.spec import PipelineSpec

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.35.0"


def template(spec: dict[str, Any], stage: str = "prealign") -> dict[str, Any]:
    # a batch that splits over up to 4 nodes x 8 GPUs x micro 4 (the tiny preset's 8 would not)
    pspec = PipelineSpec.model_validate({"output": "s3://ckpt/eve", "overrides": {"global_batch_size": 256},
                                         **spec})
    submit = SubmitJob(stage, 1, job_name("demo", stage, 1), None, None)
    return build_pod_template(build_job_spec("demo", pspec, submit))


def assert_valid_pod(tpl: dict[str, Any]) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", **tpl["metadata"]}, "spec": tpl["spec"]}
    try:
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        pytest.fail(f"not a valid Kubernetes {K8S_VERSION} Pod: {err.message} at {list(err.path)}")


def doc_examples() -> dict[str, dict[str, Any]]:
    text = (ROOT / "docs" / "install.md").read_text()
    found = re.findall(r"<!-- podtemplate-example: ([a-z-]+) -->\n```yaml\n(.*?)```", text, re.S)
    return {name: yaml.safe_load(body)["spec"] for name, body in found}


def env_of(tpl: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in tpl["spec"]["containers"][0]["env"]}


VARIANTS = {
    "gpu": {},
    "cpu-credentials": {"resources": {"gpusPerNode": 0, "nprocPerNode": 2},
                        "s3": {"endpointUrl": "http://minio:9000", "credentialsSecret": "s3"},
                        "mlflow": {"trackingUri": "http://mlflow:5000"}},
    "volcano-priority": {"scheduling": {"gangScheduler": "volcano", "priorityClass": "high"}},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_default_pods_pass_the_restricted_profile(variant: str) -> None:
    tpl = template(VARIANTS[variant])
    assert restricted_violations(tpl["spec"]) == []
    assert_valid_pod(tpl)
    spec, container = tpl["spec"], tpl["spec"]["containers"][0]
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 65532
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
                                            "capabilities": {"drop": ["ALL"]},
                                            "seccompProfile": {"type": "RuntimeDefault"}}
    shm = next(v for v in spec["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"


def test_the_checker_catches_what_restricted_forbids() -> None:
    tpl = template({})
    pod = tpl["spec"]
    assert restricted_violations({**pod, "securityContext": {}, "containers": [
        {**pod["containers"][0], "securityContext": {}}]}) == [
        "container pytorch: does not drop ALL capabilities",
        "container pytorch: allowPrivilegeEscalation is not false",
        "container pytorch: runAsNonRoot is not true",
        "container pytorch: seccompProfile is unset"]
    assert restricted_violations({**pod, "hostNetwork": True, "volumes": [{"name": "h", "hostPath": {"path": "/"}}]}) \
        == ["hostNetwork=true", "volume h is a hostPath", "volume h has a restricted type (hostPath)"]


@pytest.mark.parametrize("name", ["infiniband", "efa", "private-registry", "datasets-pvc"])
def test_docs_examples_build_valid_pods(name: str) -> None:
    examples = doc_examples()
    assert name in examples, f"docs/install.md lost the {name} example"
    for stage in ("prealign", "sft"):
        tpl = template(examples[name], stage)
        assert_valid_pod(tpl)
        # only the InfiniBand example relaxes a field, and only the one it names
        expected = (["container pytorch: adds capabilities beyond baseline", "container pytorch: adds IPC_LOCK"]
                    if name == "infiniband" else [])
        assert restricted_violations(tpl["spec"]) == expected


def test_infiniband_and_efa_examples_reach_the_container() -> None:
    ib = template(doc_examples()["infiniband"])
    c = ib["spec"]["containers"][0]
    assert env_of(ib)["NCCL_IB_HCA"] == "mlx5_0,mlx5_1,mlx5_2,mlx5_3"
    assert c["resources"]["requests"] == {"cpu": "32", "memory": "400Gi", "nvidia.com/gpu": 8, "rdma/hca": "1"}
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]}
    efa = template(doc_examples()["efa"])
    assert efa["spec"]["serviceAccountName"] == "eve-trainer"
    assert efa["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB",
                                           "node.kubernetes.io/instance-type": "p4d.24xlarge"}
    assert efa["spec"]["containers"][0]["resources"]["limits"]["vpc.amazonaws.com/efa"] == "4"


def test_stage_template_merges_over_the_pipeline_by_name() -> None:
    spec = {
        "s3": {"credentialsSecret": "s3"},
        "resources": {"tolerations": [{"key": "dedicated", "operator": "Exists"}]},
        "podTemplate": {
            "labels": {"team": "vision", "tier": "a"}, "annotations": {"a": "1"},
            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
            "envFrom": [{"configMapRef": {"name": "proxy"}}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "d1"}}],
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            "tolerations": [{"key": "ib", "operator": "Exists"}],
            "imagePullSecrets": [{"name": "regcred"}],
            "securityContext": {"supplementalGroups": [1000]},
        },
        "stages": {"sft": {"podTemplate": {
            "labels": {"tier": "b"},
            "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}],
            "envFrom": [{"configMapRef": {"name": "proxy"}}, {"secretRef": {"name": "hf"}}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "d2"}}],
            "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": True}],
            "tolerations": [{"key": "ib", "operator": "Exists"}],
            "priorityClassName": "sft-high",
        }}},
    }
    pre, sft = template(spec, "prealign"), template(spec, "sft")
    for tpl in (pre, sft):
        assert_valid_pod(tpl)
        assert restricted_violations(tpl["spec"]) == []
    c = sft["spec"]["containers"][0]
    names = [e["name"] for e in c["env"]]
    assert names[-3:] == ["A", "B", "C"] and env_of(sft)["B"] == "3" and env_of(pre)["B"] == "2"
    assert env_of(sft)["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "s3", "key": "AWS_ACCESS_KEY_ID"}}
    assert c["envFrom"] == [{"configMapRef": {"name": "proxy"}}, {"secretRef": {"name": "hf"}}]
    assert sft["spec"]["volumes"] == [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}},
        {"name": "data", "persistentVolumeClaim": {"claimName": "d2"}}]
    assert c["volumeMounts"][-1] == {"name": "data", "mountPath": "/data", "readOnly": True}
    assert sft["spec"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Exists"}, {"key": "ib", "operator": "Exists"}]
    assert sft["metadata"]["labels"]["tier"] == "b" and pre["metadata"]["labels"]["tier"] == "a"
    assert sft["metadata"]["labels"]["eve-platform.io/stage"] == "sft"
    assert sft["spec"]["priorityClassName"] == "sft-high" and "priorityClassName" not in pre["spec"]
    assert sft["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert sft["spec"]["securityContext"]["supplementalGroups"] == [1000]
    assert sft["spec"]["securityContext"]["runAsNonRoot"] is True  # kept: not named


def test_relaxing_a_security_field_must_be_explicit() -> None:
    tpl = template({"podTemplate": {"securityContext": {"runAsNonRoot": False, "runAsUser": 0},
                                    "containerSecurityContext": {"runAsNonRoot": False}}})
    assert restricted_violations(tpl["spec"]) == ["pod runAsUser=0", "container pytorch: runAsNonRoot is not true"]
    sc = tpl["spec"]["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}


@pytest.mark.parametrize(("pod_template", "message"), [
    ({"env": [{"name": "EVE_STAGE", "value": "x"}]}, "podTemplate.env: EVE_STAGE is set by the operator"),
    ({"env": [{"name": "AWS_ENDPOINT_URL", "value": "x"}]}, "from spec.s3.endpointUrl"),
    ({"env": [{"value": "x"}]}, "podTemplate.env[0] needs a non-empty 'name'"),
    ({"env": [{"name": "X", "value": "1"}, {"name": "X", "value": "2"}]}, "name X given more than once"),
    ({"resources": {"limits": {"nvidia.com/gpu": 4}}}, "is set by spec.resources.gpusPerNode"),
    ({"resources": {"requests": {"memory": "1Gi"}}}, "is set by spec.resources.memory"),
    ({"volumes": [{"name": "dshm", "emptyDir": {}}]}, "'dshm' is the operator's /dev/shm"),
    ({"volumeMounts": [{"name": "x", "mountPath": "/dev/shm"}]}, "size it with spec.resources.shmSize"),
    ({"hostNetwork": True}, "Extra inputs are not permitted"),  # not a podTemplate field at all
])
def test_what_cannot_be_overwritten_is_rejected_with_the_field_to_set(pod_template: dict[str, Any],
                                                                      message: str) -> None:
    with pytest.raises(ValidationError) as err:
        PipelineSpec.model_validate({"output": "s3://b/p", "stages": {"sft": {"podTemplate": pod_template}}})
    assert message in str(err.value)


def test_pytorchjob_replicas_carry_the_shared_pod_template() -> None:
    pspec = PipelineSpec.model_validate({"output": "s3://b/p", "resources": {"nodes": 2},
                                         "overrides": {"global_batch_size": 256},
                                         "podTemplate": {"env": [{"name": "HTTPS_PROXY", "value": "http://p:3128"}]}})
    submit = SubmitJob("prealign", 1, job_name("demo", "prealign", 1), None, None)
    job = build_job_spec("demo", pspec, submit)
    body = build_pytorchjob(job, namespace="ml")
    for replica in ("Master", "Worker"):
        assert body["spec"]["pytorchReplicaSpecs"][replica]["template"] == build_pod_template(job)


@pytest.mark.parametrize("name", ["infiniband", "efa", "private-registry", "datasets-pvc"])
def test_docs_examples_are_valid_evepipelines_under_the_crd(name: str) -> None:
    from support.schema_check import crd_schema, validate

    from eve_operator import crd

    resource = {"apiVersion": crd.API_VERSION, "kind": crd.KIND, "metadata": {"name": "demo"},
                "spec": {"output": "s3://b/p", **doc_examples()[name]}}
    validate(resource, crd_schema(crd.crd_manifest()))
