"""The operator against kmock's emulator and a real S3 server, end to end."""

from __future__ import annotations

from pathlib import Path

from operator_harness import NS, Cluster, Operator, base_spec, running_operator, wait_for, write_export
from fixtures.stage_config import master_config

from eve_operator import metrics


def wait_passes(n: int = 2) -> None:
    """Wait until `n` more reconcile passes have finished (timer or event driven), counted by
    eve_operator_reconciles_total: whatever they were going to do is done. Each test runs one
    operator on one pipeline at the time of the call, so every pass counted is that pipeline's."""
    target = metrics.RECONCILES.total() + n
    wait_for(lambda: metrics.RECONCILES.total() >= target, what=f"{n} more reconcile passes")


def test_full_chain_prealign_pretrain_sft(cluster: Cluster, operator: Operator, output: str,
                                         tmp_path: Path) -> None:
    cluster.create_pipeline("demo", base_spec(output))
    job = wait_for(lambda: cluster.jobs().get("demo-prealign"), what="the prealign job")
    assert job["metadata"]["ownerReferences"][0]["name"] == "demo"
    assert wait_for(lambda: cluster.status("demo").get("phase") == "Running")
    for stage, nxt in (("prealign", "demo-pretrain"), ("pretrain", "demo-sft"), ("sft", None)):
        cluster.set_condition(f"demo-{stage}", "Running")
        wait_for(lambda s=stage: cluster.status("demo")["stages"][["prealign", "pretrain", "sft"].index(s)]
                 ["state"] == "Running", what=f"{stage} running")
        export = write_export(output, "demo", stage, tmp_path)
        cluster.set_condition(f"demo-{stage}", "Succeeded")
        if nxt:
            job = wait_for(lambda n=nxt: cluster.jobs().get(n), what=nxt)
            assert master_config(job)["init_from"] == export
    status = wait_for(lambda: cluster.status("demo") if cluster.status("demo").get("phase") == "Succeeded" else None,
                      what="pipeline Succeeded")
    assert [s["state"] for s in status["stages"]] == ["Succeeded"] * 3
    assert status["stages"][2]["checkpoint"] == f"{output}/demo/sft/export"
    assert sorted(cluster.jobs()) == ["demo-prealign", "demo-pretrain", "demo-sft"]
    reasons = cluster.reasons("demo")
    assert reasons.count("StageSucceeded") == 3 and "PipelineSucceeded" in reasons


def test_succeeded_without_manifest_waits_for_it(cluster: Cluster, operator: Operator, output: str,
                                                 tmp_path: Path) -> None:
    cluster.create_pipeline("wait", base_spec(output))
    wait_for(lambda: "wait-prealign" in cluster.jobs())
    cluster.set_condition("wait-prealign", "Succeeded")
    wait_for(lambda: "waiting for the verified stage-complete manifest"
             in cluster.status("wait")["stages"][0]["message"], what="the waiting message")
    wait_passes(3)  # resync passes: still no next stage
    assert "wait-pretrain" not in cluster.jobs()
    assert cluster.status("wait")["phase"] == "Running"
    write_export(output, "wait", "prealign", tmp_path)  # no job event: the resync notices it
    wait_for(lambda: "wait-pretrain" in cluster.jobs(), what="pretrain after the manifest")


def test_a_corrupt_export_does_not_count(cluster: Cluster, operator: Operator, output: str,
                                         tmp_path: Path) -> None:
    from eve_contract.storage import open_store

    cluster.create_pipeline("corrupt", base_spec(output))
    wait_for(lambda: "corrupt-prealign" in cluster.jobs())
    write_export(output, "corrupt", "prealign", tmp_path)
    open_store(output).put_bytes("corrupt/prealign/export/model.safetensors", b"truncated")
    cluster.set_condition("corrupt-prealign", "Succeeded")
    wait_for(lambda: "waiting" in cluster.status("corrupt")["stages"][0]["message"])
    wait_passes(2)
    assert "corrupt-pretrain" not in cluster.jobs()


