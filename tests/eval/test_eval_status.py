"""`status` and `describe` show the scores written beside a stage's export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eve_operator.cli.main import app


def test_describe_and_status_show_the_scores_beside_the_exports(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from eve_operator.backends import local as lb
    from eve_operator.pipeline import initial_status
    from eve_operator.spec import PipelineSpec

    monkeypatch.setenv("EVE_PLATFORM_HOME", str(tmp_path / "home"))
    store = tmp_path / "store"
    spec = PipelineSpec(output=f"file://{store}")
    record = lb.Record("run1", spec, initial_status(spec))
    record.save()
    scores = {"bench": "pope", "scores": {"accuracy": 0.75, "f1": 0.8, "yes_ratio": 0.5, "random/f1": 0.9, "n": 60}}
    path = store / "run1" / "sft" / "eval" / "pope" / "scores.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(scores))
    described = CliRunner().invoke(app, ["describe", "run1", "--local"])
    assert described.exit_code == 0, described.output
    tail = described.output.split("Evaluations:")[1]
    row = next(line.split() for line in tail.splitlines() if line.startswith("sft"))
    assert row == ["sft", "pope", "f1", "0.8", "60"]
    status = CliRunner().invoke(app, ["status", "run1", "--local"])
    assert "pope" in status.output and "0.8" in status.output
