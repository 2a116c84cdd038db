"""A running stage's progress for `status`, `describe` and `submit --wait`.

Where it comes from: each rank's heartbeat (eve_contract.layout.read_heartbeats:
<output>/<pipeline>/<stage>/heartbeat/rank-<r>.json with step, total_steps, loss,
tokens_per_s, eta_s, and val_loss/val_step once a validation pass ran), read from the
pipeline's store with the caller's own credentials; the stage's MLflow run from the tracking server (runs tagged eve.stage under the pipeline's
parent run). Both are best effort with short timeouts: when the store or the server cannot be
reached from this machine, the status alone is shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eve_contract.layout import Heartbeat


@dataclass(frozen=True)
class Progress:
    step: int
    total_steps: int
    loss: float | None
    tokens_per_s: float | None
    eta_s: float | None
    ranks: int
    phase: str
    val_loss: float | None = None
    """The newest validation loss (held-out samples, validation.data) and the step it was measured at."""
    val_step: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "totalSteps": self.total_steps, "loss": self.loss,
                "tokensPerSecond": self.tokens_per_s, "etaSeconds": self.eta_s, "ranks": self.ranks,
                "phase": self.phase, "valLoss": self.val_loss, "valStep": self.val_step}


def summarize(beats: list[Heartbeat], attempt: int | None = None) -> Progress | None:
    """One stage's progress from its ranks' beats: the slowest rank's step, rank 0's loss,
    validation loss and throughput (the trainer reports the global tokens/s and every rank the
    same all-reduced validation loss), the largest ETA."""
    if attempt:
        beats = [b for b in beats if b.attempt == attempt]  # a restarted stage: not the old attempt's
    if not beats:
        return None
    first = min(beats, key=lambda b: b.rank)
    etas = [b.eta_s for b in beats if b.eta_s is not None]
    return Progress(step=min(b.step for b in beats), total_steps=max(b.total_steps for b in beats),
                    loss=first.loss, tokens_per_s=first.tokens_per_s, eta_s=max(etas) if etas else None,
                    ranks=len(beats), phase=first.phase, val_loss=first.val_loss, val_step=first.val_step)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def rate(value: float | None) -> str:
    if value is None:
        return "-"
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.0f}"


def short(p: Progress | None) -> str:
    """'120/1000 (12%) loss 2.314 val 2.401@100 12.3k tok/s ETA 14m05s' (status tables, --local lines)."""
    if p is None:
        return ""
    if p.phase == "startup" or not p.total_steps:
        return f"starting ({p.ranks} rank(s))"
    pct = 100 * p.step / p.total_steps
    parts = [f"{p.step}/{p.total_steps} ({pct:.0f}%)"]
    if p.loss is not None:
        parts.append(f"loss {p.loss:.3f}")
    if p.val_loss is not None:
        parts.append(val_short(p.val_loss, p.val_step))
    if p.tokens_per_s is not None:
        parts.append(f"{rate(p.tokens_per_s)} tok/s")
    if p.eta_s is not None and p.step < p.total_steps:
        parts.append(f"ETA {duration(p.eta_s)}")
    if p.phase == "checkpoint":
        parts.append("checkpointing")
    elif p.phase == "validation":
        parts.append("validating")
    return " ".join(parts)


def val_short(loss: float, step: int | None) -> str:
    """'val 2.401@100': a validation loss and its step, in a progress line or a table cell."""
    return f"val {loss:.3f}" + (f"@{step}" if step is not None else "")


# -- reading (I/O, best effort) ---------------------------------------------------------------


def _store(output: str, endpoint_url: str | None, region: str | None) -> Any:
    from eve_contract.storage import S3Store, open_store

    store = open_store(output, endpoint_url=endpoint_url, region=region)
    if isinstance(store, S3Store):  # a status call must not hang on a store this machine cannot reach
        import boto3
        from botocore.config import Config

        store.client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, region_name=region or "us-east-1",
            config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1},
                          s3={"addressing_style": "path"} if endpoint_url else {}))
    return store


def stage_progress(spec: dict[str, Any], effective: dict[str, Any], pipeline: str, stage: str,
                   attempt: int | None) -> Progress | None:
    """The stage's progress from its heartbeats, or None when none can be read."""
    from eve_contract.layout import read_heartbeats

    def value(path: str, raw: Any) -> Any:
        return raw if raw not in (None, "") else (effective.get(path) or {}).get("value") or None

    s3 = spec.get("s3") or {}
    try:
        store = _store(spec["output"], value("s3.endpointUrl", s3.get("endpointUrl")),
                       value("s3.region", s3.get("region")))
        return summarize(read_heartbeats(store, pipeline, stage), attempt)
    except Exception:  # noqa: BLE001 - no credentials here, unreachable endpoint: status only
        return None


def stage_run_id(tracking_uri: str | None, parent_run_id: str | None, stage: str) -> str | None:
    """The newest MLflow run of `stage` under the pipeline's parent run, once the trainer made it."""
    if not tracking_uri or not parent_run_id:
        return None
    from eve_operator import tracking

    try:
        return tracking.find_child_run(tracking_uri, parent_run_id, {"eve.stage": stage}, timeout_s=2.0)
    except tracking.TrackingError:
        return None


def live(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{stage: {"progress": Progress | None, "mlflowRunId": str | None}} for the running stage(s)."""
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    effective = status.get("effective") or {}
    tracking_uri = (spec.get("mlflow") or {}).get("trackingUri") \
        or (effective.get("mlflow.trackingUri") or {}).get("value")
    out = {}
    for s in status.get("stages") or []:
        if s.get("state") not in ("Running", "Submitted"):
            continue
        out[s["name"]] = {
            "progress": stage_progress(spec, effective, obj["metadata"]["name"], s["name"], s.get("attempt")),
            "mlflowRunId": s.get("mlflowRunId") or stage_run_id(tracking_uri, status.get("mlflowRunId"), s["name"]),
        }
    return out


__all__ = ["Progress", "summarize", "short", "val_short", "live", "stage_progress", "stage_run_id", "duration"]
