"""What the operator was installed with: the cluster's defaults for pipelines, read once.

The chart (charts/eve-platform/templates/deployment.yaml) puts the platform team's choices
into the operator's environment. A pipeline that omits one of these fields gets the
operator's value; a pipeline's own value always wins; without either, the spec model's
built-in default applies. `provenance()` says which of the three each effective value is
(`eve-platform describe` shows it from status.effective).

    field                        env of the operator        chart value
    image                        EVE_TRAINER_IMAGE          trainer.image.*
    mlflow.trackingUri           MLFLOW_TRACKING_URI        mlflow.trackingUri / the in-cluster server
    mlflow.experiment            MLFLOW_EXPERIMENT_NAME     mlflow.experiment
    s3.endpointUrl               EVE_S3_ENDPOINT            storage.s3.endpoint
    s3.region                    AWS_REGION                 storage.s3.region
    s3.credentialsSecret         EVE_CREDENTIALS_SECRET     storage.s3.credentialsSecret.name
    scheduling.gangScheduler     EVE_GANG_SCHEDULER         scheduling.gangScheduler
    scheduling.queue             EVE_QUEUE                  scheduling.queue (only with that gang scheduler)
    scheduling.priorityClass     EVE_PRIORITY_CLASS         scheduling.priorityClassName
    resources.gpuProduct         EVE_GPU_PRODUCT            scheduling.gpuProduct (also each stage's resources)

One trainer key has an operator default too, put into `spec.overrides` when the pipeline-wide
overrides set neither it nor the opt-out `model.align_loss: false` (a stage's own overrides win):

    overrides.model.teacher_path EVE_TEACHER_PATH           trainer.teacherPath (the CLIP teacher)

Install-time rules (not defaults: a pipeline cannot override them; docs/install.md#security-model):

    rule                         env of the operator        chart value
    pod policy                   EVE_POD_POLICY (JSON)      podPolicy.* (ConfigMap <release>-pod-policy)
    the operator's own account   EVE_OPERATOR_NAMESPACE,    serviceAccount.* (never a trainer pod's)
                                 EVE_OPERATOR_SERVICE_ACCOUNT
    own S3 keys: where           EVE_S3_ALLOWED_ENDPOINTS   storage.s3.endpoint + operator.s3.allowedEndpoints
    own S3 keys: which buckets   EVE_S3_ALLOWED_BUCKETS     storage.s3.bucket + operator.s3.allowedBuckets
    gang scheduler required      EVE_REQUIRE_GANG_SCHEDULER scheduling.required

"Omitted" means absent or null; an empty string is a value (`gpuProduct: ""`: any GPU,
`trackingUri: ""`: no tracking). The CRD carries no default for these fields, so the API
server leaves them absent and the operator can tell.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from eve_operator.pod_policy import RESTRICTED, PodPolicy
from eve_operator.spec import PipelineSpec

#: Spec path (camelCase, as in the resource) -> the operator env var that defaults it.
FIELDS: dict[str, str] = {
    "image": "EVE_TRAINER_IMAGE",
    "mlflow.trackingUri": "MLFLOW_TRACKING_URI",
    "mlflow.experiment": "MLFLOW_EXPERIMENT_NAME",
    "s3.endpointUrl": "EVE_S3_ENDPOINT",
    "s3.region": "AWS_REGION",
    "s3.credentialsSecret": "EVE_CREDENTIALS_SECRET",
    "scheduling.gangScheduler": "EVE_GANG_SCHEDULER",
    "scheduling.queue": "EVE_QUEUE",
    "scheduling.priorityClass": "EVE_PRIORITY_CLASS",
    "resources.gpuProduct": "EVE_GPU_PRODUCT",
}
#: Trainer override -> the operator env var that defaults it (when no override of the pipeline sets it).
TRAINER_FIELDS: dict[str, str] = {"model.teacher_path": "EVE_TEACHER_PATH"}
#: Override values that make a trainer default moot (the aligning loss off: no teacher at all).
_TRAINER_OPT_OUTS: dict[str, dict[str, Any]] = {"model.teacher_path": {"model.align_loss": False}}
PIPELINE, OPERATOR, BUILT_IN = "pipeline", "operator default", "built-in"


@dataclass(frozen=True)
class OperatorDefaults:
    values: dict[str, str] = field(default_factory=dict)
    """Spec path -> the operator's default (only those the operator was given)."""
    trainer: dict[str, str] = field(default_factory=dict)
    """Trainer override -> the operator's default (TRAINER_FIELDS; only those the operator was given)."""
    read_pipeline_secrets: bool = False
    """EVE_READ_PIPELINE_SECRETS: read the values of a pipeline's spec.s3.credentialsSecret to
    verify its manifests (chart: operator.readPipelineSecrets). Off: the operator's own identity."""

    pod_policy: PodPolicy = RESTRICTED
    """EVE_POD_POLICY: what a pipeline's pods may be (chart: podPolicy; eve_operator.pod_policy)."""
    s3_allowed_endpoints: tuple[str, ...] = ("",)
    """Endpoints the operator's own S3 credentials may be sent to (normalised; "" = AWS):
    EVE_S3_ENDPOINT (the chart's storage.s3.endpoint) and EVE_S3_ALLOWED_ENDPOINTS."""
    s3_allowed_buckets: tuple[str, ...] | None = None
    """EVE_S3_ALLOWED_BUCKETS: buckets the operator's own credentials may read; None (unset): any
    bucket of an allowed endpoint. The chart always sets it (storage.s3.bucket + allowedBuckets)."""
    require_gang_scheduler: bool = False
    """EVE_REQUIRE_GANG_SCHEDULER: a pipeline must use the operator's gang scheduler (chart:
    scheduling.required); it cannot opt out with gangScheduler=none or pick another one."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorDefaults:
        """Raises ValueError on a malformed EVE_POD_POLICY (the operator does not start)."""
        env = os.environ if environ is None else environ
        values = {path: env[var] for path, var in FIELDS.items() if env.get(var)}
        trainer = {key: env[var] for key, var in TRAINER_FIELDS.items() if env.get(var)}
        policy = RESTRICTED
        if env.get("EVE_POD_POLICY"):
            policy = PodPolicy.from_json(env["EVE_POD_POLICY"], source="the operator's EVE_POD_POLICY")
        if env.get("EVE_OPERATOR_NAMESPACE") and env.get("EVE_OPERATOR_SERVICE_ACCOUNT"):
            import dataclasses

            policy = dataclasses.replace(policy, operator_service_account=(
                f"{env['EVE_OPERATOR_NAMESPACE']}/{env['EVE_OPERATOR_SERVICE_ACCOUNT']}"))
        own = env.get("EVE_S3_ENDPOINT") or env.get("AWS_ENDPOINT_URL") or ""
        endpoints = [own, *_csv(env.get("EVE_S3_ALLOWED_ENDPOINTS"))]
        buckets = env.get("EVE_S3_ALLOWED_BUCKETS")
        return cls(values, trainer, _true(env.get("EVE_READ_PIPELINE_SECRETS")), policy,
                   tuple(dict.fromkeys(normalise_endpoint(e) for e in endpoints)),
                   None if buckets is None else tuple(_csv(buckets)),
                   _true(env.get("EVE_REQUIRE_GANG_SCHEDULER")))

    # -- install-time rules (pure: the spec and these values) --------------------------------

    def uses_own_credentials(self, spec: PipelineSpec) -> bool:
        """The operator reads this pipeline's output with its own identity (not the pipeline's Secret)."""
        return not (spec.s3.credentials_secret and self.read_pipeline_secrets)

    def credentials_refusal(self, spec: PipelineSpec) -> str | None:
        """Why the operator will not read this pipeline's output with its own credentials; None: it may.

        Its keys (or cloud identity) go only to the endpoints and buckets the chart lists, so a
        pipeline cannot point them at a listener of its own, or at a bucket only the operator reads.
        """
        if not self.uses_own_credentials(spec) or not spec.output.startswith("s3://"):
            return None
        endpoint = spec.s3.endpoint_url or self.s3_allowed_endpoints[0]
        how = ("set spec.s3.credentialsSecret (the operator then reads with the pipeline's keys; chart "
               "value operator.readPipelineSecrets=true)" if not self.read_pipeline_secrets else
               "set spec.s3.credentialsSecret to the pipeline's own keys")
        if normalise_endpoint(endpoint) not in self.s3_allowed_endpoints:
            allowed = ", ".join(e or "AWS S3" for e in self.s3_allowed_endpoints)
            return (f"spec.s3.endpointUrl={spec.s3.endpoint_url!r}: the operator uses its own S3 credentials only "
                    f"against {allowed} (chart values storage.s3.endpoint, operator.s3.allowedEndpoints); {how}")
        bucket = spec.output[len("s3://"):].split("/", 1)[0]
        if self.s3_allowed_buckets is not None and bucket not in self.s3_allowed_buckets:
            return (f"spec.output={spec.output!r}: the operator reads only buckets "
                    f"{', '.join(self.s3_allowed_buckets) or '(none)'} with its own S3 credentials (chart values "
                    f"storage.s3.bucket, operator.s3.allowedBuckets); {how}")
        return None

    def scheduling_refusal(self, spec: PipelineSpec, raw: Mapping[str, Any] | None = None) -> str | None:
        """Why this pipeline's scheduling bypasses what the cluster requires; None: it does not."""
        required = self.values.get("scheduling.gangScheduler")
        if not self.require_gang_scheduler or required in (None, "none"):
            return None
        gang = spec.scheduling.gang_scheduler
        if gang != required:
            return (f"spec.scheduling.gangScheduler={gang}: this cluster requires every pipeline to use {required} "
                    f"(chart values scheduling.gangScheduler and scheduling.required); omit the field or set "
                    f"it to {required}")
        return None

    def apply(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """The raw spec with the operator's defaults filled in where it omits them."""
        spec = copy.deepcopy(dict(raw))
        own_gang = _get(raw, "scheduling.gangScheduler")
        for path, value in self.values.items():
            if path == "scheduling.queue" and own_gang not in (None, self.values.get("scheduling.gangScheduler")):
                continue  # a queue belongs to its scheduler: no Kueue queue name for a Volcano pipeline
            if _get(spec, path) is None:
                _set(spec, path, value)
        for key, value in self.trainer.items():
            if not _sets_trainer_key(raw, key):
                spec["overrides"] = {**(spec.get("overrides") or {}), key: value}
        if (gpu := self.values.get("resources.gpuProduct")) is not None:
            for stage in (spec.get("stages") or {}).values():
                res = (stage or {}).get("resources")
                if isinstance(res, dict) and res.get("gpuProduct") is None:
                    res["gpuProduct"] = gpu
        return spec

    def parse(self, raw: Mapping[str, Any] | None) -> PipelineSpec:
        """The effective spec of a resource; raises pydantic.ValidationError."""
        return PipelineSpec.model_validate(self.apply(raw or {}))

    def provenance(self, raw: Mapping[str, Any] | None) -> dict[str, dict[str, str]]:
        """{path: {"value", "source"}} of every defaultable field of the effective spec."""
        raw = raw or {}
        effective = self.parse(raw).model_dump(by_alias=True, mode="json")
        applied = self.apply(raw)
        out = {}
        for path in FIELDS:
            value = _get(effective, path)
            if _get(raw, path) is not None:
                source = PIPELINE
            elif _get(applied, path) is not None:
                source = OPERATOR
            else:
                source = BUILT_IN
            out[path] = {"value": "" if value is None else str(value), "source": source}
        for key in TRAINER_FIELDS:
            value = (applied.get("overrides") or {}).get(key)
            own = (raw.get("overrides") or {}).get(key)
            source = PIPELINE if own is not None else OPERATOR if value is not None else BUILT_IN
            out[f"overrides.{key}"] = {"value": "" if value is None else str(value), "source": source}
        return out


def _sets_trainer_key(raw: Mapping[str, Any], key: str) -> bool:
    """Whether the pipeline's own overrides set `key` or its opt-out (a stage's own value wins over
    the pipeline-wide one anyway, so stage overrides need no look)."""
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, Mapping):
        return False
    opted_out = any(str(overrides.get(k)).lower() == str(v).lower()
                    for k, v in _TRAINER_OPT_OUTS.get(key, {}).items() if overrides.get(k) is not None)
    return overrides.get(key) is not None or opted_out
