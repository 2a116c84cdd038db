"""The CLI's Kubernetes side: EvePipeline objects through the official client.

Plain, synchronous functions on the current kube context (or in-cluster config). The
operator does the work; these only create, read and delete the custom resources, and
render exactly what would be created for --dry-run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from eve_contract.naming import job_name, validate_pipeline_name
from eve_operator.crd import API_VERSION, GROUP, KIND, PLURAL, VERSION
from eve_operator.jobapi import JOB_APIS, job_api_for
from eve_operator.jobspec import build_job_spec
from eve_operator.pipeline import SubmitJob
from eve_operator.spec import PipelineSpec

_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class KubeConfigError(RuntimeError):
    """No usable Kubernetes context; the message says what to do."""


def _config() -> Any:
    import kubernetes

    cfg = kubernetes.client.Configuration()
    if _SA_NAMESPACE.exists() and os.environ.get("KUBERNETES_SERVICE_HOST"):
        kubernetes.config.load_incluster_config(client_configuration=cfg)
        return cfg
    try:
        kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=cfg)
    except (kubernetes.config.ConfigException, FileNotFoundError, TypeError) as err:
        raise KubeConfigError(
            f"no Kubernetes context ({err}): point KUBECONFIG (or ~/.kube/config) at a cluster, "
            "or run the pipeline on this machine with --local") from None
    return cfg


def _apis() -> tuple[Any, Any]:
    import kubernetes

    client = kubernetes.client.ApiClient(_config())
    return kubernetes.client.CustomObjectsApi(client), kubernetes.client.CoreV1Api(client)


def current_namespace(namespace: str | None = None) -> str:
    """The given namespace, else the kube context's, else the pod's, else `default`."""
    if namespace:
        return namespace
    if _SA_NAMESPACE.exists() and os.environ.get("KUBERNETES_SERVICE_HOST"):
        return _SA_NAMESPACE.read_text().strip()
    import kubernetes

    try:
        _, active = kubernetes.config.list_kube_config_contexts(config_file=os.environ.get("KUBECONFIG"))
    except (kubernetes.config.ConfigException, FileNotFoundError, TypeError):
        return "default"
    return (active or {}).get("context", {}).get("namespace") or "default"


def _api_error(err: Any, what: str) -> Exception:
    if err.status == 404 and "the server could not find the requested resource" in str(err.body or "").lower():
        return KubeConfigError("the EvePipeline CRD is not installed in this cluster: "
                               "helm install eve-platform charts/eve-platform (or kubectl apply -k manifests/base)")
    if err.status == 403:
        return KubeConfigError(f"{what}: forbidden by RBAC ({err.reason}); ask for the eve-platform edit role")
    return err


# -- rendering (pure) ----------------------------------------------------------------------


def render_pipeline(name: str, namespace: str | None, spec: PipelineSpec) -> dict[str, Any]:
    """The EvePipeline object `create_pipeline` would create."""
    validate_pipeline_name(name)
    return {
        "apiVersion": API_VERSION, "kind": KIND,
        "metadata": {"name": name, "namespace": current_namespace(namespace)},
        # only what the user set: every omitted field takes the operator's default (eve_operator.defaults)
        "spec": spec.model_dump(by_alias=True, exclude_unset=True, mode="json"),
    }


def render_jobs(name: str, namespace: str | None, spec: PipelineSpec) -> list[dict[str, Any]]:
    """The PyTorchJob or TrainJob (spec.jobApi) of every stage, in order, as the operator will
    create them: the first from the pipeline's init_from, each later one from the previous
    stage's export (the URL it will have; the operator checks its stage-complete manifest
    first). ownerReferences and the parent run id are added at run time."""
    validate_pipeline_name(name)
    ns = current_namespace(namespace)
    jobs = [build_job_spec(name, spec, SubmitJob(stage, 1, job_name(name, stage, 1),
                                                 spec.planned_init_from(name, stage), None))
            for stage in spec.chain()]
    api = job_api_for(spec, require_enabled=False)  # the seam (eve_operator.jobapi) tells the kinds apart
    return [api.body(job, ns, None) for job in jobs]


#: Where the chart publishes its install-time rules (<namespace>/<ConfigMap>; chart: <release>-policy).
ENV_POLICY_CONFIGMAP = "EVE_PLATFORM_POLICY_CONFIGMAP"
DEFAULT_POLICY_CONFIGMAP = "eve-system/eve-platform-policy"


def install_rules() -> tuple[Any, str]:
    """(OperatorDefaults, where they came from): the chart's rules ConfigMap when the kube context can
    read it (what the operator runs with: pod policy, S3 identity, required gang scheduler), else
    None and a sentence saying the built-in `restricted` pod policy is used."""
    from eve_operator.defaults import OperatorDefaults

    where = os.environ.get(ENV_POLICY_CONFIGMAP) or DEFAULT_POLICY_CONFIGMAP
    ns, _, cm = where.partition("/")
    try:
        _, core = _apis()
        data = {**(core.read_namespaced_config_map(cm, ns).data or {}), "EVE_OPERATOR_NAMESPACE": ns}
    except KubeConfigError:
        return None, "the built-in restricted pod policy (no kube context to read the cluster's)"
    except Exception as err:  # noqa: BLE001 - 404, 403, unreachable: say so and check the default
        reason = getattr(err, "reason", None) or type(err).__name__
        return None, (f"the built-in restricted pod policy (ConfigMap {ns}/{cm} not readable: {reason}; "
                      f"set {ENV_POLICY_CONFIGMAP}=<namespace>/<name> for another release)")
    return OperatorDefaults.from_env(data), f"the cluster's rules (ConfigMap {ns}/{cm})"


def check_admission(name: str, namespace: str | None, spec: PipelineSpec) -> str:
    """What the operator would refuse, refused here (ValueError naming the field); returns which
    rules were checked. With the cluster's ConfigMap: its pod policy, S3 and scheduling rules; without
    it: the built-in `restricted` pod policy only."""
    from pydantic import ValidationError

    from eve_operator import admission, pod_policy
    from eve_operator.defaults import OperatorDefaults

    defaults, source = install_rules()
    ns = current_namespace(namespace)
    if defaults is not None:
        try:  # what the operator will run: the pipeline's fields, else the install's (gang scheduler, queue)
            spec = defaults.parse(spec.model_dump(by_alias=True, exclude_unset=True, mode="json"))
        except ValidationError as err:
            problems = "; ".join(f"spec.{'.'.join(str(x) for x in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
                                 for e in err.errors())
            raise ValueError(f"invalid spec: {problems} (with the defaults of {source})") from None
        refused = admission.refuse(defaults, spec, ns)
    else:  # PSS restricted only: which ServiceAccounts and Secrets are allowed is the cluster's to say
        import dataclasses

        defaults = OperatorDefaults(pod_policy=dataclasses.replace(
            OperatorDefaults().pod_policy, service_accounts=("*",), secrets=("*",)))
        source += "; ServiceAccounts and Secrets not checked"
        violations = pod_policy.check_pipeline(spec, defaults.pod_policy, namespace=ns)
        refused = violations and admission.Refusal(
            "PodPolicyViolation", "invalid spec: " + pod_policy.refusal(violations, defaults.pod_policy))
    if refused:
        raise ValueError(f"{refused.message} (checked against {source})")
    for job in render_jobs(name, namespace, spec):
        try:
            admission.check_job(defaults, job, ns, spec)
        except admission.PolicyError as err:
            raise ValueError(f"{err} (checked against {source})") from None
    return source


# -- the API --------------------------------------------------------------------------------


def create_pipeline(name: str, namespace: str | None, spec: PipelineSpec) -> dict[str, Any]:
    import kubernetes

    body = render_pipeline(name, namespace, spec)
    ns = body["metadata"]["namespace"]
    custom, _ = _apis()
    try:
        return custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
    except kubernetes.client.ApiException as err:
        if err.status == 409:
            raise ValueError(f"EvePipeline {ns}/{name} already exists: pick another name or delete it "
                             f"first (eve-platform cancel {name})") from None
        raise _api_error(err, f"create EvePipeline {ns}/{name}") from None


def get_pipeline(name: str, namespace: str | None) -> dict[str, Any] | None:
    import kubernetes

    ns = current_namespace(namespace)
    custom, _ = _apis()
    try:
        return custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    except kubernetes.client.ApiException as err:
        converted = _api_error(err, f"get EvePipeline {ns}/{name}")
        if err.status == 404 and converted is err:
            return None
        raise converted from None


def list_pipelines(namespace: str | None) -> list[dict[str, Any]]:
    import kubernetes

    ns = current_namespace(namespace)
    custom, _ = _apis()
    try:
        items = custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL).get("items", [])
    except kubernetes.client.ApiException as err:
        raise _api_error(err, f"list EvePipelines in {ns}") from None
    return sorted(items, key=lambda o: o["metadata"]["name"])


def delete_pipeline(name: str, namespace: str | None) -> None:
    """Delete the pipeline; its PyTorchJobs go with it (ownerReferences + the operator)."""
    import kubernetes

    ns = current_namespace(namespace)
    custom, _ = _apis()
    try:
        custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name,
                                               propagation_policy="Foreground")
    except kubernetes.client.ApiException as err:
        if err.status == 404:
            raise ValueError(f"EvePipeline {ns}/{name} not found") from None
        raise _api_error(err, f"delete EvePipeline {ns}/{name}") from None


def stage_pods(name: str, namespace: str | None, stage: str) -> list[str]:
    """Pods of the stage's current job: Master first, then Workers by index (PyTorchJob), or the
    nodes by index (TrainJob)."""
    ns = current_namespace(namespace)
    obj = get_pipeline(name, ns)
    if obj is None:
        raise ValueError(f"EvePipeline {ns}/{name} not found")
    stages = {s.get("name"): s for s in (obj.get("status") or {}).get("stages", [])}
    job = (stages.get(stage) or {}).get("jobName") or job_name(name, stage, 1)
    _, core = _apis()
    # the job's pods under whichever job API made them (the pipeline's status does not say which)
    for api in JOB_APIS.values():
        label, value = api.pod_label, api.object_name(job)
        pods = core.list_namespaced_pod(ns, label_selector=f"{label}={value}").items
        mine = [p for p in pods if (p.metadata.labels or {}).get(label) == value]
        if mine:
            return [p.metadata.name for p in
                    sorted(mine, key=lambda p, api=api: (*api.pod_order(p.metadata.labels or {}), p.metadata.name))]
    return []


def pod_logs(pod: str, namespace: str | None, follow: bool) -> Iterator[str]:
    """The trainer container's log lines; with follow, until the pod ends."""
    ns = current_namespace(namespace)
    _, core = _apis()
    import kubernetes

    # the trainer container's name differs per job API: a 400 says this pod has no such container
    apis = list(JOB_APIS.values())
    for i, api in enumerate(apis):
        try:
            response = core.read_namespaced_pod_log(pod, ns, container=api.container, follow=follow,
                                                    _preload_content=False)
            break
        except kubernetes.client.ApiException as err:
            if err.status != 400 or i == len(apis) - 1:
                raise
    buffer = b""
    try:
        for chunk in response.stream(4096):
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                yield line.decode(errors="replace")
        if buffer:
            yield buffer.decode(errors="replace")
    finally:
        response.release_conn()


__all__ = ["KubeConfigError", "create_pipeline", "get_pipeline", "list_pipelines", "delete_pipeline",
           "stage_pods", "pod_logs", "render_pipeline", "render_jobs", "current_namespace"]
