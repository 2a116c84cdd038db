"""The pipeline spec: what an `EvePipeline` resource (and a local pipeline) asks for.

One pydantic model serves the CLI, the local backend and the operator; the CRD's
OpenAPI schema is generated from it (eve_operator.crd). Validation happens once, here.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from eve_trainer.config import DEFAULT_CHAIN, HD_CHAIN, MODEL_PRESETS, STAGES, Stage

GangScheduler = Literal["volcano", "scheduler-plugins", "kueue", "none"]
OverrideValue = str | int | float | bool | list[str] | list[int] | list[float] | None
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
#: A Kubernetes quantity ("32", "400Gi"); YAML may give a bare number (`cpu: 32`).
Quantity = Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, int | float) and not isinstance(v, bool)
                                          else v)]
_INT_OR_STRING = {"x-kubernetes-int-or-string": True}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class S3Spec(_Model):
    endpoint_url: str | None = Field(None, alias="endpointUrl", description="S3 endpoint; empty for AWS.")
    region: str | None = Field(None, description="S3 region.")
    credentials_secret: str | None = Field(
        None, alias="credentialsSecret",
        description="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; never put credentials inline.")


class MlflowSpec(_Model):
    tracking_uri: str | None = Field(None, alias="trackingUri", description="MLflow tracking URI.")
    experiment: str = Field("eve-platform", description="MLflow experiment name.")


class ResourcesSpec(_Model):
    nodes: int = Field(1, ge=1, le=512, description="Pods (nodes) per stage job.")
    gpus_per_node: int = Field(8, alias="gpusPerNode", ge=0, le=16, description="GPUs per pod; 0 runs on CPU.")
    gpu_product: str | None = Field(
        "NVIDIA-A100-SXM4-80GB", alias="gpuProduct",
        description="nvidia.com/gpu.product node label to select; empty for any.")
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
    gang_scheduler: GangScheduler = Field("volcano", alias="gangScheduler",
                                          description="volcano | scheduler-plugins | kueue | none.")
    queue: str | None = Field(None, description="Volcano queue or Kueue LocalQueue name.")
    priority_class: str | None = Field(None, alias="priorityClass", description="PriorityClass of the pods.")
    schedule_timeout_s: int = Field(3600, alias="scheduleTimeoutSeconds", ge=0,
                                    description="Give up gang scheduling after this long.")


class StageSpec(_Model):
    data: list[str] = Field(default_factory=list, description="Dataset URLs of this stage.")
    overrides: dict[str, OverrideValue] = Field(
        default_factory=dict, description="Trainer overrides (dotted keys) for this stage.")
    resources: ResourcesSpec | None = Field(None, description="Resources of this stage; default spec.resources.")
    stall_timeout_s: int | None = Field(None, alias="stallTimeoutSeconds", ge=0,
                                        description="Stall timeout of this stage; default spec.stallTimeoutSeconds.")


class PipelineSpec(_Model):
    preset: str = Field("tiny", description="Model preset: tiny | small | eve-7b | eve-7b-hd.")
    start: Stage = Field("prealign", description="First stage to run.")
    until: Stage | None = Field(None, description="Last stage to run; default the end of the chain.")
    hd: bool = Field(False, description="Use the HD chain (... -> sft-hd at 1344 px).")
    init_from: str | None = Field(None, alias="initFrom",
                                  description="Checkpoint of the first stage (export URL or Llama folder).")
    output: str = Field(..., description="Root URL of checkpoints, e.g. s3://bucket/eve.")
    data: list[str] = Field(default_factory=list, description="Dataset URLs for stages without their own.")
    overrides: dict[str, OverrideValue] = Field(default_factory=dict,
                                                description="Trainer overrides for every stage.")
    stages: dict[Stage, StageSpec] = Field(default_factory=dict, description="Per-stage settings.")
    s3: S3Spec = Field(default_factory=S3Spec)
    mlflow: MlflowSpec = Field(default_factory=MlflowSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    image: str = Field("ghcr.io/eve-platform/trainer:0.1.0", description="Trainer image.")
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec)
    max_attempts: int = Field(3, alias="maxAttempts", ge=1, le=20,
                              description="Attempts per stage before the pipeline fails.")
    backoff_limit: int = Field(3, alias="backoffLimit", ge=0, description="PyTorchJob pod restarts per attempt.")
    active_deadline_s: int | None = Field(None, alias="activeDeadlineSeconds", ge=1,
                                          description="Wall-clock limit of one stage job.")
    suspend: bool = Field(False, description="Suspend the current stage's job.")
    stall_timeout_s: int = Field(900, alias="stallTimeoutSeconds", ge=0, description=(
        "Restart a stage (as a new attempt) when no rank's step advanced for this long; 0: never."))

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
        for name in self.stages:
            if name not in chain:
                raise ValueError(f"stages.{name} is not in the chain {' -> '.join(chain)}")
        if self.scheduling.gang_scheduler == "kueue" and not self.scheduling.queue:
            raise ValueError("scheduling.queue is required with scheduling.gangScheduler=kueue "
                             "(the Kueue LocalQueue the stage jobs are submitted to)")
        return self

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
        return self.stages.get(name, StageSpec())  # type: ignore[call-arg]

    def resources_for(self, name: str) -> ResourcesSpec:
        return self.stage(name).resources or self.resources

    def data_for(self, name: str) -> list[str]:
        return self.stage(name).data or self.data


def validate_name(name: str) -> str:
    """Pipeline names become PyTorchJob names: DNS-1035 labels, short enough for suffixes."""
    if not _DNS_LABEL.match(name) or len(name) > 40:
        raise ValueError(
            f"name={name!r} must be a DNS-1035 label of at most 40 characters "
            "(lower-case letters, digits and '-', starting with a letter)")
    return name


__all__ = ["PipelineSpec", "StageSpec", "ResourcesSpec", "SchedulingSpec", "S3Spec", "MlflowSpec",
           "GangScheduler", "validate_name", "STAGES"]
