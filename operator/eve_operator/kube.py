"""The operator's transport: the few Kubernetes API calls it makes, and its S3 clients.

Plain blocking calls (the official client); the kopf loop runs them in threads. Each
API call is counted in eve_operator_api_requests_total. Job calls go through a `JobApi`.
"""

from __future__ import annotations

import base64
import copy
import os
from typing import Any

from eve_contract.naming import LABEL_PIPELINE
from eve_operator import metrics
from eve_operator.crd import GROUP, PLURAL, VERSION
from eve_operator.jobapi import PYTORCHJOB, JobApi
from eve_operator.spec import PipelineSpec


class Kube:
    """The Kubernetes API as the operator uses it."""

    def __init__(self, jobs: JobApi = PYTORCHJOB) -> None:
        import kubernetes

        cfg = kubernetes.client.Configuration()
        try:
            kubernetes.config.load_incluster_config(client_configuration=cfg)
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=cfg)
        cfg.connection_pool_maxsize = 32
        self.jobs = jobs
        self.client = kubernetes.client.ApiClient(cfg)
        self.custom = kubernetes.client.CustomObjectsApi(self.client)
        self.core = kubernetes.client.CoreV1Api(self.client)
        self.ApiException = kubernetes.client.ApiException

    def using(self, jobs: JobApi) -> Kube:
        """This client (same connections) for another job API."""
        if jobs is self.jobs:
            return self
        other = copy.copy(self)
        other.jobs = jobs
        return other

    def call(self, verb: str, resource: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        code = "201" if verb == "create" else "200"
        try:
            return fn(*args, **kwargs)
        except self.ApiException as err:
            code = str(err.status)
            raise
        except Exception:
            code = "error"
            raise
        finally:
            metrics.API_REQUESTS.inc(verb=verb, resource=resource, code=code)

    def _job_call(self, verb: str, method: str, ns: str, *args: Any, **kwargs: Any) -> Any:
        j = self.jobs
        return self.call(verb, j.plural, getattr(self.custom, method), j.group, j.version, ns, j.plural,
                         *args, **kwargs)

    def get_job(self, ns: str, name: str) -> dict[str, Any] | None:
        try:
            return self._job_call("get", "get_namespaced_custom_object", ns, self.jobs.object_name(name))
        except self.ApiException as err:
            if err.status == 404:
                return None
            raise

    def create_job(self, ns: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """Create; an existing job of that name (409) is success: names are deterministic."""
        try:
            return self._job_call("create", "create_namespaced_custom_object", ns, body)
        except self.ApiException as err:
            if err.status == 409:
                return None
            raise

    def suspend_job(self, ns: str, name: str, suspended: bool) -> None:
        """Suspend or resume; a job already gone (404) is left alone."""
        try:
            self._job_call("patch", "patch_namespaced_custom_object", ns, self.jobs.object_name(name),
                           self.jobs.suspend_patch(suspended))
        except self.ApiException as err:
            if err.status != 404:
                raise

    def delete_job(self, ns: str, name: str) -> None:
        """Delete a job and (in the background) its pods: the kubelet SIGTERMs each trainer."""
        try:
            self._job_call("delete", "delete_namespaced_custom_object", ns, self.jobs.object_name(name),
                           propagation_policy="Background")
        except self.ApiException as err:
            if err.status != 404:
                raise

    def delete_children(self, ns: str, pipeline: str) -> list[str]:
        listed = self._job_call("list", "list_namespaced_custom_object", ns,
                                label_selector=f"{LABEL_PIPELINE}={pipeline}")
        # filter here too: the selector is a server-side nicety some API servers (kmock) ignore
        names = [j["metadata"]["name"] for j in listed.get("items", [])
                 if (j["metadata"].get("labels") or {}).get(LABEL_PIPELINE) == pipeline]
        for name in names:
            self.delete_job(ns, name)
        return names

    def exit_codes(self, ns: str, job: str) -> list[int]:
        """Exit codes of the trainer containers of a job's pods (its failed pods stay: cleanPodPolicy
        Running deletes only running ones)."""
        return [code for code, _ in self.terminations(ns, job)]

    def terminations(self, ns: str, job: str) -> list[tuple[int, str]]:
        """(exit code, termination message) of each ended trainer container of a job's pods."""
        label, job = self.jobs.pod_label, self.jobs.object_name(job)
        pods = self.call("list", "pods", self.core.list_namespaced_pod, ns, label_selector=f"{label}={job}")
        codes = []
        for pod in pods.items:
            if (pod.metadata.labels or {}).get(label) != job:
                continue  # the selector is a server-side nicety some API servers (kmock) ignore
            for container in (pod.status.container_statuses if pod.status else None) or []:
                if container.name != self.jobs.container:
                    continue
                for state in (container.state, container.last_state):
                    if state is not None and state.terminated is not None:
                        codes.append((int(state.terminated.exit_code), state.terminated.message or ""))
        return codes

    def secret_data(self, ns: str, name: str) -> dict[str, str] | None:
        try:
            secret = self.call("get", "secrets", self.core.read_namespaced_secret, name, ns)
        except self.ApiException as err:
            if err.status == 404:
                return None
            raise
        return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}

    def patch_status(self, ns: str, name: str, status: dict[str, Any]) -> None:
        self.call("patch", f"{PLURAL}/status", self.custom.patch_namespaced_custom_object_status,
                  GROUP, VERSION, ns, PLURAL, name, {"status": status})


# -- S3 ----------------------------------------------------------------------------------


_S3_CLIENTS: dict[tuple[str | None, str | None, str | None], Any] = {}


def open_store(spec: PipelineSpec, creds: dict[str, str] | None) -> Any:
    """The pipeline's output store, with the pipeline's credentials, failing fast."""
    from eve_contract.storage import S3Store
    from eve_contract.storage import open_store as open_url

    store = open_url(spec.output, endpoint_url=spec.s3.endpoint_url, region=spec.s3.region)
    if isinstance(store, S3Store):
        endpoint = spec.s3.endpoint_url or os.environ.get("EVE_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
        key_id = (creds or {}).get("AWS_ACCESS_KEY_ID")
        key = (endpoint, spec.s3.region, key_id)
        if key not in _S3_CLIENTS:  # clients are thread-safe and costly to build: one per endpoint + key
            from eve_contract.storage import s3_client  # the platform's one timeout/retry policy

            _S3_CLIENTS[key] = s3_client(endpoint, spec.s3.region, access_key_id=key_id,
                                         secret_access_key=(creds or {}).get("AWS_SECRET_ACCESS_KEY"))
        store.client = _S3_CLIENTS[key]
    return store


__all__ = ["Kube", "open_store"]