def test_failure_retries_then_fails_after_max_attempts(cluster: Cluster, operator: Operator, output: str) -> None:
    cluster.create_pipeline("flaky", base_spec(output))  # maxAttempts: 2
    wait_for(lambda: "flaky-prealign" in cluster.jobs())
    cluster.set_condition("flaky-prealign", "Failed", message="job flaky-prealign has reached the backoff limit")
    retry = wait_for(lambda: cluster.jobs().get("flaky-prealign-r2"), what="attempt 2")
    assert retry["metadata"]["labels"]["eve-platform.io/attempt"] == "2"
    assert wait_for(lambda: cluster.status("flaky")["stages"][0]["attempt"] == 2)
    cluster.set_condition("flaky-prealign-r2", "Failed", message="OOMKilled on worker-3")
    status = wait_for(lambda: cluster.status("flaky") if cluster.status("flaky")["phase"] == "Failed" else None)
    assert "OOMKilled on worker-3" in status["message"] and "attempt 2 of 2" in status["message"]
    assert sorted(cluster.jobs()) == ["flaky-prealign", "flaky-prealign-r2"]
    events = {e["reason"]: e for e in cluster.events("flaky")}
    assert events["StageRetry"]["type"] == "Warning" and events["PipelineFailed"]["type"] == "Warning"


def test_operator_restart_mid_stage_creates_no_duplicate(cluster: Cluster, operator: Operator, output: str,
                                                         tmp_path: Path) -> None:
    cluster.create_pipeline("steady", base_spec(output))
    wait_for(lambda: "steady-prealign" in cluster.jobs())
    cluster.set_condition("steady-prealign", "Running")
    wait_for(lambda: cluster.status("steady")["stages"][0]["state"] == "Running")
    creates = _creates(cluster)
    operator.restart()
    wait_passes(3)  # resume + resync passes
    assert _creates(cluster) == creates == 1
    assert sorted(cluster.jobs()) == ["steady-prealign"]
    write_export(output, "steady", "prealign", tmp_path)
    cluster.set_condition("steady-prealign", "Succeeded")
    wait_for(lambda: "steady-pretrain" in cluster.jobs())
    assert _creates(cluster) == 2


def _creates(cluster: Cluster) -> int:
    return sum(1 for r in cluster.requests() if r.action == "CREATE" and r.path.endswith("/pytorchjobs"))


def test_cross_field_invalid_spec_fails_at_once_naming_the_field(cluster: Cluster, operator: Operator,
                                                                 output: str) -> None:
    cluster.create_pipeline("bad", base_spec(output, start="sft", until="prealign"))
    status = wait_for(lambda: cluster.status("bad") if cluster.status("bad").get("phase") == "Failed" else None)
    assert "until='prealign' comes before start='sft'" in status["message"]
    wait_for(lambda: "InvalidSpec" in cluster.reasons("bad"), what="the InvalidSpec event")
    assert cluster.jobs() == {}


def test_kueue_without_queue_is_invalid(cluster: Cluster, operator: Operator, output: str) -> None:
    cluster.create_pipeline("noq", base_spec(output, scheduling={"gangScheduler": "kueue"}))
    status = wait_for(lambda: cluster.status("noq") if cluster.status("noq").get("phase") == "Failed" else None)
    assert "scheduling.queue is required" in status["message"]
    assert cluster.jobs() == {}


def test_unknown_override_key_fails_naming_the_key(cluster: Cluster, operator: Operator, output: str) -> None:
    cluster.create_pipeline("typo", base_spec(output, overrides={"optim.lrr": 0.1}))
    status = wait_for(lambda: cluster.status("typo") if cluster.status("typo").get("phase") == "Failed" else None)
    assert "optim.lrr" in status["message"]
    assert cluster.jobs() == {}


def test_a_hand_written_pipeline_gets_the_clis_refusals(cluster: Cluster, operator: Operator, output: str) -> None:
    """Keys the pipeline sets itself, per-stage keys for stages that do not run, values that cannot
    work: refused on the CRD path as `submit` refuses them (status + InvalidSpec event), never dropped."""
    bad = {
        "owned": (base_spec(output, stages={"sft": {"overrides": {"output": "s3://other/x"}}}),
                  "stages.sft.overrides.output is set by the pipeline from spec.output"),
        "unused": (base_spec(output, until="pretrain", stages={"sft": {"overrides": {"optim.lr": 1.0}}}),
                   "stages.sft: this pipeline runs prealign -> pretrain"),
        "image": (base_spec(output, image="Bad Image:!!"), "spec.image: is not a valid image reference"),
    }
    for name, (spec, _) in bad.items():
        cluster.create_pipeline(name, spec)
    for name, (_, expected) in bad.items():
        status = wait_for(lambda n=name: cluster.status(n) if cluster.status(n).get("phase") == "Failed" else None,
                          what=f"{name} to fail")
        assert expected in status["message"], status["message"]
        wait_for(lambda n=name: "InvalidSpec" in cluster.reasons(n), what=f"the InvalidSpec event of {name}")
    assert cluster.jobs() == {}


