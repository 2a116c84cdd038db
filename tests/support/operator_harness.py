"""The operator test harness: kmock's Kubernetes emulator, the operator, real S3.

The operator runs for real (kopf in a thread, `KopfRunner`) against the emulator; the
tests play the training-operator's part by patching PyTorchJob status, and the trainer's
by writing stage-complete manifests to the real S3 test server.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import kopf.testing
import kubernetes
import pytest

from eve_contract import layout
from eve_contract.storage import open_store
from eve_operator import handlers
from support.kube_emulator import Emulator

GROUP, VERSION, PLURAL = "eve-platform.io", "v1alpha1", "evepipelines"
JOBS = ("kubeflow.org", "v1", "pytorchjobs")
NS = "ml"


class Cluster:
    """The emulated API server, seen through the official client (as kubectl would)."""

    def __init__(self, emulator: Emulator, kubeconfig: Path):
        self.emulator = emulator
        cfg = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(str(kubeconfig), client_configuration=cfg)
        self.api = kubernetes.client.ApiClient(cfg)
        self.custom = kubernetes.client.CustomObjectsApi(self.api)
        self.core = kubernetes.client.CoreV1Api(self.api)

    # -- pipelines ---------------------------------------------------------------------

    def create_pipeline(self, name: str, spec: dict[str, Any], ns: str = NS) -> dict[str, Any]:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "EvePipeline",
                "metadata": {"name": name, "namespace": ns},
                "spec": spec}
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)

    def pipeline(self, name: str, ns: str = NS) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        except kubernetes.client.ApiException as err:
            if err.status == 404:
                return None
            raise

    def status(self, name: str, ns: str = NS) -> dict[str, Any]:
        return (self.pipeline(name, ns) or {}).get("status") or {}

    def patch_spec(self, name: str, spec: dict[str, Any], ns: str = NS) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, {"spec": spec})

    def delete_pipeline(self, name: str, ns: str = NS) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)

    # -- jobs (the training-operator's side) -------------------------------------------

    def jobs(self, ns: str = NS) -> dict[str, dict[str, Any]]:
        items = self.custom.list_namespaced_custom_object(*JOBS[:2], ns, JOBS[2])["items"]
        return {j["metadata"]["name"]: j for j in items}

    def set_condition(self, job: str, type_: str, ns: str = NS, message: str = "") -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        conditions = [{"type": "Created", "status": "True", "reason": "PyTorchJobCreated"}]
        if type_ != "Created":
            conditions.append({"type": type_, "status": "True", "reason": f"PyTorchJob{type_}",
                               "message": message, "lastTransitionTime": now})
        status: dict[str, Any] = {"conditions": conditions}
        if type_ in ("Succeeded", "Failed"):
            status["completionTime"] = now
        self.custom.patch_namespaced_custom_object_status(*JOBS[:2], ns, JOBS[2], job, {"status": status})

    def exited_pod(self, job: str, exit_code: int, ns: str = NS) -> None:
        """The job's master pod, terminated with `exit_code` (what the operator reads exit codes from)."""
        self.core.create_namespaced_pod(ns, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{job}-master-0", "namespace": ns,
                         "labels": {"training.kubeflow.org/job-name": job}},
            "spec": {"containers": [{"name": "pytorch", "image": "x"}]},
            "status": {"phase": "Failed", "containerStatuses": [{
                "name": "pytorch", "image": "x", "imageID": "", "ready": False, "restartCount": 0,
                "state": {"terminated": {"exitCode": exit_code, "reason": "Error"}}}]}})

    def create_secret(self, name: str, data: dict[str, str], ns: str = NS) -> None:
        self.core.create_namespaced_secret(ns, {"apiVersion": "v1", "kind": "Secret",
                                                "metadata": {"name": name, "namespace": ns},
                                                "stringData": data,
                                                "data": {k: _b64(v) for k, v in data.items()}})

    def events(self, name: str | None = None, ns: str = NS) -> list[dict[str, Any]]:
        raw = self.core.list_namespaced_event(ns, _preload_content=False)
        items = json.loads(raw.data)["items"]
        return [e for e in items if name is None or e.get("involvedObject", {}).get("name") == name]

    def reasons(self, name: str, ns: str = NS) -> list[str]:
        return [e["reason"] for e in self.events(name, ns)]

    def requests(self) -> list[Any]:
        return self.emulator.requests


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


def wait_for(check: Callable[[], Any], timeout: float = 60.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except (KeyError, IndexError):  # e.g. the job exists, the status patch comes right after it
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        time.sleep(0.05)


def write_export(output: str, pipeline: str, stage: str, tmp: Path, *, run_id: str | None = None) -> str:
    """What rank 0 does at the end of a stage: the export files, then stage-complete.json."""
    store = open_store(output)
    folder = tmp / f"{pipeline}-{stage}-export"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(b"weights of " + stage.encode() * 1000)
    (folder / "config.json").write_text(json.dumps({"stage": stage}))
    prefix = layout.export_prefix(pipeline, stage)
    for entry in layout.entries_for_dir(folder):
        store.upload_file(folder / entry.path, f"{prefix}/{entry.path}")
    manifest = layout.Manifest(kind="stage-complete", pipeline=pipeline, stage=stage, step=10,
                               files=layout.entries_for_dir(folder), mlflow_run_id=run_id)
    store.put_bytes(f"{prefix}/{layout.STAGE_COMPLETE}", manifest.to_json())
    return f"{output}/{prefix}"


class Operator:
    """The operator in a thread (KopfRunner), restartable."""

    def __init__(self) -> None:
        self.runner: kopf.testing.KopfRunner | None = None
        self.outputs: list[str] = []

    def start(self) -> None:
        self.runner = kopf.testing.KopfRunner(
            ["run", "--standalone", "--all-namespaces", "-m", "eve_operator.handlers"], timeout=30)
        self.runner.__enter__()

    def stop(self) -> None:
        if self.runner is not None:
            runner, self.runner = self.runner, None
            runner.__exit__(None, None, None)
            self.outputs.append(runner.output)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    emu = Emulator().start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def cluster(emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cluster:
    kubeconfig = emulator.write_kubeconfig(tmp_path / "kubeconfig")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    return Cluster(emulator, kubeconfig)


@contextmanager
def running_operator(resync_s: float = 0.5, metrics_port: int = 0) -> Iterator[Operator]:
    """The operator configured as its runner would (handlers.configure), then started."""
    old = handlers.CONFIG
    handlers.configure(handlers.Config(resync_s=resync_s, metrics_port=metrics_port))
    op = Operator()
    op.start()
    try:
        yield op
    finally:
        try:
            op.stop()
        finally:
            handlers.configure(old)


@pytest.fixture
def operator(cluster: Cluster, s3_env: Any) -> Iterator[Operator]:
    with running_operator() as op:
        yield op


@pytest.fixture
def output(bucket: str) -> str:
    return f"s3://{bucket}/eve"


def base_spec(output: str, **extra: Any) -> dict[str, Any]:
    """A small pipeline: CPU pods, no gang scheduler (the emulator runs no pods anyway)."""
    return {"preset": "tiny", "output": output, "maxAttempts": 2,
            "resources": {"gpusPerNode": 0, "cpu": "2", "memory": "4Gi", "shmSize": "1Gi"},
            "scheduling": {"gangScheduler": "volcano", "queue": "research"}, **extra}
