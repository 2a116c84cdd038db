"""The names every MLflow writer shares: tags, metric names, aliases, where artifacts go.

torch-free and mlflow-free (plain data and pure functions), so the operator's parent run,
the local backend and the trainer's stage runs agree on one vocabulary. The experiment is
created by whoever comes first, so each creator calls `experiment_create_fields`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

#: MLflow 3's experiment kind (the UI reads this tag): "custom_model_development" opens the
#: experiment on the "Model training" view (runs table, charts) instead of the GenAI view.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"
EXPERIMENT_TAGS = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND_TRAINING}

# -- run tags ------------------------------------------------------------------------------
TAG_PIPELINE = "eve.pipeline"
TAG_STAGE = "eve.stage"
TAG_INIT_CHECKPOINT = "eve.init_checkpoint"
TAG_PREVIOUS_RUN = "eve.previous_run_id"
TAG_EXPORT_URI = "eve.export_uri"
TAG_MANIFEST_SHA256 = "eve.manifest_sha256"
TAG_PARENT_RUN = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"
#: "pipeline" on the operator's parent run, "stage" on a trainer's run
TAG_RUN_KIND = "eve.run_kind"

# -- metrics: "<group>/<name>" groups them into sections of the UI's chart view --------------
TRAIN_LOSS = "train/loss"
TRAIN_LM_LOSS = "train/lm_loss"
TRAIN_ALIGN_LOSS = "train/align_loss"
TRAIN_LR = "train/lr"
TRAIN_VISION_LR = "train/vision_lr"
TRAIN_GRAD_NORM = "train/grad_norm"
PERF_TOKENS_PER_S = "perf/tokens_per_s"
PERF_SAMPLES_PER_S = "perf/samples_per_s"
PERF_STEP_TIME_S = "perf/step_time_s"
PERF_MFU = "perf/mfu"
PERF_PADDING_FRACTION = "perf/padding_fraction"
PERF_MODEL_TFLOPS_PER_S = "perf/model_tflops_per_s"
PERF_GPU_MEM_MAX_ALLOCATED = "perf/gpu_memory_max_allocated_gib"
PERF_GPU_MEM_RESERVED = "perf/gpu_memory_reserved_gib"
DATA_WAIT_FRACTION = "data/wait_fraction"
#: the checkpoint-interval advice (Young/Daly), logged once after the first committed save
CHECKPOINT_OPTIMAL_EVERY_STEPS = "checkpoint/optimal_every_steps"
CHECKPOINT_SAVE_BLOCKING_S = "checkpoint/save_blocking_s"
#: Validation on the held-out set (validation.data): weighted means over all ranks, and the
#: pass's wall time (evaluation time, never part of perf/step_time_s)
VAL_LOSS = "val/loss"
VAL_LM_LOSS = "val/lm_loss"
VAL_ALIGN_LOSS = "val/align_loss"
VAL_SAMPLES = "val/samples"
VAL_TIME_S = "val/time_s"
#: Counters that continue across stages: a stage starts where the previous stage's export ended.
PROGRESS_GLOBAL_STEP = "progress/global_step"
PROGRESS_TOKENS_SEEN = "progress/tokens_seen"
PROGRESS_SAMPLES_SEEN = "progress/samples_seen"
PROGRESS_STAGE_STEP = "progress/stage_step"
PROGRESS_FRACTION = "progress/fraction"

#: the stage-complete manifest's `extra` keys carrying the counters into the next stage
MANIFEST_GLOBAL_STEP = "global_step"
MANIFEST_TOKENS_SEEN = "tokens_seen"
MANIFEST_SAMPLES_SEEN = "samples_seen"
#: ... and the stage's last validation loss and its step (absent without validation.data)
MANIFEST_VAL_LOSS = "val_loss"
MANIFEST_VAL_STEP = "val_step"

# -- artifacts -----------------------------------------------------------------------------
CONFIG_ARTIFACT = "config/resolved-config.json"
LOGS_ARTIFACT_DIR = "logs"

# -- the registry ----------------------------------------------------------------------------
#: MLflow's built-in alias of a registered model's newest version (reserved: never set by us)
ALIAS_LATEST = "latest"


def stage_alias(stage: str) -> str:
    """The registry alias of a stage's newest export: prealign, pretrain, sft, sft_hd.

    Aliases allow letters, digits and underscores only, hence sft-hd -> sft_hd."""
    return stage.replace("-", "_")


def registered_model_name(configured: str | None, preset: str) -> str:
    """One registered model per family: the configured name, else eve-<preset> (eve-7b-hd -> eve-7b)."""
    if configured:
        return configured
    return "eve-" + preset.removesuffix("-hd")


def stage_run_name(stage: str) -> str:
    """Stage runs are named by their stage; the pipeline is the parent run's name and a tag."""
    return stage


def ui_runs_url(ui_base: str, experiment_id: str) -> str:
    """The experiment's runs table in MLflow 3's UI, on the model-training view, oldest stage first.

    MLflow 3.17's UI picks GenAI vs model training from a browser-wide setting (default GenAI)
    unless the link says `workflowType`; older 3.x UIs read the experiment kind tag."""
    return (f"{ui_base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            "&orderByKey=attributes.start_time&orderByAsc=true")


def artifact_location(tracking_uri: str | None) -> str | None:
    """Where a new experiment's artifacts go when the tracking store is a local file.

    `sqlite:///<dir>/mlflow.db` -> `<dir>/mlartifacts` (beside the database, e.g. under
    .eve-platform/), never MLflow's default `./mlruns` in the current directory. None for
    a tracking server: it decides (the chart's serves them from S3)."""
    if not tracking_uri:
        return None
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite":
        path = unquote(parsed.path)
        if tracking_uri.startswith("sqlite:////"):
            path = "/" + path.lstrip("/")
        elif tracking_uri.startswith("sqlite:///"):
            path = path[1:]  # sqlite:///rel/path.db is relative
        if not path or path == ":memory:":
            return None
        return (Path(path).resolve().parent / "mlartifacts").as_uri()
    return None  # a file store keeps artifacts inside itself; a server decides for itself


def experiment_create_fields(tracking_uri: str | None) -> dict[str, object]:
    """Keyword arguments for MlflowClient.create_experiment (tags, artifact_location)."""
    fields: dict[str, object] = {"tags": dict(EXPERIMENT_TAGS)}
    if (location := artifact_location(tracking_uri)) is not None:
        fields["artifact_location"] = location
    return fields


def get_or_create_experiment(client: Any, name: str, tracking_uri: str | None) -> str:
    """The experiment's id, for the trainer and the operator (given an MlflowClient; the
    operator's REST path sets the same tag). A new one gets the training kind tag and, on a
    local SQLite store, an artifact location beside the database. An existing experiment
    without a kind gets the tag (an experiment somebody tagged otherwise keeps theirs)."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, **experiment_create_fields(tracking_uri))
        except Exception:  # the client's own error (mlflow's, or the REST shim's): created meanwhile?
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if EXPERIMENT_KIND_TAG not in (exp.tags or {}):
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND_TRAINING)
    return exp.experiment_id
