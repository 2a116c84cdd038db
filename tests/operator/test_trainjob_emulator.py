"""Trainer v2 in the emulated cluster (trainjob_emulator.py): the controller rules as data, then
TrainJobs from the operator's builder on the chart's ClusterTrainingRuntime, with pods that run.

The operator's own reading of TrainJob status (eve_operator.trainjob.job_state) is checked
against every status the emulated controller writes.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.kube_emulator import Emulator
from support.operator_harness import NS, Cluster, wait_for
from support.trainjob_emulator import (
    COMPLETION_INDEX,
    RESTART_ATTEMPT,
    TrainerCluster,
    TrainJobError,
    node_pods,
    reconcile,
    running_trainer_cluster,
)

from eve_contract.naming import job_name
from eve_operator.jobspec import build_job_spec
from eve_operator.pipeline import SubmitJob
from eve_operator.spec import PipelineSpec
from eve_operator.trainjob import build_trainjob, job_state, pod_selector

ROOT = Path(__file__).resolve().parents[2]
NOW = "2026-01-01T00:00:00Z"


@pytest.fixture(scope="module")
def runtime() -> dict[str, Any]:
    """The chart's ClusterTrainingRuntime, rendered by helm (maxRestarts 1)."""
    from support.deploy_support import Helm, tool

    binary, why = tool("helm")
    if binary is None:
        pytest.skip(f"helm is not available: {why}")
    objs = Helm(binary).template("--set", "trainJob.enabled=true", "--set", "trainJob.runtime.maxRestarts=1",
                                 "--set", "scheduling.gangScheduler=none")
    (obj,) = [o for o in objs if o["kind"] == "ClusterTrainingRuntime"]
    return obj


def trainjob(nodes: int = 2, command: list[str] | None = None, **spec: Any) -> dict[str, Any]:
    pspec = PipelineSpec.model_validate({
        "output": "s3://ckpt/eve", "jobApi": "TrainJob", "s3": {"credentialsSecret": "eve-s3"},
        "overrides": {"global_batch_size": 12, "micro_batch_size": 1},
        "resources": {"nodes": nodes, "gpusPerNode": 0, "nprocPerNode": 2, "cpu": 1, "memory": "1Gi",
                      "shmSize": "64Mi"}, "scheduling": {"gangScheduler": "none"}, **spec})
    job = build_trainjob(build_job_spec("tj", pspec, SubmitJob("prealign", 1, job_name("tj", "prealign", 1),
                                                               None, None)), namespace=NS)
    if command is not None:
        job["spec"]["trainer"]["command"] = command
    job["metadata"]["uid"] = "uid-tj"
    return job


def pod(p: dict[str, Any], code: int | None) -> dict[str, Any]:
    """A node pod as the kubelet reports it: running, or ended with `code`."""
    state = {"running": {}} if code is None else {"terminated": {"exitCode": code}}
    phase = "Running" if code is None else ("Succeeded" if code == 0 else "Failed")
    return {**p, "status": {"phase": phase, "containerStatuses": [{"name": "node", "state": state}]}}


# -- the rules as data ------------------------------------------------------------------------