def test_suspend_and_resume_patch_the_current_job(cluster: Cluster, operator: Operator, output: str) -> None:
    cluster.create_pipeline("pause", base_spec(output))
    wait_for(lambda: "pause-prealign" in cluster.jobs())
    cluster.set_condition("pause-prealign", "Running")
    wait_for(lambda: cluster.status("pause")["stages"][0]["state"] == "Running")
    cluster.patch_spec("pause", {"suspend": True})
    wait_for(lambda: cluster.jobs()["pause-prealign"]["spec"]["runPolicy"]["suspend"] is True, what="suspended")
    assert wait_for(lambda: cluster.status("pause")["phase"] == "Suspended")
    cluster.patch_spec("pause", {"suspend": False})
    wait_for(lambda: cluster.jobs()["pause-prealign"]["spec"]["runPolicy"]["suspend"] is False, what="resumed")
    assert wait_for(lambda: cluster.status("pause")["phase"] == "Running")
    reasons = cluster.reasons("pause")
    assert "Suspended" in reasons and "Resumed" in reasons


def test_deleting_the_pipeline_deletes_its_jobs(cluster: Cluster, operator: Operator, output: str) -> None:
    cluster.create_pipeline("gone", base_spec(output))
    cluster.create_pipeline("kept", base_spec(output))
    wait_for(lambda: {"gone-prealign", "kept-prealign"} <= set(cluster.jobs()))
    cluster.delete_pipeline("gone")
    wait_for(lambda: cluster.pipeline("gone") is None, what="the pipeline gone (finalizer released)")
    wait_for(lambda: sorted(cluster.jobs()) == ["kept-prealign"], what="only the other pipeline's job left")


