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
import math
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from eve_contract.dicts import deep_merge
from eve_contract.errors import validation_message
from eve_contract.names import DEFAULT_CHAIN, HD_CHAIN, MODEL_PRESETS, STAGES, Stage  # noqa: F401 (re-exported)
from eve_contract.validators import http_url_problem, location_problem


class ConfigError(ValueError):
    """A user mistake in a config or an override; the message says what to do."""


class _Section(BaseModel):
    # allow_inf_nan=False: a number is finite (`optim.lr=inf` is refused, naming the key)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelSection(_Section):
    preset: str = "tiny"
    """Model preset from eve_model: tiny | small | eve-7b | eve-7b-hd."""
    gradient_checkpointing: bool = False
    """Recompute decoder activations in backward (the reference turns it on for 7B)."""
    compile: bool = False
    """torch.compile each decoder layer (fuses norms/activations on GPU; first steps compile)."""
    attention: Literal["auto", "sdpa", "flex", "varlen"] = "auto"
    """Attention of training forwards, no dense mask for packed or padded rows: varlen
    (FlashAttention varlen on CUDA bf16; per-sample SDPA elsewhere), flex (FlexAttention with a
    document BlockMask), sdpa (masked SDPA). auto: varlen on CUDA bf16, flex on other CUDA, sdpa
    on CPU; the choice is logged once (docs/model.md)."""
    loss_chunk_tokens: int = Field(0, ge=0)
    """> 0: LM head + cross-entropy only on positions with a label, this many rows at a time,
    gradients computed in the forward (fused; no [B, T, V] logits). 0: full logits."""
    checkpoint_every: int = Field(1, ge=1)
    """With gradient_checkpointing: checkpoint decoder layers 0, k, 2k, ... (1 = every layer)."""
    checkpoint_part: Literal["layer", "mlp"] = "layer"
    """With gradient_checkpointing: recompute whole layers, or only their MLP (selective)."""
    checkpoint_offload: bool = False
    """With gradient_checkpointing and checkpoint_part=layer: keep the saved layer inputs in pinned
    host memory (CUDA only; for 32 layers at 7B width on one device)."""
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    """auto = bf16 on CUDA, fp32 on CPU."""
    teacher_path: str | None = None
    """Folder or s3:// URL of the frozen CLIP teacher of the patch-aligning loss (a CLIPVisionModel,
    e.g. clip-vit-large-patch14-336). None: the init export's teacher (stages after prealign), the
    operator's default (chart trainer.teacherPath), random weights for the tiny preset; otherwise
    refused (eve_trainer.stage_summary)."""
    align_loss: bool = True
    """Train the patch-aligning loss against the CLIP teacher (the reference's --requires_cliploss, on in
    every stage). false: no PAL and no teacher are built, and the loss is off (not the reference recipe)."""

    @model_validator(mode="after")
    def _known_preset(self) -> ModelSection:
        if self.preset not in MODEL_PRESETS:
            raise ValueError(f"model.preset={self.preset!r} is not one of {', '.join(MODEL_PRESETS)}")
        return self


#: Tokenizers built into the trainer (eve_trainer.data.tokenizer); anything else is a folder.
BUILTIN_TOKENIZERS: tuple[str, ...] = ("builtin:tiny",)


class DataSection(_Section):
    urls: list[str] = Field(default_factory=list)
    """Dataset URLs (s3://bucket/prefix, file:///dir or a plain dir) holding shards + index.json."""
    tokenizer: str | None = None
    """Tokenizer folder (local or s3://), or builtin:tiny (the offline test tokenizer). None: the LLM's
    own, from init_from (a Vicuna folder, or the previous stage's export, which carries its tokenizer);
    builtin:tiny for the tiny preset and a random-init small."""
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

    @field_validator("urls")
    @classmethod
    def _dataset_locations(cls, urls: list[str]) -> list[str]:
        for i, url in enumerate(urls):
            if problem := location_problem(url):
                raise ValueError(f"data.urls[{i}]={url!r} {problem}")
        return urls

    @field_validator("tokenizer")
    @classmethod
    def _known_tokenizer(cls, spec: str | None) -> str | None:
        if spec is None:
            return spec
        if spec.startswith("builtin:"):
            if spec not in BUILTIN_TOKENIZERS:
                raise ValueError(f"is not a builtin tokenizer; the builtins are {', '.join(BUILTIN_TOKENIZERS)} "
                                 "(or give a tokenizer folder: s3://bucket/path or /path)")
            return spec
        if problem := location_problem(spec, need_key=True):
            raise ValueError(f"{problem}; a tokenizer is a folder (s3://bucket/path, /path) or "
                             f"{', '.join(BUILTIN_TOKENIZERS)}")
        return spec


