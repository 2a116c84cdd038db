"""The job spec handed to a backend: what to run for one stage attempt.

The Kubernetes backend turns it into a PyTorchJob, the local backend into processes.
Building it validates the stage's trainer config (recipe + overrides), so a bad key
fails here, before anything is submitted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eve_contract.naming import job_labels
from eve_operator.pipeline import SubmitJob
from eve_operator.spec import PipelineSpec, PodTemplateSpec, ResourcesSpec, SchedulingSpec
from eve_trainer.config import ConfigError, TrainConfig, check_key, resolve, set_dotted

#: The node launcher (eve_trainer.launch): nodes x procs_per_node ranks, exit codes preserved.
LAUNCHER = "eve-launch"


@dataclass(frozen=True)
class JobSpec:
    name: str
    pipeline: str
    stage: str
    attempt: int
    image: str
    command: list[str]
    env: dict[str, str]
    secret_env: dict[str, tuple[str, str]]
    """Env var -> (Secret name, key): credentials are referenced, never copied."""
    nodes: int
    procs_per_node: int
    resources: ResourcesSpec
    scheduling: SchedulingSpec
    backoff_limit: int
    active_deadline_s: int | None
    suspend: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    pod_template: PodTemplateSpec = field(default_factory=PodTemplateSpec)  # type: ignore[arg-type]
    """The pipeline's pod customisation with the stage's on top (eve_operator.podtemplate)."""

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    @property
    def pod_command(self) -> list[str]:
        """A pod's command: a pod is a node, so it runs the node launcher, which starts
        procs_per_node ranks of `command` from the env the job controller injects (PET_*)."""
        return [LAUNCHER, "--", *self.command]


def stage_overrides(name: str, spec: PipelineSpec, submit: SubmitJob, *,
                    parent_run_id: str | None = None) -> dict[str, Any]:
    """Trainer overrides for one stage: pipeline-wide, then per stage, then the wiring."""
    flat: dict[str, Any] = {}
    flat.update(spec.overrides)
    flat.update(spec.stage(submit.stage).overrides)
    data = spec.data_for(submit.stage)
    flat.update({
        "pipeline": name,
        "output": spec.output,
        "init_from": submit.init_from,
        "mlflow.tracking_uri": spec.mlflow.tracking_uri,
        "mlflow.experiment": spec.mlflow.experiment,
        "mlflow.parent_run_id": parent_run_id,
        "mlflow.previous_run_id": submit.previous_run_id,
        "storage.endpoint_url": spec.s3.endpoint_url,
        "storage.region": spec.s3.region,
    })
    if data:
        flat["data.urls"] = list(data)
    return flat


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        set_dotted(nested, key, value)
    return nested


def resolve_stage_config(name: str, spec: PipelineSpec, submit: SubmitJob, *,
                         parent_run_id: str | None = None) -> TrainConfig:
    """The trainer config this stage will run with; raises ConfigError naming the key."""
    flat = stage_overrides(name, spec, submit, parent_run_id=parent_run_id)
    for key in flat:
        check_key(key, f" in the overrides of stage {submit.stage}")
    return resolve(submit.stage, spec.preset, _nest(flat))


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ",".join(_format_value(v) for v in value) + "]"
    return str(value)


def build_job_spec(name: str, spec: PipelineSpec, submit: SubmitJob, *,
                   parent_run_id: str | None = None) -> JobSpec:
    cfg = resolve_stage_config(name, spec, submit, parent_run_id=parent_run_id)  # validate before submit
    resources = spec.resources_for(submit.stage)
    world = resources.nodes * resources.procs_per_node
    try:  # the job's real world size: every rank would exit 2 on a batch that does not split
        cfg.gradient_accumulation(world)
    except ConfigError as err:
        raise ConfigError(f"stage {submit.stage} on {resources.nodes} node(s) x {resources.procs_per_node} "
                          f"process(es) = world size {world}: {err}") from None
    flat = stage_overrides(name, spec, submit, parent_run_id=parent_run_id)
    args = [f"{k}={_format_value(v)}" for k, v in flat.items() if v is not None and v != []]
    env = {"EVE_PIPELINE": name, "EVE_STAGE": submit.stage, "EVE_ATTEMPT": str(submit.attempt),
           "PYTHONUNBUFFERED": "1"}
    if spec.s3.endpoint_url:
        env["AWS_ENDPOINT_URL"] = spec.s3.endpoint_url
    if spec.s3.region:
        env["AWS_REGION"] = spec.s3.region
    if spec.mlflow.tracking_uri:
        env["MLFLOW_TRACKING_URI"] = spec.mlflow.tracking_uri
    secret_env = {}
    if spec.s3.credentials_secret:
        secret_env = {k: (spec.s3.credentials_secret, k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    return JobSpec(
        name=submit.job_name, pipeline=name, stage=submit.stage, attempt=submit.attempt,
        image=spec.image,
        command=["eve-train", "--preset", spec.preset, submit.stage, *args],
        env=env, secret_env=secret_env,
        nodes=resources.nodes, procs_per_node=resources.procs_per_node, resources=resources,
        scheduling=spec.scheduling, backoff_limit=spec.backoff_limit,
        active_deadline_s=spec.active_deadline_s, suspend=spec.suspend,
        labels=job_labels(name, submit.stage, submit.attempt),
        pod_template=spec.pod_template_for(submit.stage),
    )
