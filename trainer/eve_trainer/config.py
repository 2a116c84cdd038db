"""Typed trainer configuration and the EVE stage recipes.

This module must stay torch-free: the CLI and the operator import it to validate
overrides before anything heavy is loaded.

A run is described by a recipe (a function of stage and model preset, following the
EVE reference scripts) plus `key=value` overrides on dotted paths, e.g.
`optim.lr=1e-4 data.max_length=1024`.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from eve_contract.names import DEFAULT_CHAIN, HD_CHAIN, MODEL_PRESETS, STAGES, Stage  # noqa: F401 (re-exported)


class ConfigError(ValueError):
    """A user mistake in a config or an override; the message says what to do."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(_Section):
    preset: str = "tiny"
    """Model preset from eve_model: tiny | small | eve-7b | eve-7b-hd."""
    gradient_checkpointing: bool = False
    """Recompute decoder activations in backward (the reference turns it on for 7B)."""
    compile: bool = False
    """torch.compile each decoder layer (fuses norms/activations on GPU; first steps compile)."""
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    """auto = bf16 on CUDA, fp32 on CPU."""
    teacher_path: str | None = None
    """Local path or URL of the frozen CLIP teacher; None = random teacher (tests only)."""

    @model_validator(mode="after")
    def _known_preset(self) -> ModelSection:
        if self.preset not in MODEL_PRESETS:
            raise ValueError(f"model.preset={self.preset!r} is not one of {', '.join(MODEL_PRESETS)}")
        return self


class DataSection(_Section):
    urls: list[str] = Field(default_factory=list)
    """Dataset URLs (s3://bucket/prefix, file:///dir or a plain dir) holding shards + index.json."""
    tokenizer: str = "builtin:tiny"
    """Tokenizer folder (local or s3://), or builtin:tiny for the offline test tokenizer."""
    template: Literal["plain", "vicuna_v1"] = "plain"
    max_length: int = Field(2048, ge=16)
    num_workers: int = Field(2, ge=0, le=64)
    shuffle_buffer: int = Field(1000, ge=0)
    max_skip_fraction: float = Field(0.01, ge=0.0, le=1.0)
    """Fail the run when more than this fraction of samples had to be skipped as corrupt."""
    group_by_length: bool = False
    pack: bool = False
    """Several samples per row of a micro-batch (rows of max_length spliced positions), with
    document-masked attention: same losses and gradients, less padding."""


class OptimSection(_Section):
    lr: float = Field(4e-5, gt=0)
    """Learning rate of the LLM (and of everything in stages 2-3)."""
    vision_lr: float | None = Field(None, gt=0)
    """LR of vision_tower*/mm_projector parameters; None = same as lr."""
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    schedule: Literal["cosine", "constant"] = "cosine"
    grad_clip: float = Field(1.0, ge=0)


class DeepSpeedSection(_Section):
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False
    overlap_comm: bool = True


class CheckpointSection(_Section):
    every_steps: int = Field(500, ge=1)
    keep_last: int = Field(3, ge=1)
    grace_period_s: float = Field(120.0, gt=0)
    """Time allowed after SIGTERM to write a final checkpoint."""
    export: bool = True
    """Export the HF-format model and the stage-complete manifest at the end of the stage."""


#: tracking URI schemes MLflow 3 serves (its store registry, less `file`: MLflow 3 refuses the
#: file store unless MLFLOW_ALLOW_FILE_STORE is set, and a file path is per-pod anyway)
TRACKING_SCHEMES: tuple[str, ...] = ("http", "https", "databricks", "sqlite", "postgresql", "mysql", "mssql")


class MlflowSection(_Section):
    tracking_uri: str | None = None
    """MLflow tracking URI (http(s)://server, databricks, or a database URI); None disables tracking."""
    experiment: str = "eve-platform"
    log_every: int = Field(10, ge=1)
    parent_run_id: str | None = None
    """Run id of the pipeline run this stage nests under."""
    previous_run_id: str | None = None
    """MLflow run id of the stage this one starts from (lineage)."""
    system_metrics: bool = True
    system_metrics_interval_s: float = Field(30.0, ge=1.0)
    """Seconds between system-metric samples (CPU, memory, disk, network, GPU via nvidia-ml-py).
    30 s suits steps of seconds and runs of days (about 3000 points a day per metric)."""
    register_exports: bool = True
    """Register each stage export as a version of `registered_model`; the aliases prealign, pretrain,
    sft point at each stage's newest export (and MLflow's @latest at the newest version)."""
    registered_model: str | None = None
    """One registered model per pipeline family; None = eve-<model preset> (eve-7b-hd -> eve-7b)."""

    @field_validator("tracking_uri")
    @classmethod
    def _known_scheme(cls, uri: str | None) -> str | None:
        if uri:
            scheme = uri.split(":", 1)[0].split("+", 1)[0].lower() if ":" in uri else \
                ("databricks" if uri.lower() == "databricks" else "file")  # a bare path
            if scheme not in TRACKING_SCHEMES:
                what = "a file store, which MLflow 3 refuses" if scheme in ("file",) or "/" in scheme \
                    else f"of the unknown scheme {scheme!r}"
                raise ValueError(f"this is {what}; use a URI of the scheme {', '.join(TRACKING_SCHEMES)} "
                                 "(e.g. http://mlflow:5000 or sqlite:///mlflow.db)")
        return uri


