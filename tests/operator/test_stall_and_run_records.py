"""Stalls and run records through the real operator (kopf on kmock), real S3 and a real MLflow server.

The test plays the trainer (heartbeats in S3, a stage run in MLflow nested under the
pipeline's run) and the training-operator (PyTorchJob conditions); the operator must notice
that no rank's step advances, stop the job, close the stage run and start a new attempt.
"""

from __future__ import annotations

import sys
import time

from mlflow.tracking import MlflowClient
from support.operator_harness import Cluster, Operator, base_spec, wait_for

from eve_contract import layout
from eve_contract.storage import open_store
from eve_operator.tracking import END_REASON_TAG


def beat(output: str, pipeline: str, stage: str, *, step: int, attempt: int, rank: int = 0) -> None:
    """What each rank's heartbeat thread writes."""
    hb = layout.Heartbeat(rank=rank, step=step, total_steps=100, attempt=attempt)
    open_store(output).put_bytes(layout.heartbeat_key(pipeline, stage, rank), hb.to_json())


def stage_run(client: MlflowClient, pipeline: str, stage: str, parent: str) -> str:
    """The stage run the trainer opens (tags as eve_trainer.trainer sets them)."""
    exp = client.get_experiment_by_name("eve-platform").experiment_id
    return client.create_run(exp, run_name=stage, tags={"eve.pipeline": pipeline, "eve.stage": stage,
                                                         "mlflow.parentRunId": parent}).info.run_id


def test_a_stalled_stage_is_stopped_its_run_killed_and_a_new_attempt_started(
        cluster: Cluster, operator: Operator, output: str, mlflow_server) -> None:  # noqa: ANN001
    uri = mlflow_server.tracking_uri
    cluster.create_pipeline("hung", base_spec(output, stallTimeoutSeconds=2, mlflow={"trackingUri": uri}))
    wait_for(lambda: "hung-prealign" in cluster.jobs(), what="the prealign job")
    # the job is created before the status patch that records the run: wait for the run id itself
    parent = wait_for(lambda: cluster.status("hung").get("mlflowRunId"), what="the pipeline run id in the status")
    client = MlflowClient(uri)
    run = stage_run(client, "hung", "prealign", parent)
    beat(output, "hung", "prealign", step=5, attempt=1)
    cluster.set_condition("hung-prealign", "Running")
    wait_for(lambda: cluster.status("hung")["stages"][0].get("step") == 5, what="step 5 in the status")
    t0 = time.monotonic()
    wait_for(lambda: "hung-prealign-r2" in cluster.jobs(), timeout=20, what="attempt 2 after the stall")
    detected = time.monotonic() - t0
    assert 2.0 <= detected < 15.0, detected  # stallTimeoutSeconds=2, resync 0.5 s (+ a loaded machine)
    print(f"operator: stall detected and attempt 2 created {detected:.2f}s after the last step change "
          "(stallTimeoutSeconds=2, resync 0.5 s)", file=sys.__stdout__)  # KopfRunner swaps sys.stdout
    assert "hung-prealign" not in cluster.jobs()  # deleted: the kubelet SIGTERMs each rank (stacks dumped)
    stalled = wait_for(lambda: next((e for e in cluster.events("hung") if e["reason"] == "StageStalled"), None),
                       what="the StageStalled Event")
    assert stalled["type"] == "Warning" and "past 5" in stalled["message"] and "ranks" in stalled["message"]
    closed = wait_for(lambda: (r := client.get_run(run)).info.status == "KILLED" and r, what="stage run KILLED")
    assert "stalled" in closed.data.tags[END_REASON_TAG]
    wait_for(lambda: client.get_run(parent).data.tags.get("eve.attempts") == "prealign=2 pretrain=0 sft=0",
             what="the attempts on the parent run")

    # attempt 2 resumes from a checkpoint (step 4) and hangs too: the last attempt fails the pipeline
    cluster.set_condition("hung-prealign-r2", "Running")
    wait_for(lambda: cluster.status("hung")["stages"][0].get("progressAt"), what="attempt 2 running")
    assert cluster.status("hung")["stages"][0].get("step") is None  # attempt 1's beat does not count
    beat(output, "hung", "prealign", step=4, attempt=2)
    status = wait_for(lambda: (s := cluster.status("hung"))["phase"] == "Failed" and s, timeout=20,
                      what="the pipeline Failed after the second stall")
    assert "past 4" in status["message"] and "attempt 2 of 2" in status["message"]
    assert "hung-prealign-r2" not in cluster.jobs()
    parent_run = wait_for(lambda: (r := client.get_run(parent)).info.status == "FAILED" and r)
    assert parent_run.data.tags["eve.phase"] == "Failed"
    assert client.get_run(run).info.status == "KILLED"


def test_a_failed_job_closes_its_stage_run_as_failed_with_the_reason(
        cluster: Cluster, operator: Operator, output: str, mlflow_server) -> None:  # noqa: ANN001
    uri = mlflow_server.tracking_uri
    cluster.create_pipeline("oom", base_spec(output, mlflow={"trackingUri": uri}))
    wait_for(lambda: "oom-prealign" in cluster.jobs())
    client = MlflowClient(uri)
    parent = wait_for(lambda: cluster.status("oom").get("mlflowRunId"), what="the pipeline run id in the status")
    run = stage_run(client, "oom", "prealign", parent)
    other = stage_run(client, "other", "prealign", parent)  # another pipeline's run is left alone
    cluster.set_condition("oom-prealign", "Failed", message="OOMKilled on worker-3")
    wait_for(lambda: "oom-prealign-r2" in cluster.jobs())
    closed = wait_for(lambda: (r := client.get_run(run)).info.status == "FAILED" and r)
    assert "OOMKilled on worker-3" in closed.data.tags[END_REASON_TAG]
    assert client.get_run(other).info.status == "RUNNING"
    assert client.get_run(parent).data.params["max_attempts"] == "2"
    cluster.delete_pipeline("oom")  # deleted mid-stage: the parent run is KILLED
    wait_for(lambda: client.get_run(parent).info.status == "KILLED", what="the parent run KILLED")
