"""The operator with jobApi: TrainJob against kmock's emulator and a real S3 server: the tests play
Trainer v2's part (TrainJob status, the node pods' exit codes) and Kueue's (admission)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_harness import NS, Cluster, Operator, base_spec, running_operator, wait_for, write_export
from fixtures.stage_config import master_config

from eve_operator import metrics
from eve_operator.backends import kubernetes as kb

TJ = ("trainer.kubeflow.org", "v1alpha1")


@pytest.fixture
def operator(cluster: Cluster, s3_env: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Operator]:
    """The operator with Trainer v2 support on (chart value trainJob.enabled)."""
    monkeypatch.setenv("EVE_TRAINJOB_RUNTIME", "eve-torch")
    with running_operator() as op:  # handlers.configure registers the TrainJob watch
        yield op


def spec(output: str, **extra: Any) -> dict[str, Any]:
    return base_spec(output, jobApi="TrainJob", **extra)


def trainjobs(cluster: Cluster) -> dict[str, dict[str, Any]]:
    items = cluster.custom.list_namespaced_custom_object(*TJ, NS, "trainjobs")["items"]
    return {j["metadata"]["name"]: j for j in items}


def set_condition(cluster: Cluster, job: str, type_: str, reason: str, message: str = "") -> None:
    """What Trainer writes: Complete or Failed (with the JobSet's reason and message)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    cluster.custom.patch_namespaced_custom_object_status(*TJ, NS, "trainjobs", job, {"status": {
        "conditions": [{"type": type_, "status": "True", "reason": reason, "message": message,
                        "lastTransitionTime": now}],
        "jobsStatus": [{"name": "node", "active": 0, "ready": 0, "failed": int(type_ == "Failed"),
                        "succeeded": int(type_ == "Complete"), "suspended": 0}]}})


def wait_passes(n: int = 2) -> None:
    target = metrics.RECONCILES.total() + n
    wait_for(lambda: metrics.RECONCILES.total() >= target, what=f"{n} more reconcile passes")


def test_stages_chain_through_trainjobs(cluster: Cluster, operator: Operator, output: str, tmp_path: Path) -> None:
    cluster.create_pipeline("tj", spec(output))
    job = wait_for(lambda: trainjobs(cluster).get("tj-prealign"), what="the prealign TrainJob")
    assert job["spec"]["runtimeRef"]["name"] == "eve-torch" and job["metadata"]["ownerReferences"][0]["name"] == "tj"
    assert cluster.jobs() == {}, "no PyTorchJob"
    cluster.custom.patch_namespaced_custom_object_status(*TJ, NS, "trainjobs", "tj-prealign", {"status": {
        "jobsStatus": [{"name": "node", "active": 1, "ready": 1, "failed": 0, "succeeded": 0, "suspended": 0}]}})
    wait_for(lambda: cluster.status("tj")["stages"][0]["state"] == "Running", what="prealign running")
    for index in (1, 0):  # what JobSet creates: one pod per node, labelled with the node index
        cluster.core.create_namespaced_pod(NS, {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": f"tj-prealign-node-0-{index}-abcde", "namespace": NS,
            "labels": {"jobset.sigs.k8s.io/jobset-name": "tj-prealign",
                       "batch.kubernetes.io/job-completion-index": str(index)}},
            "spec": {"containers": [{"name": "node", "image": "trainer"}]}})
    assert kb.stage_pods("tj", NS, "prealign") == ["tj-prealign-node-0-0-abcde", "tj-prealign-node-0-1-abcde"]
    export = write_export(output, "tj", "prealign", tmp_path)
    set_condition(cluster, "tj-prealign", "Complete", "AllJobsCompleted", "jobset completed successfully")
    nxt = wait_for(lambda: trainjobs(cluster).get("tj-pretrain"), what="the pretrain TrainJob")
    assert master_config(nxt)["init_from"] == export


