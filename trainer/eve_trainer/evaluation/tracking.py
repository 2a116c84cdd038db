"""Scores to MLflow: on the export's stage run (metrics `eval/<bench>/<metric>`, the answers and
scores files as artifacts under `eval/<bench>/`) and as tags of the registered model version(s)
of that export. Best effort: a tracking outage never fails an evaluation (a warning says so).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eve_contract import tracking_names as N
from eve_trainer.evaluation import paths

PREFIX = "eval"


def metric_name(bench: str, metric: str) -> str:
    return f"{PREFIX}/{bench}/{metric}"


def _versions(client: Any, ref: Any) -> list[tuple[str, str]]:
    """Registered versions of this export: the one named, else those of its run with its manifest."""
    if ref.registered:
        return [ref.registered]
    if not ref.run_id:
        return []
    found = []
    for mv in client.search_model_versions(f"run_id='{ref.run_id}'"):
        if not ref.manifest_sha256 or (mv.tags or {}).get(N.TAG_MANIFEST_SHA256) == ref.manifest_sha256:
            found.append((mv.name, str(mv.version)))
    return found


def record_results(tracking_uri: str, ref: Any, results: dict[str, dict[str, float]], out_store: Any,
                   say: Callable[[str], None]) -> str | None:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri)
        run_id = ref.run_id
        if run_id is None and ref.registered:
            run_id = client.get_model_version(*ref.registered).run_id
        stamp = int(time.time() * 1000)
        step = int(ref.manifest.get("step") or 0)
        if run_id:
            metrics = [Metric(metric_name(b, k), float(v), stamp, step) for b, s in results.items() for k, v in s.items()]
            for i in range(0, len(metrics), 900):
                client.log_batch(run_id, metrics=metrics[i:i + 900])
            with tempfile.TemporaryDirectory(prefix="eve-eval-artifacts-") as tmp:
                for bench in results:
                    folder = Path(tmp) / bench
                    folder.mkdir()
                    for key in out_store.list(bench):
                        if f"/{paths.PARTS}/" in key:
                            continue
                        out_store.download_file(key, folder / key.rsplit("/", 1)[-1])
                    client.log_artifacts(run_id, str(folder), f"{PREFIX}/{bench}")
        versions = _versions(client, ref)
        for name, version in versions:
            for bench, scores in results.items():
                for key, value in scores.items():
                    client.set_model_version_tag(name, version, metric_name(bench, key), f"{value:.6g}")
        where = (f"run {run_id}" if run_id else "no stage run") + \
            (", " + ", ".join(f"{n} v{v}" for n, v in versions) if versions else "")
        say(f"[eve-eval] scores recorded in MLflow ({tracking_uri}): {where}")
        return run_id
    except Exception as err:  # noqa: BLE001 - tracking never fails the evaluation
        say(f"[eve-eval] warning: scores not recorded in MLflow ({tracking_uri}): {type(err).__name__}: {err}")
        return None
