"""The operator's and local runner's MLflow records: the pipeline's parent run and stage-run closing.

Over MLflow's REST API (plain HTTP, no mlflow import: the operator stays lean) for http(s)
tracking URIs; the local backend's default SQLite store has no server, so other URIs go
through mlflow's own client, imported only then.

- The parent run (named after the pipeline) carries params fixed at submit (preset, chain,
  maxAttempts, stallTimeoutSeconds) and tags updated as the pipeline moves
  (pipeline.parent_run_tags: phase, current stage, attempts, final checkpoint).
- Stage runs are created by the trainer and nest under it (`mlflow.parentRunId`). When a
  stage's job fails, is killed or stalls, `end_stage_runs` closes the stage's run still
  RUNNING as FAILED or KILLED with the reason in the tag `eve.end_reason`: a SIGKILLed
  trainer cannot close its own run. A retry's trainer reopens it when it resumes.
"""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from eve_contract.tracking_names import experiment_create_fields, get_or_create_experiment

TIMEOUT_S = 5.0
END_REASON_TAG = "eve.end_reason"


class TrackingError(RuntimeError):
    """MLflow could not be reached or refused the request; the message says which."""


def _rest(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def _call(tracking_uri: str, method: str, path: str, body: dict[str, Any] | None = None,
          query: dict[str, str] | None = None, timeout_s: float | None = None) -> dict[str, Any]:
    url = f"{tracking_uri.rstrip('/')}/api/2.0/mlflow/{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    own = (os.environ.get("MLFLOW_TRACKING_URI") or "").rstrip("/")
    # MLflow's basic-auth app (chart: mlflow.auth): the operator's login goes only to its own server,
    # never to a trackingUri a pipeline names
    if user and own and tracking_uri.rstrip("/") == own:
        token = base64.b64encode(f"{user}:{os.environ.get('MLFLOW_TRACKING_PASSWORD', '')}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s or TIMEOUT_S) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")[:300]
        raise TrackingError(f"MLflow {method} {path} at {tracking_uri}: HTTP {err.code} {detail}") from err
    except (OSError, ValueError) as err:
        raise TrackingError(f"MLflow at {tracking_uri} is unreachable: {err}") from err


def _client(tracking_uri: str) -> Any:
    import logging

    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    return MlflowClient(tracking_uri)


def _wrap(tracking_uri: str, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except TrackingError:
        raise
    except Exception as err:  # noqa: BLE001 - mlflow's client raises many kinds
        raise TrackingError(f"MLflow at {tracking_uri}: {type(err).__name__}: {err}") from err


def experiment_id(tracking_uri: str, name: str, *, create: bool = True) -> str | None:
    """The id of the experiment `name`; created when missing (else None)."""
    if not _rest(tracking_uri):
        client = _client(tracking_uri)
        exp = _wrap(tracking_uri, client.get_experiment_by_name, name)
        if exp is not None or not create:
            return exp.experiment_id if exp is not None else None
        return _wrap(tracking_uri, get_or_create_experiment, client, name, tracking_uri)
    try:
        found = _call(tracking_uri, "GET", "experiments/get-by-name", query={"experiment_name": name})
        return str(found["experiment"]["experiment_id"])
    except TrackingError as err:
        if "RESOURCE_DOES_NOT_EXIST" not in str(err):
            raise
        if not create:
            return None
    try:
        # the training kind tag: MLflow 3's UI then opens the experiment on its runs, not on GenAI traces
        tags = [{"key": k, "value": str(v)} for k, v in experiment_create_fields(tracking_uri)["tags"].items()]
        return str(_call(tracking_uri, "POST", "experiments/create", {"name": name, "tags": tags})["experiment_id"])
    except TrackingError as err:  # created meanwhile by a trainer or another pipeline
        if "RESOURCE_ALREADY_EXISTS" not in str(err):
            raise
        found = _call(tracking_uri, "GET", "experiments/get-by-name", query={"experiment_name": name})
        return str(found["experiment"]["experiment_id"])


def create_pipeline_run(tracking_uri: str, experiment: str, name: str, tags: dict[str, str],
                        params: dict[str, str] | None = None) -> str:
    """Start the pipeline's parent run; returns its run id."""
    exp = experiment_id(tracking_uri, experiment)
    tags = {"mlflow.runName": name, **tags}
    if not _rest(tracking_uri):
        client = _client(tracking_uri)
        run_id = _wrap(tracking_uri, lambda: client.create_run(exp, run_name=name, tags=tags).info.run_id)
        for k, v in (params or {}).items():
            _wrap(tracking_uri, client.log_param, run_id, k, v)
        return str(run_id)
    body = {"experiment_id": exp, "run_name": name, "start_time": int(time.time() * 1000),
            "tags": [{"key": k, "value": str(v)} for k, v in tags.items()]}
    run_id = str(_call(tracking_uri, "POST", "runs/create", body)["run"]["info"]["run_id"])
    if params:
        _call(tracking_uri, "POST", "runs/log-batch",
              {"run_id": run_id, "params": [{"key": k, "value": str(v)} for k, v in params.items()]})
    return run_id


def set_tags(tracking_uri: str, run_id: str, tags: dict[str, str]) -> None:
    """Set (overwrite) tags of a run in one request."""
    if not tags:
        return
    if not _rest(tracking_uri):
        client = _client(tracking_uri)
        for k, v in tags.items():
            _wrap(tracking_uri, client.set_tag, run_id, k, v)
        return
    _call(tracking_uri, "POST", "runs/log-batch",
          {"run_id": run_id, "tags": [{"key": k, "value": str(v)} for k, v in tags.items()]})


def log_metrics(tracking_uri: str, run_id: str, values: dict[str, float], step: int = 0) -> None:
    """Log metrics to a run in one request (a finished run takes them too)."""
    if not values:
        return
    ms = int(time.time() * 1000)
    if not _rest(tracking_uri):
        from mlflow.entities import Metric

        _wrap(tracking_uri, _client(tracking_uri).log_batch, run_id,
              [Metric(k, float(v), ms, step) for k, v in values.items()])
        return
    _call(tracking_uri, "POST", "runs/log-batch",
          {"run_id": run_id, "metrics": [{"key": k, "value": float(v), "timestamp": ms, "step": step}
                                         for k, v in values.items()]})


def finish_run(tracking_uri: str, run_id: str, status: str) -> None:
    """Close a run: status FINISHED, FAILED or KILLED."""
    if not _rest(tracking_uri):
        _wrap(tracking_uri, _client(tracking_uri).set_terminated, run_id, status)
        return
    _call(tracking_uri, "POST", "runs/update",
          {"run_id": run_id, "status": status, "end_time": int(time.time() * 1000)})


def end_stage_runs(tracking_uri: str, experiment: str, pipeline: str, stage: str, parent_run_id: str | None,
                   status: str, reason: str) -> list[str]:
    """Close the stage's runs still RUNNING as `status` (FAILED/KILLED), tagging the reason.

    Found by the trainer's tags eve.pipeline and eve.stage (and the parent run, when there is
    one). Returns the ids closed.
    """
    exp = experiment_id(tracking_uri, experiment, create=False)
    if exp is None:
        return []
    query = (f"tags.`eve.pipeline` = '{_quote(pipeline)}' and tags.`eve.stage` = '{_quote(stage)}' "
             "and attributes.status = 'RUNNING'")
    if parent_run_id:
        query += f" and tags.`mlflow.parentRunId` = '{_quote(parent_run_id)}'"
    if not _rest(tracking_uri):
        client = _client(tracking_uri)
        ids = [r.info.run_id for r in _wrap(tracking_uri, lambda: client.search_runs([exp], query, max_results=50))]
    else:
        found = _call(tracking_uri, "POST", "runs/search",
                      {"experiment_ids": [exp], "filter": query, "max_results": 50})
        ids = [r["info"]["run_id"] for r in found.get("runs", [])]
    for run_id in ids:
        set_tags(tracking_uri, run_id, {END_REASON_TAG: reason[:5000]})
        finish_run(tracking_uri, run_id, status)
    return ids


class RunRecords:
    """One pipeline's MLflow records as a backend keeps them. Never raises: tracking never
    stops training. Failures go to `warn`; after one, tag updates pause for RETRY_S."""

    RETRY_S = 60.0

    def __init__(self, tracking_uri: str | None, experiment: str, pipeline: str, warn: Any = print):
        self.uri, self.experiment, self.pipeline, self.warn = tracking_uri, experiment, pipeline, warn
        self.pushed: dict[str, str] = {}
        self.failed_at: float | None = None

    def _try(self, what: str, fn: Any, *args: Any) -> tuple[bool, Any]:
        try:
            result = fn(*args)
        except TrackingError as err:
            self.failed_at = time.monotonic()
            self.warn(f"{what}: {err}")
            return False, None
        self.failed_at = None
        return True, result

    def start(self, tags: dict[str, str], params: dict[str, str]) -> str | None:
        """Create the parent run; None without a tracking URI or when MLflow is unavailable."""
        if not self.uri:
            return None
        return self._try("continuing without an MLflow parent run", create_pipeline_run,
                         self.uri, self.experiment, self.pipeline, tags, params)[1]

    def sync(self, run_id: str | None, tags: dict[str, str]) -> None:
        """Write the tags that changed since the last successful write."""
        if not self.uri or not run_id:
            return
        if self.failed_at is not None and time.monotonic() - self.failed_at < self.RETRY_S:
            return
        changed = {k: v for k, v in tags.items() if self.pushed.get(k) != v}
        if changed and self._try("could not update the MLflow parent run", set_tags, self.uri, run_id, changed)[0]:
            self.pushed.update(changed)

    def end_stage(self, parent_run_id: str | None, stage: str, status: str, reason: str) -> list[str]:
        if not self.uri:
            return []
        return self._try(f"could not close the MLflow run of stage {stage}", end_stage_runs, self.uri,
                         self.experiment, self.pipeline, stage, parent_run_id, status, reason)[1] or []

    def log_goodput(self, old: Any, new: Any, now: float) -> None:
        """`goodput/*` (eve_contract.goodput) on the parent run, and on each stage run whose
        stage has just completed. `old` / `new`: the PipelineStatus before and after a pass."""
        from eve_operator.pipeline import pipeline_goodput, stage_goodput

        if not self.uri:
            return
        if new.mlflow_run_id:
            self._try("could not log goodput to the MLflow parent run", log_metrics, self.uri, new.mlflow_run_id,
                      pipeline_goodput(new, now).metrics())
        before = {s.name: s.state for s in old.stages}
        for stage in new.stages:
            if stage.state == "Succeeded" and before.get(stage.name) != "Succeeded" and stage.mlflow_run_id:
                self._try(f"could not log goodput to the MLflow run of stage {stage.name}", log_metrics, self.uri,
                          stage.mlflow_run_id, stage_goodput(stage, now).metrics())

    def finish(self, run_id: str | None, status: str) -> None:
        if self.uri and run_id:
            self._try(f"could not close MLflow run {run_id}", finish_run, self.uri, run_id, status)


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def find_child_run(tracking_uri: str, parent_run_id: str, tags: dict[str, str], *,
                   timeout_s: float = TIMEOUT_S) -> str | None:
    """The newest run under `parent_run_id` carrying `tags` (a stage's run while it trains)."""
    clauses = [f"tags.`mlflow.parentRunId` = '{_quote(parent_run_id)}'"]
    clauses += [f"tags.`{k}` = '{_quote(v)}'" for k, v in tags.items()]
    order = ["attributes.start_time DESC"]
    if not _rest(tracking_uri):  # a local store (the local backend's sqlite): the client library
        try:
            client = _client(tracking_uri)
        except ImportError as err:
            raise TrackingError(f"reading {tracking_uri} needs the mlflow package ({err})") from None
        experiment = _wrap(tracking_uri, client.get_run, parent_run_id).info.experiment_id
        found = _wrap(tracking_uri, lambda: client.search_runs([experiment], filter_string=" and ".join(clauses),
                                                               max_results=1, order_by=order))
        return found[0].info.run_id if found else None
    parent = _call(tracking_uri, "GET", "runs/get", query={"run_id": parent_run_id}, timeout_s=timeout_s)
    experiment = parent["run"]["info"]["experiment_id"]
    found = _call(tracking_uri, "POST", "runs/search",
                  {"experiment_ids": [experiment], "filter": " and ".join(clauses),
                   "order_by": order, "max_results": 1}, timeout_s=timeout_s)
    runs = found.get("runs") or []
    return str(runs[0]["info"]["run_id"]) if runs else None


__all__ = ["RunRecords", "TrackingError", "create_pipeline_run", "finish_run", "log_metrics", "set_tags", "end_stage_runs",
           "experiment_id", "find_child_run", "END_REASON_TAG"]