class OptimSection(_Section):
    lr: float = Field(4e-5, gt=0)
    """Learning rate of the LLM (and of everything in stages 2-3)."""
    vision_lr: float | None = Field(None, gt=0)
    """LR of vision_tower*/mm_projector parameters; None = same as lr."""
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    schedule: Literal["cosine", "constant"] = "cosine"
    grad_clip: float = Field(1.0, ge=0)

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in betas):
            raise ValueError("each beta must be in [0, 1), e.g. [0.9,0.999]")
        return betas


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
    async_save: bool = True
    """Asynchronous saves: the step loop blocks only while the state is copied to host memory;
    serialising, the upload to S3 and the manifest (last) run in a background thread, one save
    in flight at a time (docs/trainer.md, Checkpoints)."""
    mtbf_node_hours: float = Field(5000.0, ge=0)
    """Mean time between failures of one node, in hours, for the checkpoint-interval advice
    (Young/Daly, from the measured step and save times; 0: no advice)."""


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

    @field_validator("endpoint_url")
    @classmethod
    def _http_endpoint(cls, url: str | None) -> str | None:
        if url and (problem := http_url_problem(url)):
            raise ValueError(problem)
        return url


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

    @field_validator("output")
    @classmethod
    def _output_location(cls, url: str) -> str:
        if problem := location_problem(url):
            raise ValueError(problem)
        return url

    @field_validator("init_from")
    @classmethod
    def _init_location(cls, url: str | None) -> str | None:
        if url is not None and (problem := location_problem(url, need_key=True)):
            raise ValueError(f"{problem}; init_from is an EVE export or a Llama/Vicuna folder")
        return url

    def gradient_accumulation(self, world_size: int) -> int:
        """Micro-steps per optimizer step; the global batch must split evenly."""
        per_step = world_size * self.micro_batch_size
        if per_step > self.global_batch_size:
            share, rest = divmod(self.global_batch_size, world_size)
            fix = (f"set micro_batch_size={share} (global_batch_size / world_size) or a divisor of it"
                   if share and not rest else
                   f"set global_batch_size to a multiple of the world size {world_size} "
                   f"(e.g. {world_size * self.micro_batch_size})")
            raise ConfigError(
                f"micro_batch_size={self.micro_batch_size} x world_size {world_size} = {per_step} is more than "
                f"global_batch_size={self.global_batch_size} (every rank needs a whole micro-batch per step); {fix}")
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
    return deep_merge(common, per_stage[stage])


