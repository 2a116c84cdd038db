"""The chart's Kubeflow Trainer v2 support (trainJob.*): the ClusterTrainingRuntime validates
against the v2.3.0 CRD, the operator gets its RBAC and defaults, and a stage TrainJob merged
onto the rendered runtime (as Trainer does) gives valid, restricted Kubernetes pods."""

from __future__ import annotations

import kubernetes_validate
import pytest
from support.deploy_support import K8S_VERSION, NAMESPACE, RELEASE, ROOT, Helm, find
from support.schema_check import load_crd_schema, validate
from support.trainjob_emulator import node_pods

from eve_contract.naming import job_name
from eve_operator.jobspec import build_job_spec
from eve_operator.pipeline import SubmitJob
from eve_operator.spec import PipelineSpec
from eve_operator.trainjob import build_trainjob

VENDORED_RUNTIME = ROOT / "tests" / "operator" / "data" / "clustertrainingruntime-v2.3.0-schema.json"
ON = ("--set", "trainJob.enabled=true")


def runtime(chart: Helm, *args: str) -> dict:
    (obj,) = find(chart.template(*ON, *args), "ClusterTrainingRuntime")
    return obj


def test_off_by_default(chart: Helm) -> None:
    objs = chart.template()
    assert not find(objs, "ClusterTrainingRuntime")
    (role,) = [o for o in find(objs, "ClusterRole") if "helm.sh/hook" not in o["metadata"].get("annotations", {})]
    assert "trainer.kubeflow.org" not in {g for r in role["rules"] for g in r["apiGroups"]}


