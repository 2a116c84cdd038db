"""The `eve-platform` CLI: validation, dry runs and the verbs that need no running job."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from eve_operator.cli.main import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EVE_PLATFORM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EVE_PLATFORM_BACKEND", "local")
    return tmp_path / "home"


def run(*args: str):  # noqa: ANN201
    return runner.invoke(app, list(args))


def test_help_is_fast_and_torch_free() -> None:
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c",
                          "import sys; from eve_operator.cli.main import app; "
                          "assert 'torch' not in sys.modules, 'CLI imported torch'"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert time.monotonic() - start < 5
    result = run("--help")
    assert result.exit_code == 0
    for verb in ("submit", "status", "list", "logs", "cancel", "describe", "demo", "config"):
        assert verb in result.output


@pytest.mark.parametrize(("args", "expected"), [
    (["optim.lrr=1"], "did you mean optim.lr"),
    (["stagee=sft"], "did you mean stage"),
    (["sft.optim.lrr=1"], "did you mean optim.lr"),
    (["optim.lr=abc"], "optim.lr='abc'"),
    (["until=prealign"], "until='prealign' comes before start='pretrain'"),
    (["model.preset=huge"], "model.preset"),
    (["name=Bad_Name"], "DNS-1035"),
    (["justaword"], "not of the form key=value"),
])
def test_bad_overrides_fail_with_the_key(args: list[str], expected: str) -> None:
    result = run("submit", "stage=pretrain", *args, "--dry-run")
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert "Traceback" not in result.output


def test_unknown_stage_and_missing_stage() -> None:
    result = run("submit", "stage=finetune", "--dry-run")
    assert result.exit_code == 2 and "stage='finetune'" in result.output and "prealign" in result.output
    result = run("submit", "optim.lr=1e-4", "--dry-run")
    assert result.exit_code == 2 and "missing stage=<name>" in result.output


def test_local_dry_run_prints_every_stage_command(_home: Path) -> None:
    result = run("submit", "stage=prealign", "name=exp1", "data=s3://bkt/caps", "sft.data=s3://bkt/conv",
                 "sft.optim.lr=1e-5", "nproc_per_node=2", "--dry-run", "-o", "json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert [s["stage"] for s in plan["stages"]] == ["prealign", "pretrain", "sft"]
    sft = plan["stages"][2]
    assert sft["processes"] == 2
    assert sft["command"] == ["python", "-m", "eve_trainer", "sft"]
    assert sft["config"]["optim"]["lr"] == 1e-5 and sft["config"]["data"]["urls"] == ["s3://bkt/conv"]
    assert plan["stages"][0]["config"]["data"]["urls"] == ["s3://bkt/caps"]
    assert sft["config"]["pipeline"] == "exp1"
    assert not (_home / "pipelines" / "exp1").exists(), "a dry run must create nothing"


def test_until_limits_the_chain() -> None:
    result = run("submit", "stage=prealign", "until=pretrain", "--dry-run", "-o", "json")
    assert [s["stage"] for s in json.loads(result.output)["stages"]] == ["prealign", "pretrain"]
    result = run("submit", "stage=pretrain", "hd=true", "--dry-run", "-o", "json")
    assert [s["stage"] for s in json.loads(result.stdout)["stages"]] == ["pretrain", "sft-hd"]


def test_config_keys_and_show() -> None:
    result = run("config", "keys")
    assert result.exit_code == 0 and "optim.lr" in result.output and "until" in result.output
    result = run("config", "show", "stage=sft", "preset=eve-7b", "-o", "json")
    cfg = json.loads(result.output)
    assert cfg["optim"]["lr"] == 2e-5 and cfg["global_batch_size"] == 128
    assert cfg["data"]["template"] == "vicuna_v1"
    result = run("config", "show", "stage=prealign", "preset=eve-7b")
    cfg = yaml.safe_load(result.output)
    assert cfg["optim"]["vision_lr"] == 4e-4 and cfg["optim"]["warmup_ratio"] == 0.03


def test_list_status_describe_logs_cancel_not_found() -> None:
    result = run("list")
    assert result.exit_code == 0 and "No pipelines" in result.output
    assert json.loads(run("list", "-o", "json").output) == []
    for verb in ("status", "describe", "logs", "cancel"):
        result = run(verb, "ghost")
        assert result.exit_code == 3, (verb, result.output)
        assert "no local pipeline named 'ghost'" in result.output


def test_bad_backend_is_rejected() -> None:
    result = run("list", "--backend", "slurm")
    assert result.exit_code == 2 and "auto, local, kubernetes" in result.output