def test_missing_secret_waits_then_submits(cluster: Cluster, output: str, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("EVE_READ_PIPELINE_SECRETS", "true")  # chart: operator.readPipelineSecrets
    with running_operator():
        _missing_secret_waits_then_submits(cluster, output)


def _missing_secret_waits_then_submits(cluster: Cluster, output: str) -> None:
    cluster.create_pipeline("creds", base_spec(output, s3={"credentialsSecret": "s3-creds"}))
    status = wait_for(lambda: cluster.status("creds") if "waiting" in cluster.status("creds").get("message", "")
                      else None)
    assert "Secret ml/s3-creds" in status["message"] and status["phase"] == "Pending"
    wait_for(lambda: "Waiting" in cluster.reasons("creds"), what="the Waiting event")
    assert cluster.jobs() == {}
    cluster.create_secret("s3-creds", {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"})
    job = wait_for(lambda: cluster.jobs().get("creds-prealign"), what="the job once the Secret exists")
    env = {e["name"]: e for e in job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "s3-creds",
                                                                         "key": "AWS_SECRET_ACCESS_KEY"}
    assert wait_for(lambda: cluster.status("creds")["message"] == "")


def test_unreachable_s3_is_explained_and_nothing_is_submitted(cluster: Cluster, s3_env, monkeypatch) -> None:  # noqa: ANN001
    # an endpoint the chart lists for the operator's own keys (operator.s3.allowedEndpoints), but down
    monkeypatch.setenv("EVE_S3_ALLOWED_ENDPOINTS", "http://127.0.0.1:9")
    with running_operator():
        _unreachable_s3_is_explained(cluster)


def _unreachable_s3_is_explained(cluster: Cluster) -> None:
    spec = base_spec("s3://nowhere/eve", s3={"endpointUrl": "http://127.0.0.1:9"})
    cluster.create_pipeline("nos3", spec)
    status = wait_for(lambda: cluster.status("nos3") if "waiting" in cluster.status("nos3").get("message", "")
                      else None, timeout=30)
    assert "cannot read s3://nowhere/eve" in status["message"]
    wait_for(lambda: "Waiting" in cluster.reasons("nos3"), what="the Waiting event")
    assert cluster.jobs() == {}


def test_mlflow_parent_run_is_passed_to_the_stage(cluster: Cluster, operator: Operator, output: str,
                                                  mlflow_server) -> None:
    cluster.create_pipeline("tracked", base_spec(output, mlflow={"trackingUri": mlflow_server.tracking_uri}))
    job = wait_for(lambda: cluster.jobs().get("tracked-prealign"))
    run_id = wait_for(lambda: cluster.status("tracked").get("mlflowRunId"), what="the pipeline run id in the status")
    assert run_id and master_config(job)["mlflow"]["parent_run_id"] == run_id


def test_mlflow_down_continues_without_it(cluster: Cluster, operator: Operator, output: str) -> None:
    cluster.create_pipeline("untracked", base_spec(output, mlflow={"trackingUri": "http://127.0.0.1:9"}))
    wait_for(lambda: "untracked-prealign" in cluster.jobs())
    # the status patch comes after the job: wait for it (its stages) before reading what it lacks
    status = wait_for(lambda: (s := cluster.status("untracked")).get("stages") and s, what="the first status patch")
    assert status.get("mlflowRunId") is None
    wait_for(lambda: "MlflowUnavailable" in cluster.reasons("untracked"), what="the MlflowUnavailable event")


def test_exit_code_2_fails_at_once_without_retry(cluster: Cluster, operator: Operator, output: str) -> None:
    cluster.create_pipeline("broken", base_spec(output))
    wait_for(lambda: "broken-prealign" in cluster.jobs())
    cluster.exited_pod("broken-prealign", 2)
    cluster.set_condition("broken-prealign", "Failed", message="PyTorchJob broken-prealign is failed")
    status = wait_for(lambda: cluster.status("broken") if cluster.status("broken")["phase"] == "Failed" else None)
    assert "failed permanently" in status["message"] and "exited with 2" in status["message"]
    assert status["failure"]["class"] == "permanent" and status["failure"]["exitCode"] == 2  # a field, not prose
    assert sorted(cluster.jobs()) == ["broken-prealign"]


def test_kueue_jobs_are_created_suspended_and_left_to_kueue(cluster: Cluster, operator: Operator,
                                                            output: str) -> None:
    cluster.create_pipeline("queued", base_spec(output, scheduling={"gangScheduler": "kueue", "queue": "team-a"}))
    job = wait_for(lambda: cluster.jobs().get("queued-prealign"))
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert job["spec"]["runPolicy"]["suspend"] is True
    wait_passes(2)  # resync passes: the operator must not un-suspend what Kueue has not admitted
    assert cluster.jobs()["queued-prealign"]["spec"]["runPolicy"]["suspend"] is True
    assert cluster.status("queued")["phase"] == "Running" and "Resumed" not in cluster.reasons("queued")


def test_an_existing_job_of_the_same_name_is_adopted_not_duplicated(cluster: Cluster, operator: Operator,
                                                                    output: str) -> None:
    cluster.custom.create_namespaced_custom_object("kubeflow.org", "v1", NS, "pytorchjobs", {
        "apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
        "metadata": {"name": "again-prealign", "namespace": NS, "labels": {"eve-platform.io/pipeline": "again"}},
        "spec": {"pytorchReplicaSpecs": {}}})
    cluster.create_pipeline("again", base_spec(output))
    assert wait_for(lambda: cluster.status("again").get("stages", [{}])[0].get("jobName") == "again-prealign")
    assert _creates(cluster) == 2  # the test's and the operator's (answered 409), no other
    assert cluster.jobs()["again-prealign"]["spec"] == {"pytorchReplicaSpecs": {}}


def test_unknown_gang_scheduler_fails_naming_the_field(cluster: Cluster, operator: Operator, output: str) -> None:
    cluster.create_pipeline("yk", base_spec(output, scheduling={"gangScheduler": "yunikorn"}))
    status = wait_for(lambda: cluster.status("yk") if cluster.status("yk").get("phase") == "Failed" else None)
    assert "spec.scheduling.gangScheduler" in status["message"] and cluster.jobs() == {}
    # the Event is posted beside the status patch, not before it: wait for it too
    events = wait_for(lambda: cluster.events("yk"), what="the Warning event of yk")
    assert events[0]["type"] == "Warning"