def _tiny(stage: str) -> dict[str, Any]:
    """The reference recipe scaled down to run in seconds on a laptop CPU."""
    base = _eve7b(stage)
    return deep_merge(base, {
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
    return deep_merge(values, {"stage": stage, "model": {"preset": model_preset}})


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
        hint = f"; did you mean {', '.join(dict.fromkeys(close))}?" if close else ""
        raise ConfigError(
            f"unknown config key {key!r}{where}{hint} (`eve-platform config keys` lists all keys)"
        )


def annotation_of(model: type[BaseModel], key: str) -> Any:
    """The type annotation of a dotted field of `model` (python field names), e.g. 'optim.lr' -> float."""
    *parents, leaf = key.split(".")
    for part in parents:
        model = model.model_fields[part].annotation
    return model.model_fields[leaf].annotation


_NONE_WORDS = ("", "null", "none")


def typed_value(annotation: Any, raw: str) -> Any:
    """The value of `key=<raw>` as the field's type reads it (ValueError saying what is expected).

    Typed by the field, never guessed: a `str` takes the raw text as is (`2024`, `yes`, `[a]`,
    `a: b #c` stay strings); numbers must parse as numbers; booleans are true or false; lists
    come only from list syntax (`[a,b]`, or JSON `["a,b", "c"]`), anything else is a one-item
    list (a URL with a comma stays one URL). An optional field takes `null`, `none` or nothing
    as None.
    """
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return typed_value(args[0], raw)
    if origin in (Union, UnionType):
        options = [a for a in args if a is not type(None)]
        if raw.strip().lower() in _NONE_WORDS and len(options) < len(args):
            return None
        if len(options) == 1:
            return typed_value(options[0], raw)
        errors = []
        for option in options:  # a union of scalar types: the first that reads it
            try:
                return typed_value(option, raw)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(" or ".join(errors))
    if annotation is str or annotation is Any:
        return raw
    if annotation is bool:
        word = raw.strip().lower()
        if word in ("true", "false"):
            return word == "true"
        raise ValueError("expects true or false")
    if annotation is int:
        try:
            return int(raw.strip())
        except ValueError:
            raise ValueError("expects a whole number") from None
    if annotation is float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError("expects a number (e.g. 1e-4)") from None
        if not math.isfinite(value):
            raise ValueError("expects a finite number")
        return value
    if origin is Literal:
        for option in args:
            if str(option) == raw.strip():
                return option
        raise ValueError(f"expects one of {', '.join(str(a) for a in args)}")
    if origin in (list, tuple):
        return _typed_list(annotation, raw)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        raise ValueError("is a section, not a value; set one of its keys (e.g. optim.lr=...)")
    return raw


def _typed_list(annotation: Any, raw: str) -> list[Any]:
    args = get_args(annotation)
    text = raw.strip()
    fixed = get_origin(annotation) is tuple and Ellipsis not in args
    items_of = list(args) if fixed else [args[0] if args else str]
    if text.startswith("[") and text.endswith("]"):
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError:
            inner = text[1:-1].strip()
            parts = [p.strip() for p in inner.split(",")] if inner else []
        else:
            if not isinstance(loaded, list):
                raise ValueError("expects a list") from None
            parts = [p if isinstance(p, str) else json.dumps(p) for p in loaded]
    elif fixed:
        raise ValueError(f"expects a list of {len(items_of)} like [0.9,0.999]")
    else:
        parts = [raw]
    if fixed and len(parts) != len(items_of):
        raise ValueError(f"expects a list of {len(items_of)} items")
    types = items_of if fixed else items_of * len(parts)
    return [typed_value(t, p) for t, p in zip(types, parts, strict=True)]


def parse_value(key: str, raw: str, model: type[BaseModel] | None = None) -> Any:
    """`typed_value` of a dotted trainer key (or of `model`'s), ConfigError naming the key."""
    try:
        return typed_value(annotation_of(model or TrainConfig, key), raw)
    except ValueError as err:
        raise ConfigError(f"{key}={raw!r}: {err}") from None


def split_pair(pair: str, example: str = "optim.lr=1e-4") -> tuple[str, str]:
    if "=" not in pair:
        raise ConfigError(f"{pair!r} is not of the form key=value (e.g. {example})")
    key, raw = pair.split("=", 1)
    return key.strip(), raw


def check_unique(keys: list[tuple[str, str]]) -> None:
    """ConfigError when a key is given twice: [(key, the pair as given), ...]."""
    seen: dict[str, str] = {}
    for key, given in keys:
        if key in seen:
            raise ConfigError(f"{key} is given twice ({seen[key]}, then {given}); give each key once")
        seen[key] = given


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """['optim.lr=1e-4', 'data.urls=[a,b]'] -> nested dict of values typed by their fields."""
    nested: dict[str, Any] = {}
    given = []
    for pair in pairs:
        key, raw = split_pair(pair)
        check_key(key)
        given.append((key, pair))
        set_dotted(nested, key, parse_value(key, raw))
    check_unique(given)
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
    values = deep_merge(recipe(stage, preset), overrides or {})
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as err:
        raise ConfigError(validation_message(err, what="config")) from None