def test_exit_2_on_a_node_pod_fails_the_pipeline_at_once(cluster: Cluster, operator: Operator, output: str) -> None:
    cluster.create_pipeline("bad", spec(output))  # maxAttempts: 2
    wait_for(lambda: "bad-prealign" in trainjobs(cluster))
    pod = cluster.core.create_namespaced_pod(NS, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "bad-prealign-node-0-1-x7k2p", "namespace": NS,
                     "labels": {"jobset.sigs.k8s.io/jobset-name": "bad-prealign"}},
        "spec": {"containers": [{"name": "node", "image": "trainer"}]}})
    cluster.core.patch_namespaced_pod_status(pod.metadata.name, NS, {"status": {"phase": "Failed", "containerStatuses": [
        {"name": "node", "image": "trainer", "imageID": "", "ready": False, "restartCount": 0,
         "state": {"terminated": {"exitCode": 2, "reason": "Error"}}}]}})
    set_condition(cluster, "bad-prealign", "Failed", "FailJobSetFailurePolicyAction",
                  "jobset failed due to FailJobSet action of failure policy rule trainerExitCode")
    status = wait_for(lambda: cluster.status("bad") if cluster.status("bad")["phase"] == "Failed" else None)
    assert "exited with 2" in status["message"] and "FailJobSetFailurePolicyAction" in status["message"]
    assert sorted(trainjobs(cluster)) == ["bad-prealign"]


def test_a_retryable_failure_starts_a_new_attempt(cluster: Cluster, operator: Operator, output: str) -> None:
    cluster.create_pipeline("flaky", spec(output))
    wait_for(lambda: "flaky-prealign" in trainjobs(cluster))
    set_condition(cluster, "flaky-prealign", "Failed", "ReachedMaxRestarts",
                  "jobset failed due to reaching max number of restarts")
    retry = wait_for(lambda: trainjobs(cluster).get("flaky-prealign-r2"), what="attempt 2")
    assert retry["metadata"]["labels"]["eve-platform.io/attempt"] == "2"


def test_kueue_admits_and_the_operator_never_fights_it(cluster: Cluster, operator: Operator, output: str) -> None:
    cluster.create_pipeline("queued", spec(output, scheduling={"gangScheduler": "kueue", "queue": "team-a"}))
    job = wait_for(lambda: trainjobs(cluster).get("queued-prealign"))
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a" and job["spec"]["suspend"] is True
    wait_passes(2)  # queued: the operator must not un-suspend what Kueue has not admitted
    assert trainjobs(cluster)["queued-prealign"]["spec"]["suspend"] is True
    status = cluster.status("queued")  # queued by Kueue reads as waiting, not as suspended by the user
    assert status["phase"] == "Running" and status["stages"][0]["state"] not in ("Suspended", "Failed")
    # Kueue admits: its own runtimePatches entry, then un-suspend
    kueue_patch = {"manager": "kueue.x-k8s.io/manager", "trainingRuntimeSpec": {"template": {"spec": {
        "replicatedJobs": [{"name": "node", "template": {"spec": {"template": {"spec": {
            "nodeSelector": {"cloud.google.com/gke-nodepool": "a100"}}}}}}]}}}}
    patches = [*job["spec"]["runtimePatches"], kueue_patch]
    cluster.custom.patch_namespaced_custom_object(*TJ, NS, "trainjobs", "queued-prealign",
                                                  {"spec": {"runtimePatches": patches, "suspend": False}})
    wait_passes(3)
    admitted = trainjobs(cluster)["queued-prealign"]["spec"]
    assert admitted["suspend"] is False and admitted["runtimePatches"] == patches
    assert "Suspended" not in cluster.reasons("queued")


def test_suspend_and_resume_patch_spec_suspend(cluster: Cluster, operator: Operator, output: str) -> None:
    cluster.create_pipeline("pause", spec(output))
    wait_for(lambda: "pause-prealign" in trainjobs(cluster))
    cluster.patch_spec("pause", {"suspend": True})
    wait_for(lambda: trainjobs(cluster)["pause-prealign"]["spec"]["suspend"] is True, what="suspended")
    cluster.patch_spec("pause", {"suspend": False})
    wait_for(lambda: trainjobs(cluster)["pause-prealign"]["spec"]["suspend"] is False, what="resumed")


def test_deleting_the_pipeline_deletes_its_trainjobs(cluster: Cluster, operator: Operator, output: str) -> None:
    cluster.create_pipeline("gone", spec(output))
    wait_for(lambda: "gone-prealign" in trainjobs(cluster))
    cluster.delete_pipeline("gone")
    wait_for(lambda: "gone-prealign" not in trainjobs(cluster), what="the TrainJob deleted")


def test_trainjob_without_trainer_v2_support_fails_naming_the_chart_value(cluster: Cluster, s3_env: Any,
                                                                         output: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EVE_TRAINJOB_RUNTIME", raising=False)
    with running_operator():
        cluster.create_pipeline("nov2", spec(output))
        status = wait_for(lambda: cluster.status("nov2") if cluster.status("nov2").get("phase") == "Failed" else None)
    assert "spec.jobApi" in status["message"] and "trainJob.enabled=true" in status["message"]
    assert trainjobs(cluster) == {} and cluster.jobs() == {}
