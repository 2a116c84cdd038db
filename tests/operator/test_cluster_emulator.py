"""The cluster emulator itself: the v1.9 controller rules as data, then pods that really run.

The rules are checked against kubeflow/training-operator@v1.9.0 (../shared/reference/
kubeflow-pytorchjob.md sections 1.3-1.10); the kubelet part starts real processes (tiny
`python -c` commands) and reads their logs through the API, as kubectl would.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.cluster_emulator import (
    FINALIZER,
    ClusterEmulator,
    conditions,
    injected_env,
    new_pod,
    reconcile,
    running_cluster,
    set_condition,
)
from support.kube_emulator import Emulator
from support.operator_harness import NS, Cluster, wait_for

T0 = 1_700_000_000.0


def job(nproc: str | None = "2", workers: int | None = 1, policy: str = "ExitCode", command: list[str] | None = None,
        **run: Any) -> dict[str, Any]:
    template = {"spec": {"containers": [{"name": "pytorch", "image": "ignored",
                                         "command": command or ["python", "-c", "pass"]}],
                         "terminationGracePeriodSeconds": 30}}
    specs: dict[str, Any] = {"Master": {"replicas": 1, "restartPolicy": policy, "template": template}}
    if workers:
        specs["Worker"] = {"replicas": workers, "restartPolicy": policy, "template": copy.deepcopy(template)}
    spec: dict[str, Any] = {"runPolicy": {"cleanPodPolicy": "Running", **run}, "pytorchReplicaSpecs": specs}
    if nproc is not None:
        spec["nprocPerNode"] = nproc
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
            "metadata": {"name": "j", "namespace": NS, "uid": "uid-j"}, "spec": spec}


def pod(name: str, rtype: str, index: int, phase: str, code: int | None = None, **meta: Any) -> dict[str, Any]:
    state = {"terminated": {"exitCode": code}} if code is not None else {"running": {}}
    return {"metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", **meta,
                         "labels": {"training.kubeflow.org/replica-type": rtype,
                                    "training.kubeflow.org/replica-index": str(index)}},
            "status": {"phase": phase, "containerStatuses": [{"name": "pytorch", "restartCount": 0, "state": state}]}}


def env_of(job_: dict[str, Any], rtype: str, index: int) -> dict[str, str]:
    from support.cluster_emulator import defaulted

    return {e["name"]: e["value"] for e in injected_env(defaulted(job_), rtype, index)}


# -- the injected env (envvar.go, master.go), from the reference table (section 1.10) ---------

@pytest.mark.parametrize(("nproc", "workers", "rtype", "index", "expected"), [
    ("2", 1, "Master", 0, {"WORLD_SIZE": "4", "RANK": "0", "PET_NODE_RANK": "0", "PET_NNODES": "2",
                           "PET_NPROC_PER_NODE": "2"}),
    ("2", 1, "Worker", 0, {"WORLD_SIZE": "4", "RANK": "1", "PET_NODE_RANK": "1", "PET_NNODES": "2"}),
    ("8", 3, "Worker", 2, {"WORLD_SIZE": "32", "RANK": "3", "PET_NODE_RANK": "3", "PET_NNODES": "4"}),
    ("auto", 1, "Worker", 0, {"WORLD_SIZE": "2", "RANK": "1", "PET_NPROC_PER_NODE": "auto", "PET_NNODES": "2"}),
    ("gpu", 3, "Master", 0, {"WORLD_SIZE": "4", "RANK": "0", "PET_NPROC_PER_NODE": "gpu", "PET_NNODES": "4"}),
    (None, 1, "Worker", 0, {"WORLD_SIZE": "2", "PET_NPROC_PER_NODE": "auto"}),  # defaulted to auto
    ("4", None, "Master", 0, {"WORLD_SIZE": "4", "RANK": "0", "PET_NNODES": "1", "PET_NPROC_PER_NODE": "4"}),
])
def test_injected_env_follows_v1_9(nproc, workers, rtype, index, expected) -> None:  # noqa: ANN001
    env = env_of(job(nproc, workers), rtype, index)
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["MASTER_ADDR"] == env["PET_MASTER_ADDR"] == "j-master-0"
    assert env["MASTER_PORT"] == env["PET_MASTER_PORT"] == "23456"
    assert {k: env[k] for k in expected} == expected


def test_worker_only_job_gets_no_rank_world_or_master() -> None:
    spec = job("2", 2)
    spec["spec"]["pytorchReplicaSpecs"] = {"Worker": spec["spec"]["pytorchReplicaSpecs"]["Worker"]}
    env = env_of(spec, "Worker", 1)
    assert not {"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "PET_NODE_RANK"} & set(env)
    assert env["PET_NNODES"] == "2" and env["PET_NPROC_PER_NODE"] == "2"


def test_pods_are_named_labelled_and_owned_like_v1_9() -> None:
    from support.cluster_emulator import defaulted

    master, worker = new_pod(defaulted(job()), "Master", 0), new_pod(defaulted(job()), "Worker", 0)
    assert (master["metadata"]["name"], worker["metadata"]["name"]) == ("j-master-0", "j-worker-0")
    assert master["metadata"]["labels"] == {
        "training.kubeflow.org/job-name": "j", "training.kubeflow.org/operator-name": "pytorchjob-controller",
        "training.kubeflow.org/replica-type": "master", "training.kubeflow.org/replica-index": "0",
        "training.kubeflow.org/job-role": "master"}
    assert "training.kubeflow.org/job-role" not in worker["metadata"]["labels"]
    assert master["metadata"]["ownerReferences"] == [{"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
                                                      "name": "j", "uid": "uid-j", "controller": True,
                                                      "blockOwnerDeletion": True}]
    assert master["spec"]["restartPolicy"] == "Never"  # ExitCode is not a pod policy
    assert new_pod(defaulted(job(policy="OnFailure")), "Master", 0)["spec"]["restartPolicy"] == "OnFailure"


# -- conditions (pkg/util/status.go) ---------------------------------------------------------

def test_conditions_failed_is_sticky_running_and_restarting_exclude_each_other() -> None:
    status: dict[str, Any] = {}
    set_condition(status, "Created", "True", "PyTorchJobCreated", "", "t0")
    set_condition(status, "Running", "True", "PyTorchJobRunning", "", "t1")
    set_condition(status, "Restarting", "True", "PyTorchJobRestarting", "", "t2")
    assert [c["type"] for c in status["conditions"]] == ["Created", "Restarting"]
    set_condition(status, "Running", "True", "PyTorchJobRunning", "", "t3")
    set_condition(status, "Running", "True", "PyTorchJobRunning", "again", "t4")  # unchanged: kept as is
    assert [c["type"] for c in status["conditions"]] == ["Created", "Running"]
    assert status["conditions"][-1]["lastUpdateTime"] == "t3"
    set_condition(status, "Failed", "True", "PyTorchJobFailed", "boom", "t5")
    assert conditions({"status": status}) == {"Created": "True", "Running": "False", "Failed": "True"}
    set_condition(status, "Succeeded", "True", "PyTorchJobSucceeded", "", "t6")
    assert "Succeeded" not in conditions({"status": status})


# -- reconcile as data (common/job.go, common/pod.go, pytorchjob_controller.go) ----------------

def test_a_new_job_is_created_started_and_gets_its_pods() -> None:
    plan = reconcile(job(), [], T0)
    assert [p["metadata"]["name"] for p in plan.create] == ["j-master-0", "j-worker-0"]
    assert conditions({"status": plan.status}) == {"Created": "True"}
    assert plan.status["startTime"] and plan.status["replicaStatuses"]["Worker"]["active"] == 0


def test_a_job_managed_by_another_controller_is_left_alone() -> None:
    plan = reconcile(job(managedBy="kueue.x-k8s.io/multikueue"), [], T0)
    assert plan.create == [] and plan.status == {}


def running(job_: dict[str, Any], pods: list[dict[str, Any]], now: float = T0) -> dict[str, Any]:
    status = reconcile(job_, pods, now).status
    return {**job_, "status": status}


def test_exit_code_policy_restarts_128_and_above_and_fails_1_to_127() -> None:
    j = running(job(), [pod("j-master-0", "master", 0, "Running"), pod("j-worker-0", "worker", 0, "Running")])
    assert conditions(j)["Running"] == "True"
    killed = reconcile(j, [pod("j-master-0", "master", 0, "Running"), pod("j-worker-0", "worker", 0, "Failed", 137)],
                       T0 + 1)
    assert killed.delete == ["j-worker-0"] and not killed.create
    assert conditions({"status": killed.status}) == {"Created": "True", "Restarting": "True"}
    broken = reconcile(j, [pod("j-master-0", "master", 0, "Failed", 2), pod("j-worker-0", "worker", 0, "Running")],
                       T0 + 1)
    assert conditions({"status": broken.status})["Failed"] == "True" and "j-master-0" not in broken.delete
    after = reconcile({**j, "status": broken.status},
                      [pod("j-master-0", "master", 0, "Failed", 2), pod("j-worker-0", "worker", 0, "Running")], T0 + 2)
    assert after.delete == ["j-worker-0"]  # finished: cleanPodPolicy Running deletes the running worker


def test_never_fails_the_job_on_any_failed_pod_and_on_failure_restarts_it() -> None:
    pods = [pod("j-master-0", "master", 0, "Running"), pod("j-worker-0", "worker", 0, "Failed", 143)]
    never = reconcile(running(job(policy="Never"), pods[:1]), pods, T0)
    assert conditions({"status": never.status})["Failed"] == "True" and never.status["completionTime"]
    on_failure = reconcile(running(job(policy="OnFailure"), pods[:1]), pods, T0)
    assert on_failure.delete == ["j-worker-0"] and "Failed" not in conditions({"status": on_failure.status})


def test_backoff_limit_counts_in_place_restarts_and_zero_fails_the_first_failure() -> None:
    restarted = pod("j-master-0", "master", 0, "Running")
    restarted["status"]["containerStatuses"][0]["restartCount"] = 3
    plan = reconcile(running(job(policy="OnFailure", backoffLimit=3), []), [restarted], T0)
    assert "reached the specified backoff limit" in plan.status["conditions"][-1]["message"]
    assert plan.delete == ["j-master-0"]  # an unfinished job loses all its pods
    zero = reconcile(running(job(backoffLimit=0), []), [pod("j-master-0", "master", 0, "Failed", 137)], T0)
    assert conditions({"status": zero.status})["Failed"] == "True"
    # with a limit above 0, v1.9 re-creates ExitCode pods (restartCount 0) without bound
    again = reconcile(running(job(backoffLimit=1), []), [pod("j-master-0", "master", 0, "Failed", 137)], T0)
    assert "Failed" not in conditions({"status": again.status}) and again.delete == ["j-master-0"]


def test_master_success_completes_the_job_even_with_a_worker_running() -> None:
    pods = [pod("j-master-0", "master", 0, "Succeeded", 0), pod("j-worker-0", "worker", 0, "Running")]
    plan = reconcile(running(job(), []), pods, T0)
    assert conditions({"status": plan.status})["Succeeded"] == "True" and plan.status["completionTime"]
    done = reconcile({**job(), "status": plan.status}, pods, T0 + 1)
    assert done.delete == ["j-worker-0"]
    assert done.status["replicaStatuses"]["Worker"] == {**plan.status["replicaStatuses"]["Worker"],
                                                       "active": 0, "succeeded": 1}
    kept = reconcile({**job(cleanPodPolicy="None"), "status": plan.status}, pods, T0 + 1)
    assert kept.delete == []


def test_suspend_deletes_the_pods_and_resume_resets_the_start_time() -> None:
    pods = [pod("j-master-0", "master", 0, "Running"), pod("j-worker-0", "worker", 0, "Running")]
    j = running(job(), pods)
    suspended = reconcile({**j, "spec": {**j["spec"], "runPolicy": {"suspend": True}}}, pods, T0 + 5)
    assert sorted(suspended.delete) == ["j-master-0", "j-worker-0"]
    assert conditions({"status": suspended.status}) == {"Created": "True", "Running": "False", "Suspended": "True"}
    resumed = reconcile({**j, "status": suspended.status}, [], T0 + 60)
    assert conditions({"status": resumed.status})["Suspended"] == "False"
    assert resumed.status["startTime"] == "2023-11-14T22:14:20Z" != j["status"]["startTime"]
    assert len(resumed.create) == 2


def test_active_deadline_fails_the_job_and_ttl_deletes_it() -> None:
    pods = [pod("j-master-0", "master", 0, "Running")]
    j = running(job(workers=None, activeDeadlineSeconds=10, ttlSecondsAfterFinished=30), pods)
    assert not reconcile(j, pods, T0 + 9).delete
    late = reconcile(j, pods, T0 + 10)
    assert "active longer than specified deadline" in late.status["conditions"][-1]["message"]
    assert late.delete == ["j-master-0"] and not late.delete_job
    assert reconcile({**j, "status": late.status}, [], T0 + 40).delete_job


# -- pods that run ----------------------------------------------------------------------------

@pytest.fixture
def emulated(emulator: Emulator, cluster: Cluster, tmp_path: Path) -> Iterator[ClusterEmulator]:
    kubeconfig = emulator.write_kubeconfig(tmp_path / "kubeconfig-node", NS)
    with running_cluster(emulator, kubeconfig, tmp_path / "node", max_grace_s=2, interval_s=0.05) as c:
        yield c
    assert not c.errors, c.errors


def submit(c: ClusterEmulator, body: dict[str, Any]) -> None:
    body = copy.deepcopy(body)
    body["metadata"].pop("uid", None)
    c.custom.create_namespaced_custom_object("kubeflow.org", "v1", NS, "pytorchjobs", body)


def until(c: ClusterEmulator, name: str, condition: str, timeout: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        found = c.job(name, NS)
        return found if conditions(found).get(condition) == "True" else None

    return wait_for(check, timeout=timeout, what=f"PyTorchJob {name} {condition}")


def logged(c: ClusterEmulator, pod_: str, text: str) -> bool:
    """Whether the pod's log (read through the API) has `text` yet; False while it has no log."""
    import kubernetes

    try:
        return text in c.log(pod_, NS)
    except kubernetes.client.ApiException as err:
        if err.status in (400, 404):  # not created yet / container waiting to start
            return False
        raise


