"""`eve-platform submit --wait` on a cluster, and `status`/`describe` of a running stage: the real
CLI (a subprocess, as a user runs it) against the emulator with the real operator reconciling.

The test plays the training-operator (job conditions) and the trainer (heartbeats in S3 in
the layout.Heartbeat contract, the stage's MLflow run, the stage-complete manifest).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from support.operator_harness import NS, Cluster, Operator, wait_for, write_export
from typer.testing import CliRunner

from eve_contract import layout
from eve_contract.storage import open_store
from eve_operator import tracking
from eve_operator.cli.main import app

runner = CliRunner()


def cli(*args: str):  # noqa: ANN201
    return runner.invoke(app, [*args, "--backend", "kubernetes", "-n", NS])


def beat(output: str, pipeline: str, stage: str, step: int, attempt: int = 1) -> None:
    """What each trainer rank writes every few seconds."""
    store = open_store(output)
    for rank in (0, 1):
        hb = layout.Heartbeat(rank=rank, step=step, total_steps=100, attempt=attempt, loss=3.5 - step / 100,
                              tokens_per_s=2.5e4, eta_s=(100 - step) * 3.0, phase="train")
        store.put_bytes(layout.heartbeat_key(pipeline, stage, rank), hb.to_json())


def stage_run(uri: str, parent: str, pipeline: str, stage: str) -> str:
    """The stage's MLflow run, as the trainer creates it under the pipeline's parent run."""
    experiment = tracking._call(uri, "GET", "runs/get", query={"run_id": parent})["run"]["info"]["experiment_id"]
    body = {"experiment_id": experiment, "run_name": stage,
            "tags": [{"key": "mlflow.parentRunId", "value": parent}, {"key": "eve.pipeline", "value": pipeline},
                     {"key": "eve.stage", "value": stage}]}
    return tracking._call(uri, "POST", "runs/create", body)["run"]["info"]["run_id"]


class Waiter:
    """`eve-platform submit ... --wait` in a subprocess; its stderr lines collected as they come."""

    def __init__(self, args: list[str], kubeconfig: str):
        env = dict(os.environ, KUBECONFIG=kubeconfig, EVE_PLATFORM_WAIT_POLL_S="0.2")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from eve_operator.cli.main import app; app()", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:  # type: ignore[union-attr]
            self.lines.append(line.rstrip())

    def saw(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def finish(self) -> tuple[int, str]:
        out, _ = self.proc.communicate(timeout=30)
        self.reader.join(5)
        return self.proc.returncode, out


def test_submit_wait_follows_the_stages_and_status_shows_progress(
        cluster: Cluster, operator: Operator, output: str, mlflow_server: Any, tmp_path: Path) -> None:
    uri = mlflow_server.tracking_uri
    waiter = Waiter(["submit", "stage=pretrain", "name=wt", f"output={output}", "gpus_per_node=0",
                     f"tracking_uri={uri}", "init_from=s3://models/llama", "--wait",
                     "--backend", "kubernetes", "-n", NS], os.environ["KUBECONFIG"])
    try:
        wait_for(lambda: cluster.jobs().get("wt-pretrain"), timeout=30, what="the pretrain job")
        cluster.set_condition("wt-pretrain", "Running")
        wait_for(lambda: waiter.saw("pretrain: Running"), what="the CLI's stage line")
        beat(output, "wt", "pretrain", 40)
        wait_for(lambda: waiter.saw("pretrain: 40/100 (40%) loss 3.100 25.0k tok/s ETA 3m00s"),
                 what="the CLI's progress line from the heartbeats")
        parent = wait_for(lambda: cluster.status("wt").get("mlflowRunId"), what="the pipeline run id in the status")
        run_id = stage_run(uri, parent, "wt", "pretrain")

        status = cli("status", "wt")
        assert status.exit_code == 0, status.output
        row = next(line for line in status.output.splitlines() if line.startswith("pretrain"))
        assert "40/100 (40%)" in row and run_id in row, status.output
        live = json.loads(cli("status", "wt", "-o", "json").output)["live"]["pretrain"]
        assert live["progress"]["step"] == 40 and live["progress"]["tokensPerSecond"] == 2.5e4
        assert live["mlflowRunId"] == run_id
        described = cli("describe", "wt").output
        assert "Progress:    pretrain: step 40/100, loss 3.1000, 25.0k tokens/s, ETA 3m00s" in described
        assert f"Stage run:   pretrain: MLflow run {run_id}" in described
        assert "spec.image" in described and "built-in" in described  # the emulator's operator has no image env

        write_export(output, "wt", "pretrain", tmp_path, run_id=run_id)
        cluster.set_condition("wt-pretrain", "Succeeded")
        wait_for(lambda: cluster.jobs().get("wt-sft"), what="the sft job")
        cluster.set_condition("wt-sft", "Running")
        beat(output, "wt", "sft", 90)
        wait_for(lambda: waiter.saw("sft: 90/100"), what="the sft progress line")
        write_export(output, "wt", "sft", tmp_path)
        cluster.set_condition("wt-sft", "Succeeded")
        code, out = waiter.finish()
    finally:
        if waiter.proc.poll() is None:
            waiter.proc.kill()
    assert code == 0, "\n".join(waiter.lines)
    assert "pipeline wt: Succeeded" in out
    assert waiter.saw("pretrain: Succeeded") and waiter.saw(f"-> {output}/wt/pretrain/export"), waiter.lines


def test_submit_wait_exits_with_the_failure_and_a_retryable_255_is_not_the_users(
        cluster: Cluster, operator: Operator, output: str) -> None:
    waiter = Waiter(["submit", "stage=sft", "name=wf", f"output={output}", "gpus_per_node=0", "max_attempts=1",
                     "init_from=s3://models/x", "--wait", "--backend", "kubernetes", "-n", NS],
                    os.environ["KUBECONFIG"])
    try:
        wait_for(lambda: cluster.jobs().get("wf-sft"), timeout=30, what="the sft job")
        cluster.exited_pod("wf-sft", 255)  # the trainer's pod, exited 255 (retryable)
        # the controller's message holds "exited with code 2", as a prefix of 255
        cluster.set_condition("wf-sft", "Failed", message="Pod: ml.wf-sft-master-0 exited with code 255; OOMKilled on worker-1")
        code, out = waiter.finish()
    finally:
        if waiter.proc.poll() is None:
            waiter.proc.kill()
    assert code == 1, "\n".join(waiter.lines)
    assert "pipeline wf: Failed" in out and "OOMKilled on worker-1" in out
    assert cluster.status("wf")["failure"] == {"class": "transient", "exitCode": 255,
                                               "message": cluster.status("wf")["message"]}
