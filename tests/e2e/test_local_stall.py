"""A hung rank on the local backend, end to end: the real CLI and trainer, real S3 and MLflow.

Rank 1 blocks forever at step 3 of attempt 1 (debug.hang_at_step). The local runner sees that
no rank's step advances for stall_timeout_s, dumps every rank's stacks (SIGUSR1), stops the job,
closes the stage's MLflow run as KILLED and starts attempt 2, which resumes from the step-2
checkpoint. The export must be bit-identical to an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from eve_contract import layout
from eve_contract.storage import open_store

pytestmark = pytest.mark.slow
STALL_TIMEOUT_S = 10


def cli(*args: str, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eve_operator.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_a_hung_rank_is_restarted_and_the_export_matches_an_uninterrupted_run(
        tmp_path: Path, bucket: str, s3_env, mlflow_server) -> None:  # noqa: ANN001
    from mlflow.tracking import MlflowClient

    from eve_trainer.data import write_synthetic_dataset

    env = dict(os.environ, EVE_PLATFORM_HOME=str(tmp_path / "home"), EVE_PLATFORM_BACKEND="local",
               OMP_NUM_THREADS="1", **s3_env.env())
    data, output = f"s3://{bucket}/datasets/captions", f"s3://{bucket}/runs"
    write_synthetic_dataset(data, num_samples=48, kind="caption", seed=0, endpoint_url=s3_env.endpoint_url)
    common = ["stage=prealign", "until=prealign", f"output={output}", f"data={data}",
              f"endpoint_url={s3_env.endpoint_url}", f"tracking_uri={mlflow_server.tracking_uri}",
              "experiment=stall", "nproc_per_node=2", "max_steps=6", "checkpoint.every_steps=2",
              "heartbeat.every_s=1"]

    clean = cli("submit", "name=clean", *common, env=env)
    assert clean.returncode == 0, clean.stdout + clean.stderr[-3000:]
    hung = cli("submit", "name=hung", *common, f"stall_timeout_s={STALL_TIMEOUT_S}", "debug.hang_at_step=3",
               "debug.hang_rank=1", "debug.hang_attempt=1", env=env)
    assert hung.returncode == 0, hung.stdout + hung.stderr[-3000:]

    status = json.loads(cli("status", "hung", "-o", "json", env=env).stdout)
    assert status["phase"] == "Succeeded" and status["stages"][0]["attempt"] == 2
    record = json.loads((tmp_path / "home" / "pipelines" / "hung" / "pipeline.json").read_text())
    stalled = next(e for e in record["events"] if e["reason"] == "StageStalled")
    assert "no rank's step advanced past 3" in stalled["message"] and "stopped at step 3" in stalled["message"]
    waited = int(re.search(r"for (\d+)s", stalled["message"]).group(1))
    assert STALL_TIMEOUT_S <= waited <= STALL_TIMEOUT_S + 3, stalled["message"]
    restarted = next(e for e in record["events"] if e["reason"] == "StageRunning" and e["time"] > stalled["time"])
    print(f"stall detected {waited}s after the last step advanced (stall_timeout_s={STALL_TIMEOUT_S}, "
          f"heartbeat.every_s=1, poll 0.5s); stacks dumped, job stopped and attempt 2 running "
          f"{restarted['time'] - stalled['time']:.1f}s later")

    # each rank's stacks went to its log before the restart (faulthandler, on SIGUSR1)
    logs = tmp_path / "home" / "pipelines" / "hung" / "logs" / "prealign"
    hung_log = (logs / "attempt-1" / "rank-1.log").read_text(errors="replace")
    assert "hang_forever" in hung_log and "most recent call first" in hung_log
    assert "most recent call first" in (logs / "attempt-1" / "rank-0.log").read_text(errors="replace")

    # attempt 2 resumed from the step-2 checkpoint; the export is bit-identical to the clean run's
    store = open_store(output, endpoint_url=s3_env.endpoint_url)
    a, b = layout.stage_complete(store, "clean", "prealign"), layout.stage_complete(store, "hung", "prealign")
    assert a is not None and b is not None
    weights = {f.path: f.sha256 for f in a.files if f.path.endswith(".safetensors")}
    assert weights and weights == {f.path: f.sha256 for f in b.files if f.path.endswith(".safetensors")}
    assert "resum" in (logs / "attempt-2" / "rank-0.log").read_text(errors="replace").lower()

    # run records: the stage run was closed KILLED with the reason, reopened by attempt 2, FINISHED
    client = MlflowClient(mlflow_server.tracking_uri)
    run = client.get_run(b.mlflow_run_id)
    assert run.info.status == "FINISHED" and "stalled" in run.data.tags["eve.end_reason"]
    parent = client.get_run(status["mlflowRunId"])
    assert parent.info.status == "FINISHED" and parent.info.run_name == "hung"
    tags = parent.data.tags
    assert (tags["eve.phase"], tags["eve.attempts"], tags["eve.current_stage"]) == ("Succeeded", "prealign=2", "")
    assert tags["eve.final_checkpoint"] == f"{output}/{layout.export_prefix('hung', 'prealign')}"
    assert parent.data.params["stall_timeout_s"] == str(STALL_TIMEOUT_S)
