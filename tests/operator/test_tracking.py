"""The run records (eve_operator.tracking) against real MLflow stores: the server over REST (the
operator's path) and a SQLite file through mlflow's client (the local backend's default)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from eve_operator.tracking import END_REASON_TAG, RunRecords


@pytest.fixture(params=["rest", "sqlite"])
def uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "rest":
        return request.getfixturevalue("mlflow_server").tracking_uri
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_parent_run_tags_stage_run_closing_and_finish(uri: str, request: pytest.FixtureRequest) -> None:
    name = f"records-{request.node.callspec.id}"
    warnings: list[str] = []
    runs = RunRecords(uri, "records", name, warn=warnings.append)
    parent = runs.start({"eve.pipeline": name}, {"max_attempts": "3"})
    assert parent and not warnings
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("records").experiment_id
    stage_tags = {"eve.pipeline": name, "eve.stage": "pretrain", "mlflow.parentRunId": parent}
    stage = client.create_run(exp, run_name="pretrain", tags=stage_tags).info.run_id
    done = client.create_run(exp, run_name="prealign", tags={**stage_tags, "eve.stage": "prealign"}).info.run_id
    client.set_terminated(done, "FINISHED")

    runs.sync(parent, {"eve.phase": "Running", "eve.attempts": "pretrain=1"})
    runs.sync(parent, {"eve.phase": "Running", "eve.attempts": "pretrain=2"})
    assert runs.end_stage(parent, "pretrain", "KILLED", "stalled at step 7") == [stage]
    assert runs.end_stage(parent, "pretrain", "KILLED", "again") == []  # only RUNNING runs are closed
    runs.finish(parent, "FAILED")

    closed = client.get_run(stage)
    assert closed.info.status == "KILLED" and closed.data.tags[END_REASON_TAG] == "stalled at step 7"
    assert client.get_run(done).info.status == "FINISHED" and END_REASON_TAG not in client.get_run(done).data.tags
    record = client.get_run(parent)
    assert record.info.status == "FAILED" and record.info.run_name == name
    assert record.data.tags["eve.attempts"] == "pretrain=2" and record.data.params["max_attempts"] == "3"
    assert not warnings


def test_mlflow_down_warns_and_backs_off() -> None:
    warnings: list[str] = []
    runs = RunRecords("http://127.0.0.1:9", "records", "down", warn=warnings.append)
    assert runs.start({}, {}) is None and "continuing without an MLflow parent run" in warnings[0]
    runs.sync("some-run", {"eve.phase": "Running"})  # within the back-off: no request, no warning
    assert len(warnings) == 1
    assert runs.end_stage("some-run", "sft", "FAILED", "x") == [] and len(warnings) == 2
