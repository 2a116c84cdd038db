"""The job spec handed to a backend: what to run for one stage attempt.

The Kubernetes backend turns it into a PyTorchJob or TrainJob, the local backend into
processes. Building it resolves and validates the stage's trainer config (recipe + overrides
+ the pipeline's wiring), so a bad key fails here, before anything is submitted; the resolved
config then travels to every rank whole, as JSON in EVE_TRAIN_CONFIG
(eve_contract.resolved_config), and the command is just `eve-train <stage>`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eve_contract import resolved_config
from eve_contract.naming import job_labels
from eve_operator.pipeline import SubmitEval, SubmitJob
from eve_operator.spec import PipelineSpec, PodTemplateSpec, ResourcesSpec, SchedulingSpec
from eve_trainer.config import ConfigError, TrainConfig, check_key, resolve, set_dotted
from eve_trainer.stage_summary import check_model_meant

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


def store_and_tracking_env(spec: PipelineSpec) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """The env every pod of a pipeline's jobs (stages and evaluations) gets for S3 and MLflow, and
    the credentials it references from the pipeline's Secret: env var -> (Secret, key), never copied."""
    env: dict[str, str] = {}
    if spec.s3.endpoint_url:
        env["AWS_ENDPOINT_URL"] = spec.s3.endpoint_url
    if spec.s3.region:
        env["AWS_REGION"] = spec.s3.region
    if spec.mlflow.tracking_uri:
        env["MLFLOW_TRACKING_URI"] = spec.mlflow.tracking_uri
    secret_env: dict[str, tuple[str, str]] = {}
    if spec.s3.credentials_secret:
        secret_env = {k: (spec.s3.credentials_secret, k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    return env, secret_env


def build_job_spec(name: str, spec: PipelineSpec, submit: SubmitJob, *,
                   parent_run_id: str | None = None, check_model: bool = True) -> JobSpec:
    """The job of one stage attempt. `check_model=False` (`config show` only) renders a stage that
    submit would refuse for its tokenizer or teacher, so that the refusal can be shown beside it."""
    cfg = resolve_stage_config(name, spec, submit, parent_run_id=parent_run_id)  # validate before submit
    # no tokenizer, one that cannot fit, a 7B stage without a teacher: refused before any pod starts
    if check_model:
        check_model_meant(cfg, chained=submit.stage != spec.chain()[0])
    resources = spec.resources_for(submit.stage)
    world = resources.nodes * resources.procs_per_node
    try:  # the job's real world size: every rank would exit 2 on a batch that does not split
        cfg.gradient_accumulation(world)
    except ConfigError as err:
        raise ConfigError(f"stage {submit.stage} on {resources.nodes} node(s) x {resources.procs_per_node} "
                          f"process(es) = world size {world}: {err}") from None
    env = {"EVE_PIPELINE": name, "EVE_STAGE": submit.stage, "EVE_ATTEMPT": str(submit.attempt),
           "PYTHONUNBUFFERED": "1",
           # the whole resolved config, as JSON: every value reaches the ranks as validated here
           resolved_config.ENV_VAR: resolved_config.dumps(submit.stage, cfg.model_dump(mode="json"))}
    wiring, secret_env = store_and_tracking_env(spec)
    env.update(wiring)
    return JobSpec(
        name=submit.job_name, pipeline=name, stage=submit.stage, attempt=submit.attempt,
        image=spec.image,
        command=["eve-train", submit.stage],
        env=env, secret_env=secret_env,
        nodes=resources.nodes, procs_per_node=resources.procs_per_node, resources=resources,
        scheduling=spec.scheduling, backoff_limit=spec.backoff_limit,
        active_deadline_s=spec.active_deadline_s, suspend=spec.suspend,
        labels=job_labels(name, submit.stage, submit.attempt),
        pod_template=spec.pod_template_for(submit.stage),
    )


#: The evaluation entry point every rank of an eval job runs (eve_trainer.evaluation, docs/eval.md).
EVALUATOR = "eve-eval"


def eval_args(spec: PipelineSpec, submit: SubmitEval) -> list[str]:
    """eve-eval's words for one export: its benchmarks and their data, the generation settings, S3.
    The output is eve-eval's default, beside the export (<stage>/eval/<bench>/scores.json), which is
    where the pipeline reads the scores (observe.StoreReads.eval_scores)."""
    assert spec.eval is not None
    words = [submit.model, f"bench={','.join(spec.eval.data)}",
             *(f"{bench}.data={url}" for bench, url in spec.eval.data.items()),
             f"max_new_tokens={spec.eval.max_new_tokens}", f"batch_size={spec.eval.batch_size}"]
    if spec.s3.endpoint_url:
        words.append(f"endpoint_url={spec.s3.endpoint_url}")
    if spec.s3.region:
        words.append(f"region={spec.s3.region}")
    if not spec.mlflow.tracking_uri:
        words.append("mlflow=false")  # a pipeline without tracking: no scores to a run either
    return words


def evaluator_job(spec: PipelineSpec, *, name: str, pipeline: str, stage: str, attempt: int, words: list[str],
                  env: dict[str, str], labels: dict[str, str], resources: ResourcesSpec,
                  pod_template: PodTemplateSpec) -> JobSpec:
    """A job whose ranks run `eve-eval <words>` (a pipeline's spec.eval, `eve-platform eval`): the pipeline's
    image, S3 and MLflow wiring, scheduling and limits, with the caller's env, labels, resources and pods."""
    wiring, secret_env = store_and_tracking_env(spec)
    return JobSpec(
        name=name, pipeline=pipeline, stage=stage, attempt=attempt, image=spec.image,
        command=[EVALUATOR, *words], env={**env, "PYTHONUNBUFFERED": "1", **wiring}, secret_env=secret_env,
        nodes=resources.nodes, procs_per_node=resources.procs_per_node, resources=resources,
        scheduling=spec.scheduling, backoff_limit=spec.backoff_limit, active_deadline_s=spec.active_deadline_s,
        labels=labels, pod_template=pod_template,
    )


def build_eval_job_spec(name: str, spec: PipelineSpec, submit: SubmitEval) -> JobSpec:
    """The job that scores a stage's export: the same machinery as a stage (pod template, S3 and MLflow
    wiring, gang scheduling), with eve-eval as the command and spec.eval.resources (else the stage's)."""
    if spec.eval is None:
        raise ConfigError("an evaluation job needs spec.eval")
    return evaluator_job(
        spec, name=submit.job_name, pipeline=name, stage=submit.stage, attempt=submit.attempt,
        words=eval_args(spec, submit),
        env={"EVE_PIPELINE": name, "EVE_STAGE": submit.stage, "EVE_ATTEMPT": str(submit.attempt)},
        labels=job_labels(name, f"eval-{submit.stage}", submit.attempt),
        resources=spec.eval.resources or spec.resources_for(submit.stage),
        pod_template=spec.pod_template_for(submit.stage),
    )