class StorageSection(_Section):
    endpoint_url: str | None = None
    """S3 endpoint (SeaweedFS, MinIO, Ceph); None = AWS or AWS_ENDPOINT_URL."""
    region: str | None = None
    wait_s: float = Field(120.0, ge=0)
    """At start-up, how long to wait for a store that does not answer (an outage, a restart)
    before exiting 1 so the job is retried; a missing bucket or denied access exits 2 at once."""


class DistributedSection(_Section):
    timeout_s: float = Field(600.0, ge=10)
    """Collective timeout: a dead or hung peer ends the other ranks (exit 1, retried) after this."""


class HeartbeatSection(_Section):
    every_s: float = Field(30.0, ge=0)
    """Seconds between a rank's heartbeats (<stage>/heartbeat/rank-<r>.json); 0 turns them off."""


class DebugSection(_Section):
    hang_at_step: int | None = Field(None, ge=0)
    """Test switch: rank `hang_rank` blocks forever before step hang_at_step+1 (stall detection tests)."""
    hang_rank: int = Field(0, ge=0)
    hang_attempt: int = Field(0, ge=0)
    """Hang only in this attempt of the stage (EVE_ATTEMPT), so a restart can complete; 0: every attempt."""


class ValidationSection(_Section):
    """Loss on a fixed held-out set while training (eve_trainer.validation). Named `validation`,
    not `eval`: `eval.*` are the pipeline's benchmark keys (spec.eval)."""

    data: list[str] = Field(default_factory=list)
    """Held-out dataset roots (shards + index.json, like data.urls); empty: no validation."""
    every_steps: int = Field(0, ge=0)
    """Validate every this many optimizer steps; 0: only at the end of the stage (always run there)."""
    max_samples: int = Field(256, ge=1)
    """The first this many samples of the held-out data (index order): the same set every time."""
    micro_batch_size: int | None = Field(None, ge=1)
    """Samples per forward pass; None: the training micro_batch_size."""


