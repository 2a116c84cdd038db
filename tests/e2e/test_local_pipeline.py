"""End to end on the local backend: the real CLI runs three tiny stages with the real trainer,
each starting from the previous stage's export, against a real S3 server and a real MLflow server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eve_contract import layout
from eve_contract.storage import open_store

pytestmark = pytest.mark.slow
STAGES = ["prealign", "pretrain", "sft"]


def cli(*args: str, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eve_operator.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def env(tmp_path: Path, s3_env, mlflow_server) -> dict[str, str]:  # noqa: ANN001
    return dict(os.environ, EVE_PLATFORM_HOME=str(tmp_path / "home"), EVE_PLATFORM_BACKEND="local",
                OMP_NUM_THREADS="1", **s3_env.env())


@pytest.fixture
def datasets(bucket: str, s3_env) -> dict[str, str]:  # noqa: ANN001
    from eve_trainer.data import write_synthetic_dataset

    urls = {"caption": f"s3://{bucket}/datasets/captions", "conversation": f"s3://{bucket}/datasets/llava"}
    for kind, url in urls.items():
        write_synthetic_dataset(url, num_samples=48, kind=kind, seed=0, endpoint_url=s3_env.endpoint_url)
    return urls


def test_three_stages_chain_through_verified_exports(env, datasets, bucket, s3_env, mlflow_server) -> None:  # noqa: ANN001
    output = f"s3://{bucket}/runs"
    result = cli("submit", "stage=prealign", "name=e2e", f"output={output}",
                 f"data={datasets['caption']}", f"sft.data={datasets['conversation']}",
                 f"endpoint_url={s3_env.endpoint_url}", f"tracking_uri={mlflow_server.tracking_uri}",
                 "experiment=e2e", "nproc_per_node=2", env=env)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert "pipeline e2e: Succeeded" in result.stdout

    # every stage's export verifies in S3, and each stage started from the previous export
    store = open_store(output, endpoint_url=s3_env.endpoint_url)
    manifests = {s: layout.stage_complete(store, "e2e", s) for s in STAGES}
    assert all(manifests.values()), manifests
    export_url = {s: f"{output}/{layout.export_prefix('e2e', s)}" for s in STAGES}

    status = json.loads(cli("status", "e2e", "-o", "json", env=env).stdout)
    assert status["phase"] == "Succeeded"
    assert [s["state"] for s in status["stages"]] == ["Succeeded"] * 3
    assert [s["initFrom"] for s in status["stages"]] == [None, export_url["prealign"], export_url["pretrain"]]

    # lineage in the real MLflow server: stage runs nested under the pipeline run
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.tracking_uri)
    parent = client.get_run(status["mlflowRunId"])
    assert parent.data.tags["eve.pipeline"] == "e2e"
    runs = {s: client.get_run(manifests[s].mlflow_run_id) for s in STAGES}
    for i, stage in enumerate(STAGES):
        tags = runs[stage].data.tags
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["eve.stage"] == stage and tags["eve.pipeline"] == "e2e"
        assert runs[stage].data.metrics["train/loss"] > 0
        if i:
            assert tags["eve.init_checkpoint"] == export_url[STAGES[i - 1]]
            assert tags["eve.previous_run_id"] == runs[STAGES[i - 1]].info.run_id
    assert runs["sft"].data.params["data.template"] == "vicuna_v1"

    # the read verbs on a finished pipeline
    listing = cli("list", env=env).stdout
    assert "e2e" in listing and "Succeeded" in listing and "3/3" in listing
    described = cli("describe", "e2e", env=env).stdout
    assert "StageSucceeded" in described and "PipelineSucceeded" in described

    # goodput: one segment per stage with the trainer's timers, shown and tracked
    from eve_contract.goodput import PARTS

    for s in status["stages"]:
        assert [seg["attempt"] for seg in s["segments"]] == [1], s["segments"]
        assert s["segments"][0]["stepSeconds"] > 0 and s["segments"][0]["loopAt"] >= s["segments"][0]["startedAt"]
    assert "Goodput:     goodput " in described and "productive " in described, described
    assert "Goodput:     goodput " in cli("status", "e2e", env=env).stdout
    tracked = client.get_run(parent.info.run_id).data.metrics
    assert 0 < tracked["goodput/fraction"] < 1 and {f"goodput/{p}_s" for p in PARTS} <= set(tracked)
    assert all(client.get_run(runs[s].info.run_id).data.metrics["goodput/productive_s"] > 0 for s in STAGES)
    logs = cli("logs", "e2e", "--stage", "sft", env=env)
    assert logs.returncode == 0 and logs.stdout.strip()

    # resubmitting a finished stage does not retrain: its export already verifies
    again = cli("submit", "stage=sft", "name=e2e", f"output={output}",
                f"data={datasets['conversation']}", f"endpoint_url={s3_env.endpoint_url}", env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "stage sft complete" in again.stderr


def test_later_stage_without_previous_export_says_what_to_run(env, bucket, s3_env) -> None:  # noqa: ANN001
    result = cli("submit", "stage=pretrain", "name=orphan", f"output=s3://{bucket}/runs",
                 f"endpoint_url={s3_env.endpoint_url}", env=env, timeout=120)
    assert result.returncode == 2  # refused at submit: the local backend reads the store
    assert "and there is none: run `eve-platform submit stage=prealign name=orphan" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_detach_follow_and_cancel_checkpoints_first(env, datasets, bucket, s3_env, tmp_path) -> None:  # noqa: ANN001
    output = f"s3://{bucket}/runs"
    result = cli("submit", "stage=prealign", "until=prealign", "name=long", f"output={output}",
                 f"data={datasets['caption']}", f"endpoint_url={s3_env.endpoint_url}",
                 "max_steps=100000", "checkpoint.every_steps=100000", "--detach", env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "long"
    log = tmp_path / "home" / "pipelines" / "long" / "logs" / "prealign" / "attempt-1" / "rank-0.log"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # wait until training steps are running
        if log.is_file() and '[eve-train] step ' in log.read_text(errors="replace"):
            break
        time.sleep(1)
    else:
        pytest.fail(f"training never started: {log.read_text() if log.is_file() else 'no log'}")
    cancelled = cli("cancel", "long", env=env, timeout=120)
    assert cancelled.returncode == 0, cancelled.stderr
    status = json.loads(cli("status", "long", "-o", "json", env=env).stdout)
    assert status["phase"] == "Failed" and "cancelled" in status["message"]
    # SIGTERM made the trainer write a final checkpoint before exiting
    store = open_store(output, endpoint_url=s3_env.endpoint_url)
    assert layout.latest_complete_checkpoint(store, "long", "prealign") is not None