@pytest.mark.parametrize("gang", ["volcano", "scheduler-plugins", "kueue", "none"])
def test_runtime_validates_against_the_v2_3_0_schema(chart: Helm, gang: str) -> None:
    obj = runtime(chart, "--set", f"scheduling.gangScheduler={gang}", "--set", "scheduling.queue=gpu")
    validate(obj, load_crd_schema(VENDORED_RUNTIME))
    assert obj["metadata"]["name"] == "eve-torch" and "namespace" not in obj["metadata"]  # cluster-scoped
    spec = obj["spec"]
    assert spec["mlPolicy"] == {"numNodes": 1, "torch": {}}
    (node,) = spec["template"]["spec"]["replicatedJobs"]
    assert node["name"] == "node"
    assert node["template"]["metadata"]["labels"] == {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}
    pod = node["template"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["containers"][0]["name"] == "node"
    # Trainer v2 never sets schedulerName: the runtime does, for the gang scheduler it uses
    expected = {"volcano": ({"volcano": {}}, "volcano"),
                "scheduler-plugins": ({"coscheduling": {"scheduleTimeoutSeconds": 3600}}, "scheduler-plugins-scheduler"),
                "kueue": (None, None), "none": (None, None)}[gang]
    assert (spec.get("podGroupPolicy"), pod.get("schedulerName")) == expected
    annotations = (spec["template"].get("metadata") or {}).get("annotations", {})
    assert annotations == ({"scheduling.volcano.sh/queue-name": "gpu"} if gang == "volcano" else {})


def test_failure_policy_keeps_the_exit_code_contract(chart: Helm) -> None:
    spec = runtime(chart, "--set", "trainJob.runtime.maxRestarts=5")["spec"]["template"]["spec"]
    assert spec["failurePolicy"] == {"maxRestarts": 5, "rules": [
        {"name": "trainerExitCode", "action": "FailJobSet", "onJobFailureReasons": ["PodFailurePolicy"]}]}
    job = spec["replicatedJobs"][0]["template"]["spec"]
    assert job["backoffLimit"] == 0
    (rule,) = job["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["containerName"] == "node"
    assert rule["onExitCodes"]["values"] == list(range(1, 128))  # 2 = bad config; 143, 137 restart


def test_operator_gets_rbac_and_its_defaults(chart: Helm) -> None:
    objs = chart.template(*ON, "--set", "trainJob.defaultJobApi=TrainJob", "--set", "trainJob.runtime.name=eve-t")
    (role,) = [o for o in find(objs, "ClusterRole") if "helm.sh/hook" not in o["metadata"].get("annotations", {})]
    rules = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert rules[("trainer.kubeflow.org", "trainjobs")] == {"get", "list", "watch", "create", "delete", "patch"}
    assert rules[("trainer.kubeflow.org", "clustertrainingruntimes")] == {"get", "list", "watch"}
    (dep,) = find(objs, "Deployment", RELEASE)
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["EVE_JOB_API"] == "TrainJob" and env["EVE_TRAINJOB_RUNTIME"] == "eve-t"
    namespaced = chart.template(*ON, "--set", "rbac.namespaced=true")
    (ns_role,) = find(namespaced, "Role")
    assert any("trainjobs" in r["resources"] for r in ns_role["rules"])
    assert ns_role["metadata"]["namespace"] == NAMESPACE


def test_values_fail_clearly(chart: Helm) -> None:
    assert "needs trainJob.enabled=true" in chart.template_error("--set", "trainJob.defaultJobApi=TrainJob")
    assert "defaultJobApi" in chart.template_error(*ON, "--set", "trainJob.defaultJobApi=PyTorchJobs")


@pytest.mark.parametrize("gang", ["volcano", "kueue"])
def test_a_stage_trainjob_on_the_rendered_runtime_gives_valid_restricted_pods(chart: Helm, gang: str) -> None:
    rt = runtime(chart, "--set", f"scheduling.gangScheduler={gang}")
    pspec = PipelineSpec.model_validate({
        "output": "s3://ckpt/eve", "jobApi": "TrainJob", "resources": {"nodes": 2},
        "overrides": {"global_batch_size": 16, "micro_batch_size": 1},
        "s3": {"credentialsSecret": "s3-creds"}, "scheduling": {"gangScheduler": gang, "queue": "team-a"},
        "podTemplate": {"nodeSelector": {"pool": "a100"}, "volumes": [{"name": "c", "emptyDir": {}}],
                        "volumeMounts": [{"name": "c", "mountPath": "/cache"}]}})
    job = build_trainjob(build_job_spec("demo", pspec, SubmitJob("prealign", 1, job_name("demo", "prealign", 1),
                                                                 None, None)), namespace="ml")
    pods = node_pods(job, rt)
    assert [p["metadata"]["name"].rsplit("-", 1)[0] for p in pods] == ["demo-prealign-node-0-0",
                                                                         "demo-prealign-node-0-1"]
    for index, pod in enumerate(pods):
        obj = {"apiVersion": "v1", "kind": "Pod", **pod}
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"node {index}: not a valid Pod: {err.message}")
        spec = pod["spec"]
        (c,) = spec["containers"]
        env = {e["name"]: e for e in c["env"]}
        assert env["PET_NNODES"]["value"] == "2" and "fieldRef" in env["PET_NODE_RANK"]["valueFrom"]
        assert pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == str(index)
        assert env["PET_MASTER_ADDR"]["value"] == "demo-prealign-node-0-0.demo-prealign"
        assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "s3-creds"
        assert c["command"] == job["spec"]["trainer"]["command"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["restartPolicy"] == "Never"
        assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "pool": "a100"}
        assert [m["mountPath"] for m in c["volumeMounts"]] == ["/dev/shm", "/cache"]
        assert pod["metadata"]["labels"]["eve-platform.io/pipeline"] == "demo"
        assert spec.get("schedulerName") == ("volcano" if gang == "volcano" else None)
        assert spec["terminationGracePeriodSeconds"] == 300


def test_pods_of_the_runtime_alone_are_restricted(chart: Helm) -> None:
    pod = runtime(chart)["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_helm_test_checks_the_crd_of_the_default_job_api(chart: Helm) -> None:
    objs = [o for o in chart.template(*ON, "--set", "trainJob.defaultJobApi=TrainJob")
            if o["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    (role,) = find(objs, "ClusterRole")
    assert role["rules"][0]["resourceNames"] == ["evepipelines.eve-platform.io", "trainjobs.trainer.kubeflow.org"]
    (pod,) = find(objs, "Pod")
    assert [c["args"] for c in pod["spec"]["containers"]] == [["get", "crd", "trainjobs.trainer.kubeflow.org",
                                                               "-o", "name"]]
