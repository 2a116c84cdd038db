"""The CLI's Kubernetes functions against the emulated API server."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.operator_harness import NS, Cluster
from support.schema_check import VENDORED_PYTORCHJOB, crd_schema, load_crd_schema, validate

from eve_operator import crd, pytorchjob
from eve_operator.backends import kubernetes as kb
from eve_operator.spec import PipelineSpec

SPEC = PipelineSpec.model_validate({"output": "s3://ckpt/eve", "preset": "tiny",
                                    "resources": {"nodes": 2, "gpuProduct": None},
                                    "overrides": {"global_batch_size": 16, "micro_batch_size": 1},
                                    "scheduling": {"gangScheduler": "kueue", "queue": "team-a"}})


def test_render_pipeline_is_a_minimal_valid_cr() -> None:
    obj = kb.render_pipeline("demo", NS, SPEC)
    assert obj["metadata"] == {"name": "demo", "namespace": NS}
    assert obj["spec"]["resources"] == {"nodes": 2, "gpuProduct": None}
    assert obj["spec"]["overrides"] == {"global_batch_size": 16, "micro_batch_size": 1}
    validate(obj, crd_schema(crd.crd_manifest()))
    assert PipelineSpec.model_validate(obj["spec"]) == SPEC


def test_render_jobs_is_every_stage_job_each_from_the_previous_export() -> None:
    jobs = kb.render_jobs("demo", NS, SPEC)
    assert [j["metadata"]["name"] for j in jobs] == ["demo-prealign", "demo-pretrain", "demo-sft"]
    for job in jobs:
        assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
        validate(job, load_crd_schema(VENDORED_PYTORCHJOB))
    commands = [j["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"]
                for j in jobs]
    assert not any(a.startswith("init_from=") for a in commands[0])
    assert "init_from=s3://ckpt/eve/demo/prealign/export" in commands[1]
    assert "init_from=s3://ckpt/eve/demo/pretrain/export" in commands[2]


def test_render_jobs_mid_chain_shows_the_previous_export() -> None:
    spec = SPEC.model_copy(update={"start": "sft"})
    command = kb.render_jobs("demo", NS, spec)[0]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"][
        "containers"][0]["command"]
    assert "init_from=s3://ckpt/eve/demo/pretrain/export" in command


def test_render_rejects_bad_names() -> None:
    with pytest.raises(ValueError, match="DNS-1035"):
        kb.render_pipeline("Bad_Name", NS, SPEC)


def test_create_get_list_delete(cluster: Cluster) -> None:
    created = kb.create_pipeline("demo", NS, SPEC)
    assert created["metadata"]["uid"]
    with pytest.raises(ValueError, match="already exists"):
        kb.create_pipeline("demo", NS, SPEC)
    assert kb.get_pipeline("demo", NS)["spec"]["output"] == "s3://ckpt/eve"
    assert kb.get_pipeline("nope", NS) is None
    kb.create_pipeline("another", NS, SPEC)
    assert [o["metadata"]["name"] for o in kb.list_pipelines(NS)] == ["another", "demo"]
    kb.delete_pipeline("demo", NS)
    assert kb.get_pipeline("demo", NS) is None
    with pytest.raises(ValueError, match="not found"):
        kb.delete_pipeline("demo", NS)


def test_namespace_defaults_to_the_context(cluster: Cluster) -> None:
    assert kb.current_namespace() == "default" and kb.current_namespace("x") == "x"
    kb.create_pipeline("here", None, SPEC)
    assert kb.get_pipeline("here", "default") is not None


def test_stage_pods_master_first(cluster: Cluster) -> None:
    kb.create_pipeline("demo", NS, SPEC)
    for name, rtype, index in (("demo-prealign-worker-1", "worker", "1"), ("demo-prealign-master-0", "master", "0"),
                               ("demo-prealign-worker-0", "worker", "0"), ("other-master-0", "master", "0")):
        job = "other" if name.startswith("other") else "demo-prealign"
        cluster.core.create_namespaced_pod(NS, {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": name, "namespace": NS, "labels": {pytorchjob.JOB_NAME_LABEL: job, pytorchjob.REPLICA_TYPE_LABEL: rtype,
                                                      pytorchjob.REPLICA_INDEX_LABEL: index}},
            "spec": {"containers": [{"name": "pytorch", "image": "x"}]}})
    assert kb.stage_pods("demo", NS, "prealign") == [
        "demo-prealign-master-0", "demo-prealign-worker-0", "demo-prealign-worker-1"]


def test_no_kube_context_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(kb.KubeConfigError, match="--local"):
        kb.list_pipelines(NS)


def test_pod_logs_yields_lines(cluster: Cluster) -> None:
    path = f"/api/v1/namespaces/{NS}/pods/demo-prealign-master-0/log"

    def react() -> None:
        assert cluster.emulator.kmock is not None
        cluster.emulator.kmock[f"get {path}"] << b"step 1 loss 2.5\nstep 2 loss 2.1\npartial"

    cluster.emulator.call(react)
    assert list(kb.pod_logs("demo-prealign-master-0", NS, follow=False)) == [
        "step 1 loss 2.5", "step 2 loss 2.1", "partial"]