def normalise_endpoint(url: str | None) -> str:
    """An S3 endpoint as compared against the allowed list: lower-case, no trailing slash."""
    return (url or "").strip().rstrip("/").lower()


def _csv(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _true(text: str | None) -> bool:
    return (text or "false").lower() in ("1", "true", "yes")


def _get(tree: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(tree, Mapping):
            return None
        tree = tree.get(key)
    return tree


def _set(tree: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for key in parents:
        if not isinstance(tree.get(key), dict):
            tree[key] = {}
        tree = tree[key]
    tree[leaf] = value


_LOADED: OperatorDefaults | None = None


def operator_defaults(*, reload: bool = False) -> OperatorDefaults:
    """The operator's defaults, read from its environment once (at operator startup)."""
    global _LOADED
    if _LOADED is None or reload:
        _LOADED = OperatorDefaults.from_env()
    return _LOADED


def parse_spec(raw: Mapping[str, Any] | None) -> PipelineSpec:
    """The operator's one way to read a resource's spec: its own values, else the operator's."""
    return operator_defaults().parse(raw)


__all__ = ["OperatorDefaults", "FIELDS", "TRAINER_FIELDS", "normalise_endpoint", "operator_defaults", "parse_spec", "PIPELINE",
           "OPERATOR", "BUILT_IN"]
