"""`eve-platform submit [-f pipeline.yaml] stage=<name> [key=value ...]`: from words to a PipelineSpec.

Pipeline keys (stage, until, name, preset, data, ...) shape the pipeline; every other key
is a trainer override, validated against the typed trainer config. A trainer key may be
prefixed with a stage name to apply to that stage only: `sft.optim.lr=1e-5`.

Every value is typed by the field it sets, never guessed: a string field takes the text as
given (`experiment=2024`, `queue=yes` stay strings), numbers must be numbers, booleans true or
false, and lists come only from list syntax (`data=[s3://b/x,s3://b/y]`; `data=s3://b/x,y` is one
URL). Trainer keys the pipeline sets itself (output, init_from, ...) are refused as overrides,
naming the pipeline key to use instead; a key given twice is refused.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from eve_contract.dicts import deep_merge
from eve_contract.errors import validation_message
from eve_contract.names import STAGES
from eve_contract.naming import validate_pipeline_name
from eve_trainer.config import (
    ConfigError, annotation_of, check_key, check_unique, config_keys, parse_value, set_dotted, split_pair,
    typed_value,
)

from eve_operator.spec import PipelineSpec, StageSpec, owned_key_error

#: Pipeline keys -> the PipelineSpec path they set.
PIPELINE_KEYS: dict[str, str] = {
    "stage": "start",
    "until": "until",
    "preset": "preset",
    "hd": "hd",
    "init_from": "init_from",
    "output": "output",
    "data": "data",
    "image": "image",
    "endpoint_url": "s3.endpoint_url",
    "region": "s3.region",
    "credentials_secret": "s3.credentials_secret",
    "tracking_uri": "mlflow.tracking_uri",
    "experiment": "mlflow.experiment",
    "nodes": "resources.nodes",
    "gpus_per_node": "resources.gpus_per_node",
    "nproc_per_node": "resources.nproc_per_node",
    "gpu_product": "resources.gpu_product",
    "cpu": "resources.cpu",
    "memory": "resources.memory",
    "shm_size": "resources.shm_size",
    "gang_scheduler": "scheduling.gang_scheduler",
    "queue": "scheduling.queue",
    "priority_class": "scheduling.priority_class",
    "schedule_timeout_s": "scheduling.schedule_timeout_s",
    "max_attempts": "max_attempts",
    "backoff_limit": "backoff_limit",
    "active_deadline_s": "active_deadline_s",
    "stall_timeout_s": "stall_timeout_s",
    "suspend": "suspend",
    "job_api": "job_api",
    "jobApi": "job_api",  # the EvePipeline field's name (PyTorchJob | TrainJob)
}

#: Keys whose empty value means "none" (no tracking, AWS S3, any GPU), not "unset".
EMPTY_IS_A_VALUE = {"gpu_product", "tracking_uri", "endpoint_url"}


def load_pipeline_file(path: Path) -> tuple[str | None, str | None, dict[str, Any]]:
    """An EvePipeline manifest (or just its spec) -> (name, namespace, spec tree by field name)."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise ConfigError(f"-f {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"-f {path}: not valid YAML ({err})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"-f {path}: expected an EvePipeline (kind: EvePipeline, spec: ...) or its spec, "
                          f"got {type(doc).__name__}")
    name = namespace = None
    if "kind" in doc or "apiVersion" in doc:
        if doc.get("kind") != "EvePipeline":
            raise ConfigError(f"-f {path}: kind={doc.get('kind')!r}; expected an EvePipeline or its spec")
        meta = doc.get("metadata") or {}
        name, namespace = meta.get("name"), meta.get("namespace")
        doc = doc.get("spec") or {}
        if not isinstance(doc, dict):
            raise ConfigError(f"-f {path}: spec must be a mapping")
    return name, namespace, by_field_name(PipelineSpec, doc)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    for option in (annotation, *get_args(annotation)):
        if isinstance(option, type) and issubclass(option, BaseModel):
            return option
    return None


