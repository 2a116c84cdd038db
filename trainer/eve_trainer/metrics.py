"""Experiment tracking behind a small interface: a null logger and an MLflow backend.

Only rank 0 tracks. The MLflow logger never blocks or crashes training: every call is
queued to a background thread that creates the run, sends params, metrics, tags and
artifacts in order, and retries with backoff while the tracking server is unreachable.
Requests the server rejects (4xx) are dropped with a warning instead of retried.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from eve_contract.tracking_names import get_or_create_experiment
from eve_trainer.registry import ExportVersion, register_export

log = logging.getLogger("eve_trainer.metrics")


class BaseLogger:
    """The null logger, used when tracking is disabled and on ranks other than 0."""

    run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def log_dict(self, obj: Mapping[str, Any], artifact_file: str) -> None: ...
    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None: ...
    def log_datasets(self, datasets: list[DatasetRef]) -> None: ...
    def register_export(self, export: ExportVersion) -> None: ...
    def wait_for_run(self, timeout_s: float) -> str | None:
        return self.run_id
    def close(self, status: str = "FINISHED", timeout_s: float = 30.0) -> None: ...


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{'optim': {'lr': 1e-3}} -> {'optim.lr': '0.001'} (MLflow params are strings)."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = str(value)[:6000]
    return out


_NOTHING = object()


@dataclass(frozen=True)
class DatasetRef:
    """A training dataset as an MLflow dataset input: its URL, sample count and index digest."""

    url: str
    num_samples: int
    digest: str
    kind: str = "caption"
    context: str = "train"

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1] or self.url


def dataset_refs(urls: list[str], *, endpoint_url: str | None = None, region: str | None = None,
                 ) -> list[DatasetRef]:
    """One DatasetRef per dataset root, from its index.json (one small read each)."""
    from eve_contract.storage import open_store
    from eve_trainer.data.index import INDEX_FILE

    refs = []
    for url in urls:
        raw = open_store(url, endpoint_url=endpoint_url, region=region).get_bytes(INDEX_FILE)
        index = json.loads(raw)
        samples = index.get("num_samples") or sum(int(s["samples"]) for s in index.get("shards", []))
        refs.append(DatasetRef(url=url, num_samples=int(samples), kind=str(index.get("kind", "caption")),
                               digest=hashlib.sha256(raw).hexdigest()[:32]))
    return refs


class MLflowLogger(BaseLogger):
    """One MLflow run per stage, nested under the pipeline run when `parent_run_id` is given.

    `resume_run_id` reopens the run of an interrupted attempt (from the checkpoint) so a
    preempted stage keeps one run and one metric history.
    """

    def __init__(self, *, tracking_uri: str, experiment: str, run_name: str,
                 tags: Mapping[str, str] | None = None, parent_run_id: str | None = None,
                 resume_run_id: str | None = None, system_metrics: bool = True,
                 system_metrics_interval_s: float = 30.0,
                 max_backoff_s: float = 30.0, flush_interval_s: float = 1.0):
        # fail fast per request; the worker does the retrying (MLflow's default is 7 retries
        # with exponential backoff and a 120 s timeout per request)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self.tags = dict(tags or {})
        if parent_run_id:
            self.tags["mlflow.parentRunId"] = parent_run_id
        self.resume_run_id = resume_run_id
        self.system_metrics, self.system_metrics_interval_s = system_metrics, system_metrics_interval_s
        self.max_backoff_s, self.flush_interval_s = max_backoff_s, flush_interval_s
        self.run_id: str | None = None
        self.dropped = 0
        self._queue: queue.Queue[Any] = queue.Queue()
        self._run_ready = threading.Event()
        self._closing = threading.Event()
        self._monitor: Any = None
        self._thread = threading.Thread(target=self._work, name="mlflow-logger", daemon=True)
        self._thread.start()

    # -- public API: all non-blocking ------------------------------------------------------

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = list(flatten(params).items())
        for i in range(0, len(items), 100):  # log_batch takes at most 100 params
            chunk = items[i:i + 100]
            self._put("op", lambda c, r, chunk=chunk: c.log_batch(r, params=[_param(k, v) for k, v in chunk]))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        tags = {k: str(v) for k, v in tags.items() if v is not None}
        self._put("op", lambda c, r: c.log_batch(r, tags=[_tag(k, v) for k, v in tags.items()]))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        stamp = int(time.time() * 1000)
        self._put("metrics", [(k, float(v), stamp, step) for k, v in metrics.items()])

    def log_text(self, text: str, artifact_file: str) -> None:
        self._put("op", lambda c, r: c.log_text(r, text, artifact_file))

    def log_dict(self, obj: Mapping[str, Any], artifact_file: str) -> None:
        obj = json.loads(json.dumps(obj, default=str))  # a snapshot: later changes are not logged
        self._put("op", lambda c, r: c.log_dict(r, obj, artifact_file))

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        """Upload a local folder (or file) to the run, in order with everything else queued."""
        self._put("op", lambda c, r: c.log_artifacts(r, local_dir, artifact_path))

    def log_datasets(self, datasets: list[DatasetRef]) -> None:
        def op(c: Any, r: str) -> None:
            from mlflow.entities import Dataset, DatasetInput, InputTag

            inputs = [DatasetInput(
                Dataset(name=d.name, digest=d.digest, source_type="s3" if d.url.startswith("s3://") else "local",
                        source=json.dumps({"uri": d.url}),
                        profile=json.dumps({"num_samples": d.num_samples, "kind": d.kind})),
                tags=[InputTag("mlflow.data.context", d.context)]) for d in datasets]
            c.log_inputs(r, datasets=inputs)

        self._put("op", op)

    def register_export(self, export: ExportVersion) -> None:
        """A new version of the family's registered model for this stage's verified export."""
        self._put("op", lambda c, r: register_export(c, export, run_id=r))

    def wait_for_run(self, timeout_s: float) -> str | None:
        self._run_ready.wait(timeout_s)
        return self.run_id

    def close(self, status: str = "FINISHED", timeout_s: float = 30.0) -> None:
        """Flush what is queued (up to timeout_s), end the run, stop the worker."""
        if self._closing.is_set():
            return
        if self._monitor is not None:  # before the run ends: a monitor stops at a terminated run
            self._put("op", lambda c, r: self._final_system_sample())
        self._put("op", lambda c, r: c.set_terminated(r, status))
        self._queue.put(None)
        # a server that never answered is not worth the whole wait
        self._thread.join(timeout_s if self._run_ready.is_set() else min(timeout_s, 5.0))
        self._closing.set()
        if self._thread.is_alive():
            log.warning("MLflow at %s: gave up flushing after %.0f s; %d queued calls dropped",
                        self.tracking_uri, timeout_s, self._queue.qsize())
        if self._monitor is not None:
            try:
                self._monitor.finish()
            except Exception:  # noqa: BLE001 - tracking must never fail the job
                pass

    # -- worker ---------------------------------------------------------------------------

    def _put(self, kind: str, payload: Any) -> None:
        if not self._closing.is_set():
            self._queue.put((kind, payload))

    def _work(self) -> None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.tracking_uri)
        self._retry(lambda: self._start_run(client), "start run")
        pending: Any = _NOTHING
        while True:
            item = pending if pending is not _NOTHING else self._queue.get()
            pending = _NOTHING
            if item is None:
                return
            kind, payload = item
            if kind != "metrics":
                self._retry(lambda op=payload: op(client, self.run_id), "call")
                continue
            # coalesce metric points arriving within flush_interval_s into one request: fewer
            # requests, and less time this thread holds the GIL while the training loop runs
            points = list(payload)
            deadline = time.monotonic() + self.flush_interval_s
            while len(points) < 900 and (remaining := deadline - time.monotonic()) > 0:
                try:
                    nxt = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
                if nxt is None or nxt[0] != "metrics":
                    pending = nxt  # handled next, in order
                    break
                points.extend(nxt[1])
            self._retry(lambda p=points: client.log_batch(self.run_id, metrics=[_metric(*x) for x in p]),
                        "log metrics")

    def _retry(self, fn: Callable[[], Any], what: str) -> None:
        delay = 1.0
        while True:
            try:
                fn()
                return
            except Exception as err:  # noqa: BLE001
                if _is_client_error(err):
                    self.dropped += 1
                    log.warning("MLflow rejected %s: %s", what, str(err)[:300])
                    return
                if self._closing.is_set():
                    return
                log.warning("MLflow at %s unreachable (%s); retrying in %.0f s", self.tracking_uri,
                            str(err).splitlines()[0][:200] if str(err) else type(err).__name__, delay)
                time.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)

    def _start_run(self, client: Any) -> None:
        from mlflow.exceptions import MlflowException

        run_id = None
        if self.resume_run_id:
            try:
                client.update_run(self.resume_run_id, status="RUNNING")
                run_id = self.resume_run_id
            except MlflowException as err:
                if not _is_client_error(err):
                    raise
                log.warning("cannot reopen MLflow run %s (%s); starting a new one", self.resume_run_id, err)
        if run_id is None:
            exp_id = get_or_create_experiment(client, self.experiment, self.tracking_uri)
            run_id = client.create_run(exp_id, run_name=self.run_name, tags=self.tags).info.run_id
        self.run_id = run_id
        self._run_ready.set()
        if self.system_metrics:
            self._start_system_metrics(run_id)

    def _final_system_sample(self) -> None:
        """Stop the monitor and log one last sample, so a stage shorter than the sampling
        interval still has system metrics (MLflow's monitor drops its unfinished interval)."""
        monitor, self._monitor = self._monitor, None
        if monitor is None:
            return
        try:
            monitor.finish()
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()
        except Exception as err:  # noqa: BLE001 - tracking must never fail the job
            log.warning("last system-metrics sample not logged: %s", err)

    def _start_system_metrics(self, run_id: str) -> None:
        try:
            import psutil  # noqa: F401 - the monitor needs it
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        except ImportError:
            log.warning("psutil is not installed: no MLflow system metrics")
            return
        try:
            self._monitor = SystemMetricsMonitor(run_id, sampling_interval=self.system_metrics_interval_s,
                                                 samples_before_logging=1,
                                                 resume_logging=bool(self.resume_run_id),
                                                 tracking_uri=self.tracking_uri)
            self._monitor.start()
        except Exception as err:  # noqa: BLE001
            log.warning("MLflow system metrics disabled: %s", err)


def _is_client_error(err: Exception) -> bool:
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(err, RestException):
        status = err.get_http_status_code()
        return 400 <= status < 500 and status not in (408, 429)
    if isinstance(err, MlflowException):
        code = str(getattr(err, "error_code", ""))
        return code in ("INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST",
                        "BAD_REQUEST") and "API request" not in str(err)
    return False


def _param(key: str, value: str) -> Any:
    from mlflow.entities import Param

    return Param(key, value)


def _tag(key: str, value: str) -> Any:
    from mlflow.entities import RunTag

    return RunTag(key, value)


def _metric(key: str, value: float, stamp: int, step: int) -> Any:
    from mlflow.entities import Metric

    return Metric(key, value, stamp, step)


def build_logger(*, tracking_uri: str | None, is_main: bool, **kwargs: Any) -> BaseLogger:
    if not tracking_uri or not is_main:
        return BaseLogger()
    return MLflowLogger(tracking_uri=tracking_uri, **kwargs)
