"""The job spec of a benchmark evaluation: `eve-eval ...` on every rank, with a pipeline's wiring.

The same JobSpec a stage gets (image, resources, scheduling, pod template, S3 and MLflow env,
credentials by Secret reference), so the PyTorchJob/TrainJob builders render it unchanged and
each pod runs `eve-launch -- eve-eval ...`. `eve-platform eval --backend kubernetes` builds one
from its words; a pipeline that evaluates its exports can build one from its own spec. Pure.
"""

from __future__ import annotations

from eve_contract.naming import LABEL_PIPELINE, LABEL_STAGE
from eve_operator.jobspec import JobSpec
from eve_operator.spec import PipelineSpec

LABEL_EVAL = "eve-platform.io/eval"
EVAL_COMMAND = "eve-eval"


def build_eval_job_spec(name: str, spec: PipelineSpec, eval_args: list[str], *, pipeline: str | None = None,
                        stage: str = "eval", attempt: int = 1) -> JobSpec:
    """eval_args: eve-eval's words (the model, bench=..., <bench>.data=..., output=..., ...), passed
    to every rank unchanged. `pipeline`/`stage` label the job (default: the job's own name, "eval")."""
    env = {"PYTHONUNBUFFERED": "1", "EVE_EVAL": name}
    if spec.s3.endpoint_url:
        env["AWS_ENDPOINT_URL"] = spec.s3.endpoint_url
    if spec.s3.region:
        env["AWS_REGION"] = spec.s3.region
    if spec.mlflow.tracking_uri:
        env["MLFLOW_TRACKING_URI"] = spec.mlflow.tracking_uri
    secret_env = {}
    if spec.s3.credentials_secret:
        secret_env = {k: (spec.s3.credentials_secret, k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    resources = spec.resources
    return JobSpec(
        name=name, pipeline=pipeline or name, stage=stage, attempt=attempt, image=spec.image,
        command=[EVAL_COMMAND, *eval_args], env=env, secret_env=secret_env,
        nodes=resources.nodes, procs_per_node=resources.procs_per_node, resources=resources,
        scheduling=spec.scheduling, backoff_limit=spec.backoff_limit, active_deadline_s=spec.active_deadline_s,
        labels={LABEL_PIPELINE: pipeline or name, LABEL_STAGE: stage, LABEL_EVAL: name},
        pod_template=spec.pod_template)
