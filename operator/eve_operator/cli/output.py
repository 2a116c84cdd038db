"""Output for humans (tables, kubectl style) and machines (-o json|yaml)."""

from __future__ import annotations

import json
import sys
import time
from enum import Enum
from typing import Any

import yaml


class Format(str, Enum):
    table = "table"
    json = "json"
    yaml = "yaml"


def emit(data: Any, fmt: Format) -> None:
    if fmt is Format.json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    else:
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))


def age(created: float | str | None) -> str:
    if created is None:
        return "-"
    if isinstance(created, str):
        from datetime import datetime

        created = datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
    secs = max(int(time.time() - created), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{secs}s"


def table(headers: list[str], rows: list[list[Any]], empty: str) -> None:
    if not rows:
        print(empty)
        return
    cells = [[("-" if v in (None, "") else str(v)) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("   ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    for row in cells:
        print("   ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def pipeline_rows(objs: list[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for obj in objs:
        status = obj.get("status") or {}
        stages = status.get("stages") or []
        done = sum(1 for s in stages if s.get("state") == "Succeeded")
        rows.append([obj["metadata"]["name"], obj["metadata"].get("backend", "kubernetes"),
                     status.get("phase", "Pending"), status.get("currentStage"),
                     f"{done}/{len(stages)}" if stages else "-",
                     age(obj["metadata"].get("creationTimestamp"))])
    return rows


PIPELINE_HEADERS = ["NAME", "BACKEND", "PHASE", "STAGE", "DONE", "AGE"]
STAGE_HEADERS = ["STAGE", "STATE", "ATTEMPT", "JOB", "CHECKPOINT", "MLFLOW RUN", "PROGRESS", "MESSAGE"]


def stage_rows(obj: dict[str, Any], live: dict[str, dict[str, Any]] | None = None) -> list[list[Any]]:
    """One row per stage; `live` (cli.progress.live) adds a running stage's progress and run id;
    a finished stage's PROGRESS is its last validation loss ('val 0.241@300'), when it had one."""
    from eve_operator.cli.progress import short, val_short

    rows = []
    for s in (obj.get("status") or {}).get("stages") or []:
        now = (live or {}).get(s["name"]) or {}
        shown = short(now.get("progress"))
        if not shown and isinstance(s.get("valLoss"), int | float):
            shown = val_short(s["valLoss"], s.get("valStep"))
        rows.append([s["name"], s.get("state"), s.get("attempt") or "-", s.get("jobName"), s.get("checkpoint"),
                     s.get("mlflowRunId") or now.get("mlflowRunId"), shown, (s.get("message") or "")[:80]])
    return rows


def summary_table(stages: list[Any]) -> tuple[list[str], list[list[Any]]]:
    """The end-of-run table of `submit --local` (pipeline.StageStatus rows), with a VAL LOSS column
    (the held-out loss each stage ended with, validation.data) when any stage had one."""
    from eve_operator.pipeline import val_text

    headers, rows = ["STAGE", "STATE", "ATTEMPT", "CHECKPOINT"], [[s.name, s.state, s.attempt, s.checkpoint]
                                                                    for s in stages]
    if any(s.val_loss is not None for s in stages):
        headers = [*headers, "VAL LOSS"]
        rows = [[*row, "-" if s.val_loss is None else val_text(s.val_loss, s.val_step)]
                for row, s in zip(rows, stages, strict=True)]
    return headers, rows


def goodput_lines(status: dict[str, Any], *, stages: bool = False, now: float | None = None) -> list[str]:
    """'Goodput:     goodput 71% of 1h02m: queued 3m, ... (2 steps redone, 1 restart)' for the
    pipeline, then (stages=True) one line per stage that ran. Empty before any stage ran."""
    from pydantic import ValidationError

    from eve_operator.pipeline import PipelineStatus, pipeline_goodput, stage_goodput

    try:
        parsed = PipelineStatus.model_validate({k: v for k, v in status.items() if k in ("phase", "stages")})
    except ValidationError:
        return []
    ran = [s for s in parsed.stages if s.segments]
    if not ran:
        return []
    now = time.time() if now is None else now
    lines = [f"Goodput:     {pipeline_goodput(parsed, now).line()}"]
    if stages:
        lines += [f"             {s.name}: {stage_goodput(s, now).line()}" for s in ran]
    return lines


def describe(obj: dict[str, Any], live: dict[str, dict[str, Any]] | None = None) -> None:
    meta, spec, status = obj["metadata"], obj.get("spec", {}), obj.get("status") or {}
    print(f"Name:        {meta['name']}")
    print(f"Backend:     {meta.get('backend', 'kubernetes')}"
          + (f"   Namespace: {meta['namespace']}" if meta.get("namespace") else ""))
    print(f"Phase:       {status.get('phase', 'Pending')}")
    print(f"Stage:       {status.get('currentStage') or '-'}")
    print(f"Preset:      {spec.get('preset')}   Output: {spec.get('output')}")
    if status.get("mlflowRunId"):
        uri = (spec.get("mlflow") or {}).get("trackingUri") or \
            ((status.get("effective") or {}).get("mlflow.trackingUri") or {}).get("value")
        print(f"MLflow run:  {status['mlflowRunId']} ({uri})")
    if status.get("message"):
        print(f"Message:     {status['message']}")
    from eve_operator.cli.progress import duration, rate
    from eve_operator.pipeline import val_text

    for stage, now in (live or {}).items():
        p = now.get("progress")
        if p is not None:
            val = "" if p.val_loss is None else f", validation loss {val_text(p.val_loss, p.val_step)}"
            print(f"Progress:    {stage}: step {p.step}/{p.total_steps}, loss "
                  f"{'-' if p.loss is None else f'{p.loss:.4f}'}{val}, {rate(p.tokens_per_s)} tokens/s, "
                  f"ETA {duration(p.eta_s)} ({p.ranks} rank(s) reporting, {p.phase})")
        if now.get("mlflowRunId"):
            print(f"Stage run:   {stage}: MLflow run {now['mlflowRunId']}")
    for line in goodput_lines(status, stages=True):
        print(line)
    effective = status.get("effective") or {}
    if effective:
        print("\nEffective settings (source: pipeline | operator default | built-in):")
        table(["FIELD", "VALUE", "SOURCE"],
              [[f"spec.{k}", v.get("value"), v.get("source")] for k, v in effective.items()], "")
    print("\nStages:")
    table(STAGE_HEADERS, stage_rows(obj, live), "  (none yet)")
    events = obj.get("events") or []
    print("\nEvents:")
    table(["AGE", "TYPE", "REASON", "MESSAGE"],
          [[age(e.get("time")), e.get("type"), e.get("reason"), e.get("message")] for e in events[-15:]],
          "  <none>")
