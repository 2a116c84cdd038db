"""The chart's settings reach the pods: `helm template` output (the CRD and the operator's env)
applied to the emulator, the real operator reconciling, a pipeline that omits them.

Also: the operator's defaults as data (a pipeline's own values win; where each value came from),
and least privilege (no Secret is read unless the installer allows it).
"""

from __future__ import annotations

from typing import Any

import kubernetes
import pytest
from support.deploy_support import RELEASE, Helm, find, tool
from support.operator_harness import Cluster, base_spec, running_operator, wait_for

from eve_operator import defaults
from eve_operator.defaults import BUILT_IN, OPERATOR, PIPELINE, OperatorDefaults

REGISTRY = "registry.local/eve"


def helm_objects(*sets: str) -> list[dict[str, Any]]:
    path, why = tool("helm")
    if path is None:
        pytest.skip(f"helm is not available: {why}")
    return Helm(path).template(*[a for s in sets for a in ("--set", s)])


def operator_env(objs: list[dict[str, Any]]) -> dict[str, str]:
    """The operator container's literal env, as the kubelet would set it (refs are not values)."""
    dep = find(objs, "Deployment", RELEASE)[0]
    return {e["name"]: e["value"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"] if "value" in e}


def master(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]


def test_helm_values_reach_the_pods_through_the_operator(cluster: Cluster, output: str, mlflow_server: Any,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    objs = helm_objects(f"trainer.image.repository={REGISTRY}", f"mlflow.trackingUri={mlflow_server.tracking_uri}",
                        "mlflow.experiment=vision", "scheduling.gangScheduler=kueue", "scheduling.queue=team-a",
                        "storage.s3.credentialsSecret.name=team-s3")
    (crd,) = find(objs, "CustomResourceDefinition")
    kubernetes.client.ApiextensionsV1Api(cluster.api).create_custom_resource_definition(crd)
    env = operator_env(objs)
    assert env["EVE_TRAINER_IMAGE"] == f"{REGISTRY}:0.1.0"
    for name, value in env.items():
        if name.startswith(("EVE_", "MLFLOW_")):
            monkeypatch.setenv(name, value)
    with running_operator():
        # a pipeline that says nothing about image, tracking, scheduler or credentials
        cluster.create_pipeline("plain", {k: v for k, v in base_spec(output).items() if k != "scheduling"})
        cluster.create_pipeline("own", {**base_spec(output, image="mine.example.com/eve:1"),
                                        "mlflow": {"trackingUri": ""}})
        plain = wait_for(lambda: cluster.jobs().get("plain-prealign"), what="the plain pipeline's job")
        own = wait_for(lambda: cluster.jobs().get("own-prealign"), what="the other pipeline's job")
        status = wait_for(lambda: cluster.status("plain") if cluster.status("plain").get("effective") else None,
                          what="status.effective")
    pod = master(plain)
    container = pod["containers"][0]
    assert container["image"] == f"{REGISTRY}:0.1.0"
    assert plain["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert plain["spec"]["runPolicy"]["suspend"] is True  # Kueue admits by un-suspending
    env_refs = {e["name"]: e.get("valueFrom") for e in container["env"]}
    assert env_refs["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "team-s3", "key": "AWS_ACCESS_KEY_ID"}}
    assert "mlflow.experiment=vision" in container["command"]
    assert any(a.startswith("mlflow.parent_run_id=") for a in container["command"]), "tracked without a block"
    assert status["mlflowRunId"]
    assert status["effective"]["image"] == {"value": f"{REGISTRY}:0.1.0", "source": OPERATOR}
    assert status["effective"]["scheduling.gangScheduler"] == {"value": "kueue", "source": OPERATOR}
    assert status["effective"]["mlflow.experiment"] == {"value": "vision", "source": OPERATOR}
    # a pipeline's own values win, an empty tracking URI included
    own_container = master(own)["containers"][0]
    assert own_container["image"] == "mine.example.com/eve:1"
    assert own["metadata"]["labels"].get("kueue.x-k8s.io/queue-name") is None  # its own volcano
    assert not any(a.startswith("mlflow.parent_run_id=") for a in own_container["command"])
    effective = cluster.status("own")["effective"]
    assert effective["image"]["source"] == PIPELINE and effective["scheduling.gangScheduler"]["source"] == PIPELINE
    assert effective["scheduling.queue"] == {"value": "research", "source": PIPELINE}
    # least privilege: the chart's default lets the operator read no Secret
    assert not [r for r in cluster.requests() if "/secrets" in r.path]


def test_the_crd_leaves_operator_defaulted_fields_absent() -> None:
    from eve_operator import crd

    spec = crd.spec_schema()["properties"]
    assert "default" not in spec["image"]
    assert "default" not in spec["mlflow"]["properties"]["experiment"]
    assert "default" not in spec["scheduling"]["properties"]["gangScheduler"]
    assert "default" not in spec["resources"]["properties"]["gpuProduct"]


def test_pipeline_values_win_and_provenance_says_which() -> None:
    ops = OperatorDefaults.from_env({"EVE_TRAINER_IMAGE": "reg/eve:2", "EVE_GANG_SCHEDULER": "kueue",
                                     "EVE_QUEUE": "lq", "EVE_GPU_PRODUCT": "NVIDIA-H100-80GB-HBM3",
                                     "MLFLOW_TRACKING_URI": "http://mlflow:5000", "EVE_CREDENTIALS_SECRET": "",
                                     "AWS_REGION": "eu-west-1"})
    raw = {"output": "s3://b/p", "image": "mine:1", "resources": {"nodes": 2},
           "stages": {"sft": {"resources": {"nodes": 1}}, "pretrain": {"resources": {"gpuProduct": ""}}},
           "s3": {"region": None}, "mlflow": {"experiment": "exp"}}
    spec = ops.parse(raw)
    assert spec.image == "mine:1" and spec.scheduling.gang_scheduler == "kueue" and spec.scheduling.queue == "lq"
    assert spec.resources.gpu_product == "NVIDIA-H100-80GB-HBM3"
    assert spec.resources_for("sft").gpu_product == "NVIDIA-H100-80GB-HBM3"
    assert spec.resources_for("pretrain").gpu_product == ""  # empty is a value: any GPU
    assert spec.s3.region == "eu-west-1"  # null is omitted
    assert spec.s3.credentials_secret is None  # an empty env var is no default
    prov = ops.provenance(raw)
    assert prov["image"] == {"value": "mine:1", "source": PIPELINE}
    assert prov["scheduling.queue"] == {"value": "lq", "source": OPERATOR}
    assert prov["mlflow.experiment"] == {"value": "exp", "source": PIPELINE}
    assert prov["s3.endpointUrl"] == {"value": "", "source": BUILT_IN}
    assert prov["scheduling.priorityClass"]["source"] == BUILT_IN
    # a queue belongs to its scheduler: a Volcano pipeline gets no Kueue queue
    volcano = ops.parse({"output": "s3://b/p", "scheduling": {"gangScheduler": "volcano"}})
    assert volcano.scheduling.queue is None
    # nothing given at all: the built-ins
    bare = OperatorDefaults.from_env({}).parse({"output": "s3://b/p"})
    assert bare.image == "ghcr.io/eve-platform/trainer:0.1.0" and bare.scheduling.gang_scheduler == "volcano"
    assert bare.mlflow.tracking_uri is None


def test_operator_reads_its_environment_once_at_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVE_TRAINER_IMAGE", "a/eve:1")
    assert defaults.operator_defaults(reload=True).values["image"] == "a/eve:1"
    monkeypatch.setenv("EVE_TRAINER_IMAGE", "b/eve:2")
    assert defaults.operator_defaults().values["image"] == "a/eve:1"
    monkeypatch.delenv("EVE_TRAINER_IMAGE")
    defaults.operator_defaults(reload=True)