PRINT_ENV = ("import os; print(' '.join(f'{k}={os.environ.get(k)}' for k in ('RANK', 'WORLD_SIZE', "
             "'MASTER_ADDR', 'MASTER_PORT', 'PET_MASTER_PORT', 'POD', 'POD_NS', 'SECRET', 'AWS_SECRET_ACCESS_KEY')))")


def test_pods_run_with_the_injected_env_secrets_and_field_refs(emulated: ClusterEmulator, cluster: Cluster,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "the-test-process-own")
    body = job(command=["python", "-c", PRINT_ENV])
    for rspec in body["spec"]["pytorchReplicaSpecs"].values():
        rspec["template"]["spec"]["containers"][0]["env"] = [
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}}]
    submit(emulated, body)
    waiting = wait_for(lambda: (p := emulated.pod("j-master-0", NS)) and p["status"]["containerStatuses"][0]["state"]
                       .get("waiting"), what="the master waiting for its Secret")
    assert waiting == {"reason": "CreateContainerConfigError", "message": 'secret "creds" not found'}
    cluster.create_secret("creds", {"token": "s3cr3t"})
    done = until(emulated, "j", "Succeeded")
    assert done["status"]["replicaStatuses"]["Master"]["succeeded"] == 1
    logs = {name: emulated.log(name, NS) for name in ("j-master-0", "j-worker-0")}
    master, worker = (dict(kv.split("=", 1) for kv in logs[n].split()) for n in ("j-master-0", "j-worker-0"))
    assert (master["RANK"], worker["RANK"], master["WORLD_SIZE"]) == ("0", "1", "4")
    assert master["MASTER_ADDR"] == worker["MASTER_ADDR"] == "127.0.0.1"  # no cluster DNS
    assert master["MASTER_PORT"] == worker["PET_MASTER_PORT"] != "23456"  # one free port per job
    assert (master["POD"], master["POD_NS"], master["SECRET"]) == ("j-master-0", NS, "s3cr3t")
    assert master["AWS_SECRET_ACCESS_KEY"] == "None"  # the test's own credentials never leak into pods
    status = emulated.pod("j-master-0", NS)["status"]
    assert status["phase"] == "Succeeded"
    assert status["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    events = [e["reason"] for e in cluster.events("j")]
    assert "ExitedWithCode" in events and "PyTorchJobSucceeded" in events


FLAKY = ("import os, pathlib, sys; marker = pathlib.Path(os.environ['MARKER']); "
         "first = not marker.exists(); marker.touch(); print('attempt', 'first' if first else 'again'); "
         "sys.exit(int(os.environ['CODE']) if first else 0)")


def flaky(tmp_path: Path, code: int, policy: str = "ExitCode") -> dict[str, Any]:
    body = job(workers=None, policy=policy, command=["python", "-c", FLAKY])
    body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "MARKER", "value": str(tmp_path / f"ran-{code}-{policy}")}, {"name": "CODE", "value": str(code)}]
    return body