def by_field_name(model: type[BaseModel], tree: dict[str, Any]) -> dict[str, Any]:
    """A spec as written in YAML (camelCase aliases) keyed by python field names, so that
    `key=value` pairs (which use field names) merge over it without an alias clash."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = next((n for n, f in model.model_fields.items() if key in (n, f.alias)), key)
        field = model.model_fields.get(name)
        sub = _model_in(field.annotation) if field is not None else None
        if sub is not None and isinstance(value, dict):
            value = by_field_name(sub, value)
        elif model is PipelineSpec and name == "stages" and isinstance(value, dict):
            value = {k: by_field_name(StageSpec, v) if isinstance(v, dict) else v for k, v in value.items()}
        out[name] = value
    return out


def _pipeline_value(key: str, path: str, raw: str) -> Any:
    try:
        value = typed_value(annotation_of(PipelineSpec, path), raw)
    except ValueError as err:
        raise ConfigError(f"{key}={raw!r}: {err}") from None
    if value is None and raw.strip() == "" and key not in EMPTY_IS_A_VALUE:
        raise ConfigError(f"{key}= is empty; give a value, or leave the key out for the default")
    if key in EMPTY_IS_A_VALUE and value is None:
        value = ""  # `gpu_product=`: any GPU, not "unset" (which takes the operator's default)
    return value


def parse_submit(words: list[str], defaults: dict[str, Any] | None = None,
                 base: dict[str, Any] | None = None) -> tuple[str | None, PipelineSpec]:
    """words (over `base`, a spec tree from -f, over `defaults`) -> (name or None, validated
    PipelineSpec). Raises ConfigError naming the key."""
    tree: dict[str, Any] = deep_merge(dict(defaults or {}), base or {})
    name = None
    given: list[tuple[str, str]] = []
    for word in words:
        key, raw = split_pair(word, "stage=prealign")
        if key == "name":
            given.append(("name", word))
            if not raw.strip():
                raise ConfigError("name= is empty; a pipeline name is a DNS-1035 label of at most 40 characters "
                                  "(lower-case letters, digits and '-', starting with a letter), e.g. name=eve-7b")
            name = validate_pipeline_name(raw)
        elif key.startswith("eval."):  # spec.eval: eval.data.<bench>=<url>, eval.after, eval.mode, eval.gate
            given.append((key, word))
            set_dotted(tree, key, _eval_value(key, raw))
        elif key in PIPELINE_KEYS:
            path = PIPELINE_KEYS[key]
            given.append((path, word))
            set_dotted(tree, path, _pipeline_value(key, path, raw))
        elif (stage := key.split(".", 1)[0]) in STAGES and "." in key:
            sub = key.split(".", 1)[1]
            given.append((f"stages.{stage}.{sub}", word))
            stage_tree = tree.setdefault("stages", {}).setdefault(stage, {})
            if sub == "data":
                stage_tree["data"] = _pipeline_value(key, "data", raw)
                continue
            check_key(sub, f" (in {key})")
            if (problem := owned_key_error(sub, key, cli=True)) is not None:
                raise ConfigError(problem)
            stage_tree.setdefault("overrides", {})[sub] = parse_value(sub, raw)
        else:
            _check_trainer_key(key)
            if (problem := owned_key_error(key, key, cli=True)) is not None:
                raise ConfigError(problem)
            given.append((f"overrides.{key}", word))
            tree.setdefault("overrides", {})[key] = parse_value(key, raw)
    check_unique(given)
    if isinstance(tree.get("eval"), dict) and not tree["eval"].get("data"):
        raise ConfigError("eval.* keys need the benchmarks' data: eval.data.<bench>=<bench folder URL> "
                          "(e.g. eval.data.pope=s3://bucket/bench/pope; docs/eval.md)")
    if "start" not in tree:
        raise ConfigError(f"missing stage=<name>; choose one of {', '.join(STAGES)} "
                          "(e.g. `eve-platform submit stage=prealign`)")
    try:
        return name, PipelineSpec.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(validation_message(err, what="pipeline")) from None


#: spec.eval's keys on the command line (besides eval.data.<bench>); the spec validates the values
EVAL_KEYS = ("after", "mode", "gate", "max_new_tokens", "batch_size")


def _eval_value(key: str, raw: str) -> Any:
    sub = key.split(".", 1)[1]
    if sub.startswith("data.") and len(sub) > len("data."):
        return raw.strip()
    if sub not in EVAL_KEYS:
        raise ConfigError(f"unknown key {key!r}; the eval keys are eval.data.<bench>, "
                          + ", ".join(f"eval.{k}" for k in EVAL_KEYS))
    if sub in ("max_new_tokens", "batch_size"):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{key}={raw!r}: expected a whole number") from None
    return raw.strip()


def _check_trainer_key(key: str) -> None:
    try:
        check_key(key)
    except ConfigError:
        known = list(dict.fromkeys([*PIPELINE_KEYS, "name", *config_keys()]))
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown key {key!r}{hint} (`eve-platform config keys` lists all keys)") from None


__all__ = ["PIPELINE_KEYS", "parse_submit", "load_pipeline_file", "by_field_name"]
