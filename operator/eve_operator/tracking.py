"""The pipeline's parent MLflow run, over MLflow's REST API (plain HTTP, no mlflow import).

Stage runs (created by the trainer) nest under it through `mlflow.parent_run_id`.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

TIMEOUT_S = 5.0


class TrackingError(RuntimeError):
    """MLflow could not be reached or refused the request; the message says which."""


def _call(tracking_uri: str, method: str, path: str, body: dict[str, Any] | None = None,
          query: dict[str, str] | None = None, timeout_s: float | None = None) -> dict[str, Any]:
    url = f"{tracking_uri.rstrip('/')}/api/2.0/mlflow/{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s or TIMEOUT_S) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")[:300]
        raise TrackingError(f"MLflow {method} {path} at {tracking_uri}: HTTP {err.code} {detail}") from err
    except (OSError, ValueError) as err:
        raise TrackingError(f"MLflow at {tracking_uri} is unreachable: {err}") from err


def experiment_id(tracking_uri: str, name: str) -> str:
    """The id of the experiment `name`, created when missing."""
    try:
        found = _call(tracking_uri, "GET", "experiments/get-by-name", query={"experiment_name": name})
        return str(found["experiment"]["experiment_id"])
    except TrackingError as err:
        if "RESOURCE_DOES_NOT_EXIST" not in str(err):
            raise
    try:
        return str(_call(tracking_uri, "POST", "experiments/create", {"name": name})["experiment_id"])
    except TrackingError as err:  # created meanwhile by a trainer or another pipeline
        if "RESOURCE_ALREADY_EXISTS" not in str(err):
            raise
        found = _call(tracking_uri, "GET", "experiments/get-by-name", query={"experiment_name": name})
        return str(found["experiment"]["experiment_id"])


def create_pipeline_run(tracking_uri: str, experiment: str, name: str, tags: dict[str, str]) -> str:
    """Start the pipeline's parent run; returns its run id."""
    body = {"experiment_id": experiment_id(tracking_uri, experiment), "run_name": name,
            "start_time": int(time.time() * 1000),
            "tags": [{"key": k, "value": str(v)} for k, v in {"mlflow.runName": name, **tags}.items()]}
    return str(_call(tracking_uri, "POST", "runs/create", body)["run"]["info"]["run_id"])


def finish_run(tracking_uri: str, run_id: str, status: str) -> None:
    """Close a run: status FINISHED, FAILED or KILLED."""
    _call(tracking_uri, "POST", "runs/update",
          {"run_id": run_id, "status": status, "end_time": int(time.time() * 1000)})



def find_child_run(tracking_uri: str, parent_run_id: str, tags: dict[str, str], *,
                   timeout_s: float = TIMEOUT_S) -> str | None:
    """The newest run under `parent_run_id` carrying `tags` (a stage's run while it trains)."""
    parent = _call(tracking_uri, "GET", "runs/get", query={"run_id": parent_run_id}, timeout_s=timeout_s)
    experiment = parent["run"]["info"]["experiment_id"]
    clauses = [f"tags.`mlflow.parentRunId` = '{parent_run_id}'"]
    clauses += [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
    found = _call(tracking_uri, "POST", "runs/search",
                  {"experiment_ids": [experiment], "filter": " and ".join(clauses),
                   "order_by": ["attributes.start_time DESC"], "max_results": 1}, timeout_s=timeout_s)
    runs = found.get("runs") or []
    return str(runs[0]["info"]["run_id"]) if runs else None


__all__ = ["TrackingError", "create_pipeline_run", "finish_run", "experiment_id", "find_child_run"]
