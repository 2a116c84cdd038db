"""kmock's Kubernetes emulator on loopback, served from its own thread and event loop.

The operator (kopf, in another thread) and the tests (the official `kubernetes` client,
synchronous) both talk to it over HTTP, as they would to a real API server. The emulator
stores objects and streams watch events; it does no defaulting, no label selectors and no
controllers. Either the tests play the training-operator's part (patching PyTorchJob status),
or cluster_emulator.py runs the training-operator and a kubelet beside it.

What it adds to kmock, as a real API server would:
- generateName, uid, creationTimestamp on create; 201 Created;
- graceful pod deletion: a DELETE of a pod that a kubelet holds (its finalizer) sets
  deletionTimestamp and deletionGracePeriodSeconds (the request's gracePeriodSeconds, else the
  pod's terminationGracePeriodSeconds, else 30); a shorter grace in a later DELETE wins;
- the pods/log subresource, served from the log file the kubelet names (`log_source`), with
  `follow`, `tailLines`, `previous` and `container`.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import attrs
import kmock
import yaml
from kmock._internal.k8s import KubernetesError

GROUP, VERSION, PLURAL = "eve-platform.io", "v1alpha1", "evepipelines"
RESOURCES: dict[str, kmock.ResourceInfo] = {
    f"{GROUP}/{VERSION}/{PLURAL}": kmock.ResourceInfo(
        kind="EvePipeline", singular="evepipeline", namespaced=True, shortnames={"evp"},
        verbs={"create", "delete", "get", "list", "patch", "update", "watch"}, subresources={"status"}),
    "kubeflow.org/v1/pytorchjobs": kmock.ResourceInfo(
        kind="PyTorchJob", singular="pytorchjob", namespaced=True,
        verbs={"create", "delete", "get", "list", "patch", "update", "watch"}, subresources={"status"}),
    "trainer.kubeflow.org/v1alpha1/trainjobs": kmock.ResourceInfo(  # Kubeflow Trainer v2 (trainjob_emulator.py)
        kind="TrainJob", singular="trainjob", namespaced=True,
        verbs={"create", "delete", "get", "list", "patch", "update", "watch"}, subresources={"status"}),
    "v1/secrets": kmock.ResourceInfo(kind="Secret", singular="secret", namespaced=True,
                                     verbs={"create", "get", "list", "watch", "delete"}),
    "v1/configmaps": kmock.ResourceInfo(kind="ConfigMap", singular="configmap", namespaced=True,  # the policy
                                        verbs={"create", "get", "list", "watch", "delete"}),
    "v1/events": kmock.ResourceInfo(kind="Event", singular="event", namespaced=True,
                                    verbs={"create", "get", "list", "watch", "patch"}),
    "v1/pods": kmock.ResourceInfo(kind="Pod", singular="pod", namespaced=True,
                                  verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
                                  subresources={"log", "status"}),
    "v1/namespaces": kmock.ResourceInfo(kind="Namespace", singular="namespace", namespaced=False,
                                        verbs={"get", "list", "watch"}),
    "apiextensions.k8s.io/v1/customresourcedefinitions": kmock.ResourceInfo(
        kind="CustomResourceDefinition", singular="customresourcedefinition", namespaced=False,
        verbs={"create", "get", "list", "watch"}),
}


class Logged(NamedTuple):
    """One request as the emulator saw it (for the benchmark's counts and latencies)."""

    t: float
    method: str
    path: str
    agent: str
    action: str
    name: str


class PodLog(NamedTuple):
    """Where a container's log is, and whether it can still grow (for `follow`)."""

    path: Path
    running: Callable[[], bool]


#: (namespace, pod, container or None, previous) -> the log, or None while the container waits
LogSource = Callable[[str, str, "str | None", bool], "PodLog | None"]


@attrs.frozen
class _BadRequest(KubernetesError):
    message: str = ""
    status: int = 400
    reason: str = "BadRequest"


@attrs.frozen
class _PodNotFound(KubernetesError):
    message: str = ""
    status: int = 404
    reason: str = "NotFound"


def _flag(value: str | None) -> bool:
    """A boolean query parameter: kubectl sends `true`, the Python client `True`."""
    return (value or "").lower() in ("true", "1")


def _is_pods(request: kmock.Request) -> bool:
    return request.resource is not None and request.resource.group == "" and request.resource.plural == "pods"


class _Emulator(kmock.KubernetesEmulator):
    """What an API server fills in on create and kmock does not: generateName, uid, timestamps.

    kopf posts Events with generateName and adds its finalizer with a JSON patch that
    tests metadata.resourceVersion; the CLI's objects need a uid for ownerReferences;
    and a create answers 201 Created.
    """

    _serial = itertools.count(1)
    log: list[Logged]
    log_source: LogSource | None = None

    def _stored(self, key: tuple[Any, str | None, str | None]) -> Any:
        """The live stored object (kmock's view), or None when absent or deleted."""
        obj = self.objects[key] if key[0] is not None and key in self.objects else None
        return None if obj is None or obj.deleted else obj

    def serve_pod_logs(self) -> None:
        """Answer GET pods/<name>/log below any reaction a test declares, above kmock's fetch."""
        reaction = (self.fallback ** 1)[kmock.action.FETCH, kmock.subresource("log")]
        reaction << kmock.headers({"Content-Type": "text/plain"}) << self._serve_log

    async def _serve_log(self, request: kmock.Request) -> AsyncIterator[bytes]:
        ns, name = request.namespace or "default", request.name or ""
        if self._stored((request.resource, ns, name)) is None:
            raise _PodNotFound(message=f'pods "{name}" not found')
        params = request.params
        container, previous = params.get("container"), _flag(params.get("previous"))
        found = self.log_source(ns, name, container, previous) if self.log_source else None
        if found is None:
            what = "previous terminated container" if previous else "container"
            raise _BadRequest(message=f'{what} "{container or "pytorch"}" in pod "{name}" '
                                      "is waiting to start: ContainerCreating")
        tail = int(params["tailLines"]) if params.get("tailLines") else None
        follow = _flag(params.get("follow"))
        yield b""  # start the response: a follower sees the headers before the first line
        with open(found.path, "rb") as f:
            if tail is not None:
                lines = f.read().splitlines(keepends=True)[-tail:] if tail > 0 else []
                yield b"".join(lines)
            while True:
                running = found.running()  # read before the chunk: no line written at exit is lost
                chunk = f.read(65536)
                if chunk:
                    yield chunk
                elif not follow or not running:
                    return
                else:
                    await asyncio.sleep(0.05)

    def _pod_deletion_grace(self, request: kmock.Request) -> None:
        """After kmock marked a held pod deleted: the grace its kubelet allows (shorter wins)."""
        key = (request.resource, request.namespace, request.name)
        body = request.data if isinstance(request.data, dict) else {}
        raw = request.params.get("gracePeriodSeconds", body.get("gracePeriodSeconds"))
        obj = self._stored(key)
        if obj is None:
            return
        meta = obj.get("metadata", {})
        if not meta.get("deletionTimestamp"):
            return
        grace = int(raw) if raw is not None else int(obj.get("spec", {}).get("terminationGracePeriodSeconds", 30))
        current = meta.get("deletionGracePeriodSeconds")
        if current is None or grace < current:
            obj.patch({"metadata": {"deletionGracePeriodSeconds": grace}})

    async def _handle(self, request: kmock.Request) -> Any:
        # kmock matches every request against its whole request history (its DSL filters are
        # views over it): quadratic over a benchmark. Keep only this one; `log` has them all.
        del self._requests[:-1]
        name = request.name
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            name = request.data.get("metadata", {}).get("name") or name
        self.log.append(Logged(time.monotonic(), str(request.method.value), request.url.path,
                               request.headers.get("User-Agent", ""),
                               request.action.name if request.action else "", name or ""))
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = f"{meta['generateName']}{next(self._serial):06d}"
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp",
                            datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
            meta.setdefault("resourceVersion", "1")
            meta.setdefault("generation", 1)
        response = await super()._handle(request)
        if request.action == kmock.action.CREATE and response.status == 200 and not response.prepared:
            response.set_status(201)  # the official client reads the body of a 201 only
        if request.action == kmock.action.DELETE and _is_pods(request) and response.status == 200:
            self._pod_deletion_grace(request)
        return response


class Emulator:
    """A running KubernetesEmulator: `.url`, `.kubeconfig`, `.requests`, `.objects`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="kmock", daemon=True)
        self.kmock: _Emulator | None = None
        self.url = ""
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as err:  # noqa: BLE001 - reported to the starting thread
            self._error = err
            self._ready.set()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with _Emulator() as handler, kmock.Server(handler) as server:
            handler.log = []
            for key, info in RESOURCES.items():
                handler.resources[key] = info
            handler.serve_pod_logs()
            self.kmock, self.url = handler, str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def start(self) -> Emulator:
        self._thread.start()
        self._ready.wait(30)
        if self._error or not self.url:
            raise RuntimeError(f"kmock did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def call(self, fn: Any, *args: Any) -> Any:
        """Run `fn(*args)` on the emulator's loop (its object store is not thread-safe)."""
        async def wrapper() -> Any:
            return fn(*args)
        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(10)

    def set_log_source(self, source: LogSource | None) -> None:
        """Where pods/<name>/log reads from: the kubelet's log files (the API server asks the node)."""
        assert self.kmock is not None
        self.kmock.log_source = source

    @property
    def requests(self) -> list[Logged]:
        """Every request so far: (t, method, path, agent, action, name)."""
        assert self.kmock is not None
        return list(self.kmock.log)

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
            "users": [{"name": "kmock", "user": {"token": "kmock"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock",
                                                       "namespace": namespace}}],
        }))
        return path


@contextmanager
def running_emulator() -> Iterator[Emulator]:
    emulator = Emulator().start()
    try:
        yield emulator
    finally:
        emulator.stop()