def test_pods_are_jobset_named_one_per_node_with_the_torch_plugin_env(runtime: dict[str, Any]) -> None:
    pods = node_pods(trainjob(3), runtime)
    assert [p["metadata"]["name"].rsplit("-", 1)[0] for p in pods] == [f"tj-prealign-node-0-{i}" for i in range(3)]
    for i, p in enumerate(pods):
        labels = p["metadata"]["labels"]
        assert labels["jobset.sigs.k8s.io/jobset-name"] == "tj-prealign" and labels[COMPLETION_INDEX] == str(i)
        assert pod_selector("tj-prealign") == f"jobset.sigs.k8s.io/jobset-name={labels['jobset.sigs.k8s.io/jobset-name']}"
        env = {e["name"]: e for e in p["spec"]["containers"][0]["env"]}
        assert {k: env[k].get("value") for k in ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_MASTER_ADDR",
                                                   "PET_MASTER_PORT")} == {
            "PET_NNODES": "3", "PET_NPROC_PER_NODE": "2", "PET_MASTER_ADDR": "tj-prealign-node-0-0.tj-prealign",
            "PET_MASTER_PORT": "29500"}
        assert env["PET_NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == \
            "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        assert p["metadata"]["annotations"][COMPLETION_INDEX] == str(i)
        assert p["metadata"]["ownerReferences"][0]["kind"] == "TrainJob"


def test_the_webhook_rules_our_jobs_must_pass(runtime: dict[str, Any]) -> None:
    job = trainjob()
    job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0][
        "template"]["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "X", "value": "1"}]
    with pytest.raises(TrainJobError, match="must not have envs"):
        node_pods(job, runtime)
    job = trainjob()
    job["spec"]["trainer"]["env"].append({"name": "PET_NODE_RANK", "value": "0"})
    with pytest.raises(TrainJobError, match="reserved envs"):
        node_pods(job, runtime)
    job = trainjob()
    job["metadata"]["name"] = "x" * 49  # 49 + len("-node-0-1-abcde") = 64
    with pytest.raises(TrainJobError, match="longer than 63"):
        node_pods(job, runtime)


def _step(job: dict[str, Any], pods: list[dict[str, Any]], runtime: dict[str, Any], restarts: int = 0):  # noqa: ANN202
    plan = reconcile(job, pods, runtime, restarts, NOW)
    job = {**job, "status": plan.status}
    return plan, job, job_state(job)


def test_a_permanent_exit_fails_at_once_and_keeps_the_pod(runtime: dict[str, Any]) -> None:
    job = trainjob()
    plan, job, state = _step(job, [], runtime)
    assert len(plan.create) == 2 and state == ("Pending", "waiting for 2 node pod(s) to start", None)
    pods = plan.create
    plan, job, state = _step(job, [pod(pods[0], None), pod(pods[1], None)], runtime)
    assert state == ("Running", "", None)
    plan, job, state = _step(job, [pod(pods[0], None), pod(pods[1], 2)], runtime)
    assert plan.delete == [pods[0]["metadata"]["name"]]  # the running node stops; the failed pod stays
    assert state[0] == "Failed" and state[1].startswith("FailJobSetFailurePolicyAction: ")


def test_a_retryable_exit_restarts_every_node_then_reaches_max_restarts(runtime: dict[str, Any]) -> None:
    job = trainjob()
    pods = reconcile(job, [], runtime, 0, NOW).create
    plan, job, state = _step(job, [pod(pods[0], None), pod(pods[1], 143)], runtime)
    assert plan.restarts == 1 and sorted(plan.delete) == sorted(p["metadata"]["name"] for p in pods)
    assert state == ("Running", "restarting: 1 node pod(s) failed; the JobSet restarts every node", None)
    old = [pod(pods[0], 137), pod(pods[1], 143)]
    plan, job, _ = _step(job, old, runtime, restarts=1)
    again = plan.create
    assert {p["metadata"]["labels"][RESTART_ATTEMPT] for p in again} == {"1"}
    assert not {p["metadata"]["name"] for p in again} & {p["metadata"]["name"] for p in pods}
    plan, job, state = _step(job, old + [pod(again[0], 137), pod(again[1], None)], runtime, restarts=1)
    assert state[0] == "Failed" and state[1].startswith("ReachedMaxRestarts: ")


def test_complete_suspend_and_resume(runtime: dict[str, Any]) -> None:
    job = trainjob()
    pods = reconcile(job, [], runtime, 0, NOW).create
    plan, done, state = _step(job, [pod(pods[0], 0), pod(pods[1], 0)], runtime)
    assert state == ("Succeeded", "", NOW)
    suspended = copy.deepcopy(job)
    suspended["spec"]["suspend"] = True
    plan, suspended, state = _step(suspended, [pod(pods[0], None), pod(pods[1], None)], runtime)
    assert len(plan.delete) == 2 and state == ("Suspended", "", None)
    suspended["spec"]["suspend"] = False
    plan, resumed, state = _step(suspended, [], runtime)
    assert {c["type"]: (c["status"], c["reason"]) for c in resumed["status"]["conditions"]} == {
        "Suspended": ("False", "Resumed")}
    assert len(plan.create) == 2 and state[0] == "Pending"


# -- pods that run -------------------------------------------------------------------------------

PROBE = ("import os, sys, pathlib; rank = os.environ['PET_NODE_RANK']; "
         "print('node', rank, os.environ['PET_NNODES'], os.environ['PET_NPROC_PER_NODE'], "
         "os.environ['PET_MASTER_ADDR'], os.environ['PET_MASTER_PORT'], os.environ['AWS_ACCESS_KEY_ID'], flush=True); "
         "mark = pathlib.Path(sys.argv[1]) / ('ran-' + rank); again = mark.exists(); mark.touch(); "
         "sys.exit(int(sys.argv[2 + int(rank)]) if not again else 0)")


@pytest.fixture
def trainer(emulator: Emulator, cluster: Cluster, tmp_path: Path, runtime: dict[str, Any]) -> Iterator[TrainerCluster]:
    cluster.create_secret("eve-s3", {"AWS_ACCESS_KEY_ID": "key-id", "AWS_SECRET_ACCESS_KEY": "secret"})
    kubeconfig = emulator.write_kubeconfig(tmp_path / "kubeconfig-node", NS)
    with running_trainer_cluster(emulator, kubeconfig, tmp_path / "node", max_grace_s=2, interval_s=0.05,
                                 runtimes={"eve-torch": runtime}) as c:
        yield c
    assert not c.errors, c.errors


def submit(c: TrainerCluster, tmp_path: Path, *codes: int) -> dict[str, Any]:
    """A 2-node TrainJob whose node i exits codes[i] on its first run, 0 after."""
    job = trainjob(2, ["python", "-c", PROBE, str(tmp_path), *map(str, codes)])
    del job["metadata"]["uid"]
    c.custom.create_namespaced_custom_object("trainer.kubeflow.org", "v1alpha1", NS, "trainjobs", job)
    return job


def until(c: TrainerCluster, state: str, timeout: float = 60) -> tuple[str, str, str | None]:
    return wait_for(lambda: s if (s := job_state(c.trainjob("tj-prealign", NS)))[0] == state else None,
                    timeout, what=f"TrainJob {state}")


def test_nodes_run_with_the_pet_env_and_complete(trainer: TrainerCluster, tmp_path: Path) -> None:
    submit(trainer, tmp_path, 0, 0)
    until(trainer, "Succeeded")
    logs = sorted(trainer.log(name, NS).strip() for name in trainer.trainjob_pods(NS, "tj-prealign"))
    # no cluster DNS: PET_MASTER_ADDR becomes 127.0.0.1 and the port one free port per job
    port = logs[0].split()[5]
    assert logs == [f"node 0 2 2 127.0.0.1 {port} key-id", f"node 1 2 2 127.0.0.1 {port} key-id"]


def test_exit_2_fails_the_trainjob_and_the_exit_code_is_on_the_pod(trainer: TrainerCluster, tmp_path: Path) -> None:
    submit(trainer, tmp_path, 0, 2)
    state = until(trainer, "Failed")
    assert state[1].startswith("FailJobSetFailurePolicyAction")
    codes = wait_for(lambda: sorted(c for p in trainer.trainjob_pods(NS, "tj-prealign").values()
                                    for s in p["status"].get("containerStatuses") or []
                                    if (c := (s["state"].get("terminated") or {}).get("exitCode")) is not None) or None,
                     what="exit codes")
    assert 2 in codes


def test_exit_143_restarts_every_node_and_then_completes(trainer: TrainerCluster, tmp_path: Path) -> None:
    submit(trainer, tmp_path, 143, 0)
    until(trainer, "Succeeded")
    attempts = {p["metadata"]["labels"][RESTART_ATTEMPT] for p in trainer.trainjob_pods(NS, "tj-prealign").values()}
    assert "1" in attempts