def test_exit_code_restarts_a_retryable_exit_in_a_new_pod(emulated: ClusterEmulator, cluster: Cluster,
                                                          tmp_path: Path) -> None:
    submit(emulated, flaky(tmp_path, 143))
    done = until(emulated, "j", "Succeeded")
    reasons = [e["reason"] for e in cluster.events("j")]
    assert "PyTorchJobRestarting" in reasons and "Failed" not in conditions(done)
    assert [code for _, p, code in emulated.kubelet.exits if p == "j-master-0"] == [143, 0]
    assert emulated.log("j-master-0", NS).strip() == "attempt again"  # a new pod, a new log


def test_exit_code_fails_a_permanent_exit_at_once_and_keeps_the_pod(emulated: ClusterEmulator, tmp_path: Path) -> None:
    body = flaky(tmp_path, 2)
    body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0][
        "terminationMessagePolicy"] = "FallbackToLogsOnError"
    submit(emulated, body)
    failed = until(emulated, "j", "Failed")
    assert 'is failing because "Master" replica(s) failed' in failed["status"]["conditions"][-1]["message"]
    master = emulated.pod("j-master-0", NS)
    assert master["status"]["phase"] == "Failed" and not master["metadata"].get("deletionTimestamp")
    terminated = master["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 2
    assert terminated["message"] == "attempt first\n"  # FallbackToLogsOnError: the log's tail
    assert [code for _, p, code in emulated.kubelet.exits if p == "j-master-0"] == [2]


def test_on_failure_restarts_in_place_and_previous_log_is_kept(emulated: ClusterEmulator, tmp_path: Path) -> None:
    submit(emulated, flaky(tmp_path, 1, policy="OnFailure"))
    until(emulated, "j", "Succeeded")
    status = emulated.pod("j-master-0", NS)["status"]["containerStatuses"][0]
    assert status["restartCount"] == 1 and status["lastState"]["terminated"]["exitCode"] == 1
    assert emulated.log("j-master-0", NS).strip() == "attempt again"
    previous = emulated.core.read_namespaced_pod_log("j-master-0", NS, container="pytorch", previous=True)
    assert previous.strip() == "attempt first"


TRAP = ("import signal, sys, time; "
        "signal.signal(signal.SIGTERM, lambda *_: (print('SIGTERM: saving', flush=True), sys.exit(143))) "
        "if sys.argv[1] == 'polite' else signal.signal(signal.SIGTERM, lambda *_: print('ignored', flush=True)); "
        "print('ready', flush=True); time.sleep(600)")


def test_deleting_a_job_sigterms_each_pod_then_sigkills_after_the_grace(emulated: ClusterEmulator) -> None:
    body = job(workers=1, command=["python", "-c", TRAP, "polite"])
    body["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["command"][-1] = "stubborn"
    submit(emulated, body)
    for name in ("j-master-0", "j-worker-0"):
        wait_for(lambda n=name: logged(emulated, n, "ready"), what=f"{name} ready")
    held = emulated.pod("j-master-0", NS)
    assert FINALIZER in held["metadata"]["finalizers"] and held["spec"]["nodeName"]
    t0 = time.monotonic()
    emulated.custom.delete_namespaced_custom_object("kubeflow.org", "v1", NS, "pytorchjobs", "j")
    wait_for(lambda: not emulated.pods(NS), timeout=30, what="both pods gone (garbage-collected, then stopped)")
    exits = dict((p, code) for _, p, code in emulated.kubelet.exits)
    assert exits == {"j-master-0": 143, "j-worker-0": 137}  # SIGTERM honoured; SIGKILL after the 2 s grace
    assert time.monotonic() - t0 >= 2
    assert emulated.kubelet.containers == {}  # released: nothing left on the node


def test_kill_pod_is_a_node_loss_and_exit_code_recreates_the_pod(emulated: ClusterEmulator, cluster: Cluster) -> None:
    submit(emulated, job(workers=1, command=["python", "-c", TRAP, "polite"]))
    wait_for(lambda: logged(emulated, "j-worker-0", "ready"), what="the worker ready")
    first = emulated.pod("j-worker-0", NS)["metadata"]["uid"]
    emulated.kill_pod("j-worker-0", NS)
    wait_for(lambda: (p := emulated.pod("j-worker-0", NS)) and p["metadata"]["uid"] != first
             and p["status"].get("phase") == "Running", what="a new worker pod running")
    assert ("ml", "j-worker-0", 137) in emulated.kubelet.exits
    assert "PyTorchJobRestarting" in [e["reason"] for e in cluster.events("j")]
    assert conditions(emulated.job("j", NS))["Running"] == "True"


def test_suspend_stops_the_pods_and_resume_starts_them_again(emulated: ClusterEmulator) -> None:
    submit(emulated, job(workers=None, command=["python", "-c", TRAP, "polite"]))
    running_job = until(emulated, "j", "Running")
    emulated.custom.patch_namespaced_custom_object("kubeflow.org", "v1", NS, "pytorchjobs", "j",
                                                   {"spec": {"runPolicy": {"suspend": True}}})
    until(emulated, "j", "Suspended")
    wait_for(lambda: not emulated.pods(NS), what="the pods deleted on suspend")
    assert ("ml", "j-master-0", 143) in emulated.kubelet.exits
    time.sleep(1.1)  # startTime has a resolution of one second: let it move
    emulated.custom.patch_namespaced_custom_object("kubeflow.org", "v1", NS, "pytorchjobs", "j",
                                                   {"spec": {"runPolicy": {"suspend": False}}})
    resumed = until(emulated, "j", "Running")
    assert conditions(resumed)["Suspended"] == "False"
    assert resumed["status"]["startTime"] > running_job["status"]["startTime"]


def test_active_deadline_fails_the_job_and_stops_its_pods(emulated: ClusterEmulator) -> None:
    submit(emulated, job(workers=None, command=["python", "-c", TRAP, "polite"], activeDeadlineSeconds=2))
    failed = until(emulated, "j", "Failed")
    assert "active longer than specified deadline" in failed["status"]["conditions"][-1]["message"]
    wait_for(lambda: not emulated.pods(NS), what="the pods deleted at the deadline")


def test_pod_log_follow_streams_until_the_container_ends(emulated: ClusterEmulator) -> None:
    script = "import time\nfor i in range(3):\n    print('line', i, flush=True); time.sleep(0.3)"
    submit(emulated, job(workers=None, command=["python", "-c", script]))
    wait_for(lambda: (p := emulated.pod("j-master-0", NS)) and p["status"].get("phase") == "Running",
             what="the master running")
    from eve_operator.backends import kubernetes as kb

    lines = list(kb.pod_logs("j-master-0", NS, follow=True))
    assert lines == ["line 0", "line 1", "line 2"]
    tail = emulated.core.read_namespaced_pod_log("j-master-0", NS, container="pytorch", tail_lines=1)
    assert tail == "line 2\n"
