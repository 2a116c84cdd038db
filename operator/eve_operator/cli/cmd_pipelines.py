"""`eve-platform list|status|describe|logs|cancel`: what pipelines are doing, and stopping one."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer

from eve_operator.cli import output
from eve_operator.cli.common import (
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    BackendOpt,
    LocalOpt,
    NamespaceOpt,
    OutputOpt,
    _backend_call,
    _kube,
    app,
    fail,
    info,
    pick_backend,
)
from eve_operator.cli.output import Format

# -- status, list, describe --------------------------------------------------------------


def _get(name: str, where: str, namespace: str | None) -> dict[str, Any]:
    if where == "local":
        from eve_operator.backends import local as lb

        record = lb.load(name)
        if record is None:
            fail(f"no local pipeline named {name!r}; `eve-platform list --local` shows them", EXIT_NOT_FOUND)
        return record.to_json()
    obj = _backend_call(_kube().get_pipeline, name, namespace)
    if obj is None:
        fail(f"no EvePipeline {name!r} in namespace {namespace or '(current)'}; `eve-platform list`",
             EXIT_NOT_FOUND)
    return obj


def _list(where: str, namespace: str | None) -> list[dict[str, Any]]:
    if where == "local":
        from eve_operator.backends import local as lb

        return [r.to_json() for r in lb.list_records()]
    return _backend_call(_kube().list_pipelines, namespace)


@app.command("list")
def list_(local: bool = LocalOpt, backend: str = BackendOpt, namespace: Optional[str] = NamespaceOpt,
          output_fmt: Format = OutputOpt) -> None:
    """List pipelines."""
    objs = _list(pick_backend(backend, local), namespace)
    if output_fmt is not Format.table:
        output.emit(objs, output_fmt)
        return
    output.table(output.PIPELINE_HEADERS, output.pipeline_rows(objs),
                 "No pipelines. Start one with `eve-platform submit stage=prealign`.")


@app.command()
def status(name: Optional[str] = typer.Argument(None, help="Pipeline; all when omitted."),
           local: bool = LocalOpt, backend: str = BackendOpt, namespace: Optional[str] = NamespaceOpt,
           output_fmt: Format = OutputOpt) -> None:
    """Phase and per-stage state of one pipeline (or all)."""
    where = pick_backend(backend, local)
    if name is None:
        list_(local, backend, namespace, output_fmt)
        return
    obj = _get(name, where, namespace)
    live = _live(obj)
    if output_fmt is not Format.table:
        output.emit(_with_live(obj.get("status") or {}, live), output_fmt)
        return
    status_ = obj.get("status") or {}
    print(f"{name}: {status_.get('phase', 'Pending')}"
          + (f" (stage {status_['currentStage']})" if status_.get("currentStage") else ""))
    output.table(output.STAGE_HEADERS, output.stage_rows(obj, live), "no stages yet")
    if status_.get("phase") == "Failed":
        raise typer.Exit(EXIT_FAILED)


@app.command()
def describe(name: str, local: bool = LocalOpt, backend: str = BackendOpt,
             namespace: Optional[str] = NamespaceOpt, output_fmt: Format = OutputOpt) -> None:
    """Everything about a pipeline: spec, stages, checkpoints, MLflow runs, events."""
    obj = _get(name, pick_backend(backend, local), namespace)
    live = _live(obj)
    if output_fmt is not Format.table:
        output.emit({**obj, "status": _with_live(obj.get("status") or {}, live)}, output_fmt)
        return
    output.describe(obj, live)


def _live(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A running stage's heartbeat progress and MLflow run (best effort; see cli.progress)."""
    from eve_operator.cli import progress

    if (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return {}
    return progress.live(obj)


def _with_live(status: dict[str, Any], live: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if not live:
        return status
    return {**status, "live": {stage: {"progress": now["progress"].to_json() if now.get("progress") else None,
                                       "mlflowRunId": now.get("mlflowRunId")} for stage, now in live.items()}}


# -- logs, cancel ------------------------------------------------------------------------------


@app.command()
def logs(name: str, stage: Optional[str] = typer.Option(None, "--stage", help="Default: the current stage."),
         rank: int = typer.Option(0, "--rank", help="Local: which rank's log."),
         follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines."),
         local: bool = LocalOpt, backend: str = BackendOpt, namespace: Optional[str] = NamespaceOpt) -> None:
    """Print the logs of a stage's job (rank 0 / the master pod by default)."""
    where = pick_backend(backend, local)
    obj = _get(name, where, namespace)
    status_ = obj.get("status") or {}
    stages = status_.get("stages") or []
    stage = stage or status_.get("currentStage") or next(
        (s["name"] for s in reversed(stages) if s.get("attempt")), None)
    entry = next((s for s in stages if s["name"] == stage), None)
    if entry is None or not entry.get("attempt"):
        fail(f"stage {stage!r} of {name} has not started; stages: "
             + ", ".join(f"{s['name']} ({s.get('state')})" for s in stages), EXIT_NOT_FOUND)
    if where == "local":
        from eve_operator.backends import local as lb

        path = lb.log_dir(name, stage, entry["attempt"]) / f"rank-{rank}.log"
        if not path.is_file():
            fail(f"no log at {path}", EXIT_NOT_FOUND)
        _print_file(path, follow, lambda: bool(lb.load(name).runner_alive))
        return
    kube = _kube()
    pods = _backend_call(kube.stage_pods, name, namespace, stage)
    if not pods:
        fail(f"no pods for stage {stage} of {name} yet", EXIT_NOT_FOUND)
    for line in _backend_call(kube.pod_logs, pods[0], namespace, follow):
        print(line)


def _print_file(path: Path, follow: bool, alive: Any) -> None:
    with open(path, errors="replace") as f:
        while True:
            chunk = f.read()
            if chunk:
                sys.stdout.write(chunk)
                sys.stdout.flush()
            elif not follow or not alive():
                return
            else:
                time.sleep(0.5)


@app.command()
def cancel(name: str, local: bool = LocalOpt, backend: str = BackendOpt,
           namespace: Optional[str] = NamespaceOpt) -> None:
    """Stop a pipeline: its current job is stopped (checkpointing first) and it is marked Failed."""
    where = pick_backend(backend, local)
    if where == "kubernetes":
        _get(name, where, namespace)
        _backend_call(_kube().delete_pipeline, name, namespace)
        info(f"EvePipeline {name} deleted; its PyTorchJobs are deleted with it")
        return
    import signal

    from eve_operator.backends import local as lb

    record = lb.load(name)
    if record is None:
        fail(f"no local pipeline named {name!r}", EXIT_NOT_FOUND)
    if not record.runner_alive:
        info(f"pipeline {name} is not running (phase {record.status.phase})")
        return
    os.kill(record.runner_pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and lb.load(name).runner_alive:
        time.sleep(0.5)
    info(f"pipeline {name} cancelled")
