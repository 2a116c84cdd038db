"""What `config show` resolves at submit is what eve-train resolves in the pod (issue 24).

For every field of the trainer config and hostile values (`: `, ` #`, commas, `true`, `2024`,
`[a]`, unicode, a newline, ...): `eve-platform config show` either refuses the value naming the
key (exit 2), or resolves a config; then `submit --dry-run` renders the stage job, and the real
eve-train entry point, given that job's command and env, resolves the same config. A string field
keeps the text as typed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

import pytest
import typer
import typer.testing
from typer.testing import CliRunner

from eve_contract import resolved_config
from eve_trainer import main as eve_train
from eve_trainer.config import TrainConfig, annotation_of, config_keys

from eve_operator.cli.main import app
from eve_operator.spec import OPERATOR_OWNED

runner = CliRunner()
_CLI = typer.testing._get_command(app)
HOSTILE = ["a: b", "a #b", "x,y", "true", "2024", "[a]", "ünï ✓", "line1\nline2", "yes", "null", "s3://bkt/p: q #r,s"]
#: For fields that take no text (numbers, booleans, choices): what a YAML re-parse would have coerced.
HOSTILE_TO_TYPED = ["a: b", "true", "2024", "[a]", "null", "1e3"]
BASE = ["stage=prealign", "until=prealign", "output=s3://bkt/eve", "tracking_uri=http://mlflow:5000",
        "gpus_per_node=0"]
#: Set by the operator from the pipeline's MLflow runs: no key sets them.
NOT_SETTABLE = {"stage", "mlflow.parent_run_id", "mlflow.previous_run_id"}


@pytest.fixture(autouse=True)
def _no_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVE_PLATFORM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.delenv("EVE_PLATFORM_BACKEND", raising=False)
    monkeypatch.delenv(resolved_config.ENV_VAR, raising=False)
    # hundreds of invocations: build the click command once (typer rebuilds it on every invoke)
    monkeypatch.setattr(typer.testing, "_get_command", lambda _app: _CLI)


def cli_key(field: str) -> str:
    """The key a user sets the field with: its own, or the pipeline key the pipeline sets it from."""
    return OPERATOR_OWNED[field][0] or field if field in OPERATOR_OWNED else field


def words_for(field: str, value: str) -> list[str]:
    key = cli_key(field)
    return [*(w for w in BASE if w.split("=", 1)[0] != key), f"{key}={value}"]


def shown(words: list[str]) -> tuple[int, str, dict[str, Any] | None]:
    result = runner.invoke(app, ["config", "show", *words, "--backend", "kubernetes", "-o", "json"])
    return result.exit_code, result.output, json.loads(result.stdout) if result.exit_code == 0 else None


def job_of(words: list[str]) -> tuple[list[str], dict[str, str]]:
    """(trainer command, env) of the stage's Master pod, as `submit --dry-run` renders it."""
    result = runner.invoke(app, ["submit", *words, "--backend", "kubernetes", "--dry-run", "-o", "json"])
    assert result.exit_code == 0, result.output
    _, job, *_ = json.loads(result.stdout)
    container = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    command = container["command"]
    assert command[:2] == ["eve-launch", "--"]  # the launcher then starts ranks of the rest
    return command[2:], {e["name"]: e["value"] for e in container["env"] if "value" in e}


def in_the_pod(command: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
               capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """The config eve-train resolves from the pod's command and env (its --print-config)."""
    assert command[0] == "eve-train"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    assert eve_train.main([*command[1:], "--print-config"]) == 0
    return json.loads(capsys.readouterr().out)


def value_at(cfg: dict[str, Any], field: str) -> Any:
    for part in field.split("."):
        cfg = cfg[part]
    return cfg


def test_every_field_round_trips_from_config_show_to_the_pod(monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    accepted = refused = 0
    for field in config_keys():
        if field in NOT_SETTABLE:
            continue
        annotation = annotation_of(TrainConfig, field)
        texts = annotation is str or str in get_args(annotation) or list in (get_origin(annotation), )
        for value in HOSTILE if texts else HOSTILE_TO_TYPED:
            words = words_for(field, value)
            code, output, cfg = shown(words)
            if code != 0:  # refused at submit: exit 2, one line naming the key
                assert code == 2 and cli_key(field) in output and "Traceback" not in output, (field, value, output)
                refused += 1
                continue
            accepted += 1
            assert cfg is not None
            pod = in_the_pod(*job_of(words), monkeypatch, capsys)
            assert pod == cfg, (field, value)
            got = value_at(cfg, field)
            if annotation is str or (get_origin(annotation) in (Union, UnionType) and str in get_args(annotation)
                                     and value != "null"):
                assert got == value, (field, value, got)  # a string keeps the text as typed
            if field == "data.urls":
                assert got == [value], (field, value, got)  # one URL, commas and all
    print(f"\n[roundtrip] {accepted} accepted and identical in the pod, {refused} refused naming the key")
    assert accepted > 40 and refused > 80, (accepted, refused)


def test_the_console_script_reads_the_config_a_job_hands_it(tmp_path: Path) -> None:
    """The real `eve-train` process (its console entry, python -m eve_trainer) in a stage job's env."""
    words = [*BASE, "experiment=2024", "queue=yes", "data=s3://bkt/a: b #c,d", "mlflow.registered_model=true",
             "model.teacher_path=/models/ünï: 1 #2", "name=roundtrip", "sft.optim.lr=1e-5", "until=sft"]
    words = [w for w in words if w != "until=prealign"]
    code, output, cfg = shown(words)
    assert code == 0, output
    command, env = job_of(words)
    out = subprocess.run([sys.executable, "-m", "eve_trainer", *command[1:], "--print-config"],
                         env={**os.environ, **env}, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == cfg
    assert cfg["mlflow"]["experiment"] == "2024" and cfg["data"]["urls"] == ["s3://bkt/a: b #c,d"]
    # a document for another stage is refused (exit 2), naming both
    out = subprocess.run([sys.executable, "-m", "eve_trainer", "sft", "--print-config"],
                         env={**os.environ, **env}, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 2 and "holds the config of stage prealign, but this is stage sft" in out.stderr


def test_eve_train_argv_overrides_are_typed_like_the_cli(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["sft", "mlflow.experiment=2024", "data.urls=s3://bkt/x,y", "mlflow.registered_model=true",
            "optim.betas=[0.9,0.95]", "--print-config"]
    assert eve_train.main(argv) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["mlflow"]["experiment"] == "2024" and cfg["data"]["urls"] == ["s3://bkt/x,y"]
    assert cfg["mlflow"]["registered_model"] == "true" and cfg["optim"]["betas"] == [0.9, 0.95]
    assert eve_train.main(["sft", "optim.lr=inf", "--print-config"]) == 2
    assert "optim.lr='inf': expects a finite number" in capsys.readouterr().err
