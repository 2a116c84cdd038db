"""The pipeline spec: what an `EvePipeline` resource (and a local pipeline) asks for.

One pydantic model serves the CLI, the local backend and the operator; the CRD's
OpenAPI schema is generated from it (eve_operator.crd). Validation happens once, here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from eve_contract.dicts import deep_merge
from eve_contract.names import DEFAULT_CHAIN, HD_CHAIN, MODEL_PRESETS, STAGES, Stage
from eve_contract.validators import (
    dns_subdomain_problem, http_url_problem, image_problem, label_value_problem, location_problem, quantity_problem,
)

GangScheduler = Literal["volcano", "scheduler-plugins", "kueue", "none"]
JobApi = Literal["PyTorchJob", "TrainJob"]
OverrideValue = str | int | float | bool | list[str] | list[int] | list[float] | None
def _checked(problem_of: Any) -> Any:
    """An AfterValidator raising ValueError(problem) when `problem_of(value)` finds one."""
    def check(value: Any) -> Any:
        if value is not None and (problem := problem_of(value)):
            raise ValueError(problem)
        return value
    return AfterValidator(check)


#: A Kubernetes quantity ("32", "400Gi"); YAML may give a bare number (`cpu: 32`).
Quantity = Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, int | float) and not isinstance(v, bool)
                                          else v), _checked(quantity_problem)]
#: The name of a Secret or PriorityClass; "" is a value (none), not a name.
ObjectName = Annotated[str, _checked(lambda v: v and dns_subdomain_problem(v))]
#: A Volcano queue or Kueue LocalQueue name: also a label value (kueue.x-k8s.io/queue-name).
QueueName = Annotated[str, _checked(lambda v: v and dns_subdomain_problem(v, 63))]
#: A storage location: s3://bucket/prefix, file:///path or /path.
Location = Annotated[str, _checked(location_problem)]
#: A checkpoint or model folder: a location that names more than a bucket.
FolderLocation = Annotated[str, _checked(lambda v: location_problem(v, need_key=True))]
_INT_OR_STRING: dict[str, Any] = {"x-kubernetes-int-or-string": True}


def _operator_default(schema: dict[str, Any]) -> None:
    """No `default` in the CRD: the API server would fill it in, and the operator's own
    default (eve_operator.defaults) could never apply."""
    schema.pop("default", None)

#: A quantity inside a map (resources.limits): int-or-string in the CRD as well.
MapQuantity = Annotated[Quantity, Field(json_schema_extra=_INT_OR_STRING)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


class S3Spec(_Model):
    endpoint_url: Annotated[str, _checked(lambda v: v and http_url_problem(v))] | None = Field(
        None, alias="endpointUrl", description="S3 endpoint; empty for AWS.")
    region: str | None = Field(None, description="S3 region.")
    credentials_secret: ObjectName | None = Field(
        None, alias="credentialsSecret",
        description="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; never put credentials inline.")


class MlflowSpec(_Model):
    tracking_uri: str | None = Field(None, alias="trackingUri", description="MLflow tracking URI.")
    experiment: str = Field("eve-platform", json_schema_extra=_operator_default,
                            description="MLflow experiment name; default the operator's, else eve-platform.")


class ResourcesSpec(_Model):
    nodes: int = Field(1, ge=1, le=512, description="Pods (nodes) per stage job.")
    gpus_per_node: int = Field(8, alias="gpusPerNode", ge=0, le=16, description="GPUs per pod; 0 runs on CPU.")
    gpu_product: Annotated[str, _checked(label_value_problem)] | None = Field(
        "NVIDIA-A100-SXM4-80GB", alias="gpuProduct", json_schema_extra=_operator_default,
        description="nvidia.com/gpu.product node label to select; empty for any. "
                    "Default the operator's, else NVIDIA-A100-SXM4-80GB.")
    cpu: Quantity = Field("32", description="CPU request per pod.", json_schema_extra=_INT_OR_STRING)
    memory: Quantity = Field("400Gi", description="Memory request per pod.", json_schema_extra=_INT_OR_STRING)
    shm_size: Quantity = Field("64Gi", alias="shmSize", description="Size of the memory-backed /dev/shm.",
                               json_schema_extra=_INT_OR_STRING)
    tolerations: list[dict[str, Any]] = Field(default_factory=list, description="Extra pod tolerations.")
    nproc_per_node: int | None = Field(None, alias="nprocPerNode", ge=1, le=128,
                                       description="Processes per pod; default one per GPU (1 on CPU).")

    @property
    def procs_per_node(self) -> int:
        return self.nproc_per_node or max(self.gpus_per_node, 1)


class SchedulingSpec(_Model):
    gang_scheduler: GangScheduler = Field("volcano", alias="gangScheduler", json_schema_extra=_operator_default,
                                          description="volcano | scheduler-plugins | kueue | none; "
                                                      "default the operator's, else volcano.")
    queue: QueueName | None = Field(None, description="Volcano queue or Kueue LocalQueue name.")
    priority_class: ObjectName | None = Field(None, alias="priorityClass", description="PriorityClass of the pods.")
    schedule_timeout_s: int = Field(3600, alias="scheduleTimeoutSeconds", ge=0,
                                    description="Give up gang scheduling after this long.")


_FREEFORM: dict[str, Any] = {"x-kubernetes-preserve-unknown-fields": True}
#: Env the operator sets on the trainer container, with the spec field that sets it instead.
RESERVED_ENV = {
    "EVE_PIPELINE": "the pipeline name", "EVE_STAGE": "the stage", "EVE_ATTEMPT": "the attempt",
    "PYTHONUNBUFFERED": "the operator", "AWS_ENDPOINT_URL": "spec.s3.endpointUrl", "AWS_REGION": "spec.s3.region",
    "AWS_ACCESS_KEY_ID": "spec.s3.credentialsSecret", "AWS_SECRET_ACCESS_KEY": "spec.s3.credentialsSecret",
    "MLFLOW_TRACKING_URI": "spec.mlflow.trackingUri",
    "EVE_TRAIN_CONFIG": "the pipeline's resolved trainer config (spec.overrides and the pipeline's keys)",
}
#: Resources the operator sets from spec.resources; podTemplate.resources adds others only.
RESERVED_RESOURCES = {"cpu": "spec.resources.cpu", "memory": "spec.resources.memory",
                      "nvidia.com/gpu": "spec.resources.gpusPerNode"}
#: The memory-backed /dev/shm of every trainer pod.
SHM_VOLUME, SHM_PATH = "dshm", "/dev/shm"


def _named(items: list[dict[str, Any]], key: str, field: str, *, unique: bool = True) -> list[dict[str, Any]]:
    for i, item in enumerate(items):
        if not isinstance(item.get(key), str) or not item[key]:
            raise ValueError(f"{field}[{i}] needs a non-empty {key!r} (got {item!r})")
    if not unique:
        return items
    seen = [item[key] for item in items]
    if dups := sorted({k for k in seen if seen.count(k) > 1}):
        raise ValueError(f"{field}: {key} {', '.join(dups)} given more than once")
    return items


class PodResources(_Model):
    requests: dict[str, MapQuantity] = Field(default_factory=dict, description="Extra resource requests.")
    limits: dict[str, MapQuantity] = Field(default_factory=dict, description="Extra resource limits.")

    @model_validator(mode="after")
    def _extra_only(self) -> PodResources:
        for kind, values in (("requests", self.requests), ("limits", self.limits)):
            for name in values:
                if name in RESERVED_RESOURCES:
                    raise ValueError(f"podTemplate.resources.{kind}.{name} is set by {RESERVED_RESOURCES[name]}; "
                                     "podTemplate.resources adds other resources (rdma/hca, "
                                     "vpc.amazonaws.com/efa, hugepages-2Mi)")
        return self


class PodTemplateSpec(_Model):
    """Pod customisation of a stage's pods (Kubernetes field names and shapes).

    Merged over the operator's pod: maps key by key, lists by name (volumeMounts by
    mountPath; tolerations appended); the trainer's own env, command, resources and
    /dev/shm cannot be overwritten (docs/install.md#pod-customisation).
    """

    labels: dict[str, str] = Field(default_factory=dict, description="Extra pod labels.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Extra pod annotations.")
    service_account_name: str | None = Field(None, alias="serviceAccountName",
                                             description="ServiceAccount of the pods (IRSA, workload identity).")
    automount_service_account_token: bool | None = Field(
        None, alias="automountServiceAccountToken",
        description="Mount the ServiceAccount's API token into the pods; default false (the trainer never "
                    "calls the Kubernetes API). PyTorchJob only.")
    image_pull_secrets: list[dict[str, Any]] = Field(default_factory=list, alias="imagePullSecrets",
                                                     description="Image pull secrets, e.g. [{name: regcred}].")
    env: list[dict[str, Any]] = Field(default_factory=list, description="Extra env of the trainer (EnvVar list).")
    env_from: list[dict[str, Any]] = Field(default_factory=list, alias="envFrom",
                                           description="Extra envFrom of the trainer (ConfigMaps, Secrets).")
    volumes: list[dict[str, Any]] = Field(default_factory=list, description="Extra pod volumes.")
    volume_mounts: list[dict[str, Any]] = Field(default_factory=list, alias="volumeMounts",
                                                description="Extra volume mounts of the trainer.")
    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector",
                                          description="Extra node selector labels.")
    affinity: dict[str, Any] = Field(default_factory=dict, description="Pod affinity (Kubernetes Affinity).",
                                     json_schema_extra=_FREEFORM)
    tolerations: list[dict[str, Any]] = Field(default_factory=list, description="Extra tolerations.")
    priority_class_name: str | None = Field(None, alias="priorityClassName", description="PriorityClass of the pods.")
    security_context: dict[str, Any] = Field(
        default_factory=dict, alias="securityContext", json_schema_extra=_FREEFORM,
        description="Pod securityContext fields, merged over the restricted defaults (explicit relaxation only).")
    container_security_context: dict[str, Any] = Field(
        default_factory=dict, alias="containerSecurityContext", json_schema_extra=_FREEFORM,
        description="Trainer container securityContext fields, merged over the restricted defaults.")
    resources: PodResources = Field(default_factory=PodResources,
                                    description="Extra resources (rdma/hca, vpc.amazonaws.com/efa, hugepages).")

    @model_validator(mode="after")
    def _names(self) -> PodTemplateSpec:
        _named(self.image_pull_secrets, "name", "podTemplate.imagePullSecrets")
        _named(self.env, "name", "podTemplate.env")
        _named(self.volumes, "name", "podTemplate.volumes")
        _named(self.volume_mounts, "name", "podTemplate.volumeMounts", unique=False)
        _named(self.volume_mounts, "mountPath", "podTemplate.volumeMounts")
        for item in self.env:
            if item["name"] in RESERVED_ENV:
                raise ValueError(f"podTemplate.env: {item['name']} is set by the operator from "
                                 f"{RESERVED_ENV[item['name']]}; it cannot be overwritten")
        if any(v["name"] == SHM_VOLUME for v in self.volumes):
            raise ValueError(f"podTemplate.volumes: {SHM_VOLUME!r} is the operator's /dev/shm; pick another name")
        if any(m["mountPath"] == SHM_PATH for m in self.volume_mounts):
            raise ValueError(f"podTemplate.volumeMounts: {SHM_PATH} is the operator's memory-backed volume "
                             "(size it with spec.resources.shmSize)")
        return self

    def merged(self, over: PodTemplateSpec | None) -> PodTemplateSpec:
        """This template with `over` (a stage's) on top: maps by key, lists by name."""
        if over is None:
            return self
        return PodTemplateSpec.model_validate(merge_pod_templates(
            self.model_dump(by_alias=True, exclude_defaults=True),
            over.model_dump(by_alias=True, exclude_defaults=True)))


#: List fields of a pod template and the key their items are merged by (None: appended, deduplicated).
LIST_MERGE_KEYS = {"imagePullSecrets": "name", "env": "name", "envFrom": None, "volumes": "name",
                   "volumeMounts": "mountPath", "tolerations": None}


def merge_lists(base: list[Any], over: list[Any], key: str | None) -> list[Any]:
    """Items of `over` replace the base item with the same key, in place; new ones are appended."""
    out = list(base)
    for item in over:
        at = next((i for i, b in enumerate(out) if (key is None and b == item)
                   or (key is not None and isinstance(b, dict) and b.get(key) == item.get(key))), None)
        if at is None:
            out.append(item)
        else:
            out[at] = item
    return out


def merge_pod_templates(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if key in LIST_MERGE_KEYS:
            out[key] = merge_lists(out.get(key, []), value, LIST_MERGE_KEYS[key])
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


#: Trainer keys the pipeline sets for every stage (its wiring): as overrides they would be
#: overwritten or ignored, so they are refused, naming the key that sets them instead:
#: trainer key -> (the `submit` key, the EvePipeline field).
OPERATOR_OWNED: dict[str, tuple[str | None, str]] = {
    "stage": ("stage", "spec.start / spec.until"),
    "pipeline": ("name", "metadata.name"),
    "output": ("output", "spec.output"),
    "init_from": ("init_from", "spec.initFrom"),
    "data.urls": ("data", "spec.data or spec.stages.<stage>.data"),
    "storage.endpoint_url": ("endpoint_url", "spec.s3.endpointUrl"),
    "storage.region": ("region", "spec.s3.region"),
    "mlflow.tracking_uri": ("tracking_uri", "spec.mlflow.trackingUri"),
    "mlflow.experiment": ("experiment", "spec.mlflow.experiment"),
    "mlflow.parent_run_id": (None, "the operator (the pipeline's MLflow run)"),
    "mlflow.previous_run_id": (None, "the operator (the previous stage's MLflow run)"),
}


def owned_key_error(key: str, given: str, *, cli: bool) -> str | None:
    """Why the trainer override `key` (given as `given`) is refused, or None when it is not owned."""
    if key not in OPERATOR_OWNED:
        return None
    cli_key, field = OPERATOR_OWNED[key]
    if key == "stage":
        how = "choose the stages with stage=<first> and until=<last>" if cli else "set spec.start and spec.until"
        return f"{given}: every stage runs as itself; {how}"
    if cli_key is None:
        return f"{given} is set by {field}; it cannot be overridden"
    use = f"use {cli_key}=... instead" if cli else f"set {field} instead"
    if key == "data.urls":
        use = ("use data=... (every stage) or <stage>.data=... instead" if cli
               else "set spec.data or spec.stages.<stage>.data instead")
    if key == "init_from":
        use += " (it is the first stage's; each later stage starts from the previous stage's export)"
    return f"{given} is set by the pipeline from {field}; {use}"


class StageSpec(_Model):
    data: list[Location] = Field(default_factory=list, description="Dataset URLs of this stage.")
    overrides: dict[str, OverrideValue] = Field(
        default_factory=dict, description="Trainer overrides (dotted keys) for this stage.")
    resources: ResourcesSpec | None = Field(None, description="Resources of this stage; default spec.resources.")
    stall_timeout_s: int | None = Field(None, alias="stallTimeoutSeconds", ge=0,
                                        description="Stall timeout of this stage; default spec.stallTimeoutSeconds.")
    pod_template: PodTemplateSpec | None = Field(None, alias="podTemplate",
                                                 description="Pod customisation, merged over spec.podTemplate.")


# -- evaluation in the pipeline (spec.eval) -------------------------------------------------------

EvalMode = Literal["before", "beside"]
#: `pope.f1 >= 0.80`: a benchmark, one of its scores (as eve-eval names them), a comparison, a number
_GATE = re.compile(r"^\s*([a-z][a-z0-9_]*)\.([A-Za-z0-9_/.-]+)\s*(>=|<=|>|<)\s*(-?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*$")
_BENCH_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Gate:
    """One gate of spec.eval.gate: the export passes when `scores[bench][metric] <op> threshold`."""

    bench: str
    metric: str
    op: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.bench}.{self.metric} {self.op} {self.threshold:g}"

    def passes(self, value: float) -> bool:
        return {">=": value >= self.threshold, ">": value > self.threshold, "<=": value <= self.threshold,
                "<": value < self.threshold}[self.op]


def parse_gate(text: str) -> Gate:
    """'pope.f1 >= 0.80' -> Gate; ValueError naming the expected form."""
    m = _GATE.match(text)
    if not m:
        raise ValueError(f"gate {text!r} is not of the form '<bench>.<score> <op> <number>' with op one of "
                         ">=, >, <=, < (e.g. 'pope.f1 >= 0.80')")
    return Gate(m.group(1), m.group(2), m.group(3), float(m.group(4)))


def _one_or_list(value: Any) -> Any:
    """`after: sft` or `after=sft,pretrain` (the CLI) as a list; a list stays a list."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


class EvalSpec(_Model):
    """Benchmark evaluation of stage exports (eve-eval, docs/eval.md) as jobs of the pipeline."""

    data: dict[str, Location] = Field(
        ..., description="Benchmark -> its bench folder URL (docs/eval.md), e.g. {pope: s3://bucket/bench/pope}.")
    after: Annotated[list[Stage], BeforeValidator(_one_or_list)] = Field(
        default_factory=list, description="Stages whose export is evaluated; default the last stage of the chain.")
    mode: EvalMode = Field("before", description=(
        "before: the next stage starts once the evaluation is done (and its gate passed); beside: the next "
        "stage starts at once and the evaluation runs beside it."))
    gate: Annotated[list[str], BeforeValidator(_one_or_list)] = Field(
        default_factory=list, description="Conditions every evaluated export must meet, e.g. ['pope.f1 >= 0.80']; "
                                          "one that fails stops the pipeline.")
    max_new_tokens: int = Field(128, alias="maxNewTokens", ge=1, description="Generation limit per answer.")
    batch_size: int = Field(8, alias="batchSize", ge=1, description="Questions generated together per rank.")
    resources: ResourcesSpec | None = Field(None, description="Resources of an evaluation job; default the "
                                                              "evaluated stage's.")

    @model_validator(mode="after")
    def _consistent(self) -> EvalSpec:
        if not self.data:
            raise ValueError("eval.data names no benchmark; e.g. eval.data.pope=s3://bucket/bench/pope")
        for name in self.data:
            if not _BENCH_NAME.match(name):
                raise ValueError(f"eval.data.{name}: a benchmark name is lower-case letters, digits and _ "
                                 "(e.g. pope, textvqa)")
        for text in self.gate:
            g = parse_gate(text)
            if g.bench not in self.data:
                raise ValueError(f"eval.gate {text!r}: {g.bench} is not evaluated (eval.data has "
                                 f"{', '.join(sorted(self.data))})")
        return self

    def gates(self) -> list[Gate]:
        return [parse_gate(text) for text in self.gate]


class PipelineSpec(_Model):
    preset: str = Field("tiny", description="Model preset: tiny | small | eve-7b | eve-7b-hd.")
    start: Stage = Field("prealign", description="First stage to run.")
    until: Stage | None = Field(None, description="Last stage to run; default the end of the chain.")
    hd: bool = Field(False, description="Use the HD chain (... -> sft-hd at 1344 px).")
    init_from: FolderLocation | None = Field(None, alias="initFrom",
                                            description="Checkpoint of the first stage (export URL or Llama folder).")
    output: Location = Field(..., description="Root URL of checkpoints, e.g. s3://bucket/eve.")
    data: list[Location] = Field(default_factory=list, description="Dataset URLs for stages without their own.")
    overrides: dict[str, OverrideValue] = Field(default_factory=dict,
                                                description="Trainer overrides for every stage.")
    stages: dict[Stage, StageSpec] = Field(default_factory=dict, description="Per-stage settings.")
    s3: S3Spec = Field(default_factory=S3Spec)
    mlflow: MlflowSpec = Field(default_factory=MlflowSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    image: Annotated[str, _checked(image_problem)] = Field("ghcr.io/eve-platform/trainer:0.1.0", json_schema_extra=_operator_default,
                       description="Trainer image; default the operator's (the chart's trainer.image), "
                                   "else ghcr.io/eve-platform/trainer:0.1.0.")
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec)
    pod_template: PodTemplateSpec = Field(default_factory=PodTemplateSpec,
                                          alias="podTemplate",
                                          description="Pod customisation of every stage (docs/install.md).")
    max_attempts: int = Field(3, alias="maxAttempts", ge=1, le=20,
                              description="Attempts per stage before the pipeline fails.")
    backoff_limit: int = Field(3, alias="backoffLimit", ge=0, description="PyTorchJob pod restarts per attempt.")
    active_deadline_s: int | None = Field(None, alias="activeDeadlineSeconds", ge=1,
                                          description="Wall-clock limit of one stage job.")
    suspend: bool = Field(False, description="Suspend the current stage's job.")
    stall_timeout_s: int = Field(900, alias="stallTimeoutSeconds", ge=0, description=(
        "Restart a stage (as a new attempt) when no rank's step advanced for this long; 0: never."))
    eval: EvalSpec | None = Field(None, description=(
        "Benchmarks to run on stage exports, as jobs of the pipeline (docs/eval.md), with optional gates."))
    job_api: JobApi | None = Field(
        None, alias="jobApi",
        description="Job API of the stage jobs: PyTorchJob (Training Operator v1) or TrainJob (Kubeflow "
                    "Trainer v2); default the operator's (EVE_JOB_API, else PyTorchJob).")

    @model_validator(mode="after")
    def _cross_field(self) -> PipelineSpec:
        if self.preset not in MODEL_PRESETS:
            raise ValueError(f"preset={self.preset!r} is not one of {', '.join(MODEL_PRESETS)}")
        chain = self.full_chain()
        if self.start not in chain:
            raise ValueError(f"start={self.start!r} is not in the chain {' -> '.join(chain)}"
                             + (" (set hd: true for sft-hd)" if self.start == "sft-hd" else ""))
        if self.until is not None:
            if self.until not in chain:
                raise ValueError(f"until={self.until!r} is not in the chain {' -> '.join(chain)}")
            if chain.index(self.until) < chain.index(self.start):
                raise ValueError(f"until={self.until!r} comes before start={self.start!r}")
        runs = self.chain()
        if self.eval is not None:
            for name in self.eval.after:
                if name not in runs:
                    raise ValueError(f"eval.after={name}: this pipeline runs {' -> '.join(runs)}; evaluate "
                                     "one of those stages")
        for name in self.stages:
            if name not in chain:
                raise ValueError(f"stages.{name} is not in the chain {' -> '.join(chain)}")
            if name not in runs:
                raise ValueError(f"stages.{name}: this pipeline runs {' -> '.join(runs)} (start={self.start}"
                                 + (f", until={self.until}" if self.until else "") + f"), so settings for {name} "
                                 "would never be used; drop them or widen start..until")
        for where, overrides in [("overrides", self.overrides),
                                 *((f"stages.{n}.overrides", st.overrides) for n, st in self.stages.items())]:
            for key in overrides:
                if (problem := owned_key_error(key, f"{where}.{key}", cli=False)) is not None:
                    raise ValueError(problem)
        if self.scheduling.gang_scheduler == "kueue" and not self.scheduling.queue:
            raise ValueError("scheduling.queue is required with scheduling.gangScheduler=kueue "
                             "(the Kueue LocalQueue the stage jobs are submitted to)")
        return self

    def eval_after(self) -> list[str]:
        """The stages whose export is evaluated (in chain order); [] without spec.eval."""
        if self.eval is None:
            return []
        wanted: list[str] = list(self.eval.after) or [self.chain()[-1]]
        return [s for s in self.chain() if s in wanted]

    def full_chain(self) -> tuple[str, ...]:
        return HD_CHAIN if (self.hd or self.start == "sft-hd") else DEFAULT_CHAIN

    def chain(self) -> list[str]:
        """The stages this pipeline runs, in order."""
        full = self.full_chain()
        end = full.index(self.until) + 1 if self.until else len(full)
        return list(full[full.index(self.start):end])

    def previous_stage(self, stage: str) -> str | None:
        full = self.full_chain()
        i = full.index(stage)
        return full[i - 1] if i > 0 else None

    def stage(self, name: str) -> StageSpec:
        return self.stages.get(name) or StageSpec()  # type: ignore[call-overload]  # any str asks

    def resources_for(self, name: str) -> ResourcesSpec:
        return self.stage(name).resources or self.resources

    def data_for(self, name: str) -> list[str]:
        return self.stage(name).data or self.data

    def planned_init_from(self, pipeline: str, stage: str) -> str | None:
        """Where a stage will start: the pipeline's init_from for the first stage, else the
        previous stage's export (what the pipeline core hands it once that stage completes)."""
        from eve_contract.layout import export_prefix

        previous = self.previous_stage(stage)
        if previous is None or (stage == self.chain()[0] and self.init_from):
            return self.init_from
        return f"{self.output.rstrip('/')}/{export_prefix(pipeline, previous)}"

    def pod_template_for(self, name: str) -> PodTemplateSpec:
        """The pipeline's pod customisation with the stage's on top."""
        return self.pod_template.merged(self.stage(name).pod_template)


__all__ = ["OPERATOR_OWNED", "owned_key_error", "PipelineSpec", "StageSpec", "PodTemplateSpec", "PodResources",
           "ResourcesSpec", "SchedulingSpec", "S3Spec", "MlflowSpec", "GangScheduler", "JobApi", "STAGES",
           "EvalSpec", "EvalMode", "Gate", "parse_gate"]