class TrainConfig(_Section):
    stage: Stage
    pipeline: str = "default"
    """Pipeline (experiment) name; part of the output layout."""
    output: str = "file://./.eve-platform/store"
    """Root URL of checkpoints: <output>/<pipeline>/<stage>/..."""
    init_from: str | None = None
    """HF-format EVE export, or a Llama/Vicuna folder for prealign; None = random init."""
    seed: int = 42
    global_batch_size: int = Field(512, ge=1)
    micro_batch_size: int = Field(16, ge=1)
    max_steps: int | None = Field(None, ge=1)
    """None = one epoch of the data."""
    epochs: int = Field(1, ge=1)
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    deepspeed: DeepSpeedSection = Field(default_factory=DeepSpeedSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    mlflow: MlflowSection = Field(default_factory=MlflowSection)
    storage: StorageSection = Field(default_factory=StorageSection)
    distributed: DistributedSection = Field(default_factory=DistributedSection)
    heartbeat: HeartbeatSection = Field(default_factory=HeartbeatSection)
    debug: DebugSection = Field(default_factory=DebugSection)
    validation: ValidationSection = Field(default_factory=ValidationSection)
    progress: Literal["auto", "bar", "json", "none"] = "auto"

    def gradient_accumulation(self, world_size: int) -> int:
        """Micro-steps per optimizer step; the global batch must split evenly."""
        per_step = world_size * self.micro_batch_size
        if self.global_batch_size % per_step:
            raise ConfigError(
                f"global_batch_size={self.global_batch_size} is not divisible by world_size x "
                f"micro_batch_size = {world_size} x {self.micro_batch_size} = {per_step}; "
                f"choose global_batch_size as a multiple of {per_step}"
            )
        return self.global_batch_size // per_step

    def fingerprint(self) -> str:
        """sha256 of the resolved config, recorded in checkpoint manifests."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


# ----------------------------------------------------------------------------------------
# Recipes: the reference scripts (eve7b_*.sh), then the tiny preset derived from them.


def _eve7b(stage: str) -> dict[str, Any]:
    common: dict[str, Any] = {
        "model": {"gradient_checkpointing": True},
        "deepspeed": {"zero_stage": 3},
        "checkpoint": {"every_steps": 7813 if stage in ("prealign", "pretrain") else 1000},
        "optim": {"weight_decay": 0.0, "schedule": "cosine"},
        "data": {"num_workers": 4},
    }
    per_stage: dict[str, dict[str, Any]] = {
        "prealign": {
            "optim": {"lr": 4e-5, "vision_lr": 4e-4, "warmup_ratio": 0.03},
            "global_batch_size": 512, "micro_batch_size": 16,
            "data": {"template": "plain", "max_length": 2048},
        },
        "pretrain": {
            "optim": {"lr": 4e-5, "warmup_ratio": 0.01},
            "global_batch_size": 512, "micro_batch_size": 16,
            "data": {"template": "plain", "max_length": 2048},
        },
        "sft": {
            "optim": {"lr": 2e-5, "warmup_ratio": 0.01},
            "global_batch_size": 128, "micro_batch_size": 4,
            "data": {"template": "vicuna_v1", "max_length": 2048, "group_by_length": True},
        },
        "sft-hd": {
            "optim": {"lr": 2e-5, "warmup_ratio": 0.01},
            "global_batch_size": 128, "micro_batch_size": 2,
            "data": {"template": "vicuna_v1", "max_length": 4096, "group_by_length": True},
        },
    }
    return _merge(common, per_stage[stage])


def _tiny(stage: str) -> dict[str, Any]:
    """The reference recipe scaled down to run in seconds on a laptop CPU."""
    base = _eve7b(stage)
    return _merge(base, {
        "model": {"gradient_checkpointing": False},
        "deepspeed": {"zero_stage": 2},
        "global_batch_size": 8, "micro_batch_size": 4, "max_steps": 6,
        "checkpoint": {"every_steps": 3, "keep_last": 2},
        "data": {"max_length": 256 if stage != "sft-hd" else 512, "num_workers": 1,
                 "shuffle_buffer": 64},
        "optim": {"lr": 1e-3, "vision_lr": 2e-3 if stage == "prealign" else None},
        "mlflow": {"log_every": 1, "system_metrics_interval_s": 5.0},  # stages of seconds
    })


def recipe(stage: str, preset: str = "tiny") -> dict[str, Any]:
    """Default values for a stage and model preset, as a plain dict (validated later)."""
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    if preset not in MODEL_PRESETS:
        raise ConfigError(f"unknown model preset {preset!r}; choose one of {', '.join(MODEL_PRESETS)}")
    values = _tiny(stage) if preset in ("tiny", "small") else _eve7b(stage)
    model_preset = "eve-7b-hd" if (stage == "sft-hd" and preset == "eve-7b") else preset
    return _merge(values, {"stage": stage, "model": {"preset": model_preset}})


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


# ----------------------------------------------------------------------------------------
# Overrides: `key=value` on dotted paths, typed by the model.


def config_keys(model: type[BaseModel] = TrainConfig, prefix: str = "") -> list[str]:
    """Every dotted key a user may set, e.g. ['stage', ..., 'optim.lr', ...]."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.extend(config_keys(annotation, f"{prefix}{name}."))
        else:
            keys.append(prefix + name)
    return keys


def check_key(key: str, where: str = "") -> None:
    """ConfigError with the closest valid keys when `key` is not a config key."""
    known = config_keys()
    if key not in known:
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"unknown config key {key!r}{where}{hint} (`eve-platform config keys` lists all keys)"
        )


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """['optim.lr=1e-4', 'data.urls=[a,b]'] -> nested dict of raw values (strings parsed as YAML)."""
    import yaml

    nested: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} is not of the form key=value (e.g. optim.lr=1e-4)")
        key, raw = pair.split("=", 1)
        key = key.strip()
        check_key(key)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and raw.lower() in ("none", "null"):
            value = None
        set_dotted(nested, key, value)
    return nested


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """set_dotted(t, 'optim.lr', 1e-4) sets t['optim']['lr'], creating the levels between."""
    parts = key.split(".")
    for part in parts[:-1]:
        tree = tree.setdefault(part, {})
    tree[parts[-1]] = value


def resolve(stage: str, preset: str = "tiny", overrides: list[str] | dict[str, Any] | None = None,
            ) -> TrainConfig:
    """Recipe defaults + overrides -> a validated TrainConfig, or ConfigError naming the key."""
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    values = _merge(recipe(stage, preset), overrides or {})
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        if not e["loc"]:  # a cross-field rule: its message names the fields
            lines.append(msg)
            continue
        key = ".".join(str(p) for p in e["loc"])
        value = e.get("input")
        shown = value if not isinstance(value, dict) else "{...}"
        lines.append(f"{key}={shown!r}: {msg}")
    return "invalid config: " + "; ".join(lines)
