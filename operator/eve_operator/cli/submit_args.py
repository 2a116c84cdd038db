"""`eve-platform submit stage=<name> [key=value ...]`: from words to a PipelineSpec.

Pipeline keys (stage, until, name, preset, data, ...) shape the pipeline; every other key
is a trainer override, validated against the typed trainer config. A trainer key may be
prefixed with a stage name to apply to that stage only: `sft.optim.lr=1e-5`.
"""

from __future__ import annotations

import difflib
from typing import Any

import yaml
from pydantic import ValidationError

from eve_contract.errors import validation_message
from eve_contract.names import STAGES
from eve_contract.naming import validate_pipeline_name
from eve_operator.spec import PipelineSpec
from eve_trainer.config import ConfigError, check_key, config_keys, set_dotted

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
    "credentials_secret": "s3.credentials_secret",
    "tracking_uri": "mlflow.tracking_uri",
    "experiment": "mlflow.experiment",
    "nodes": "resources.nodes",
    "gpus_per_node": "resources.gpus_per_node",
    "nproc_per_node": "resources.nproc_per_node",
    "gpu_product": "resources.gpu_product",
    "gang_scheduler": "scheduling.gang_scheduler",
    "queue": "scheduling.queue",
    "priority_class": "scheduling.priority_class",
    "max_attempts": "max_attempts",
    "stall_timeout_s": "stall_timeout_s",
    "suspend": "suspend",
    "job_api": "job_api",
    "jobApi": "job_api",  # the EvePipeline field's name (PyTorchJob | TrainJob)
}

#: Keys whose empty value means "none" (no tracking, AWS S3, any GPU, ...), not "unset".
EMPTY_IS_A_VALUE = {"gpu_product", "tracking_uri", "endpoint_url", "credentials_secret", "queue", "priority_class"}


def _value(raw: str) -> Any:
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if isinstance(value, str):
        try:  # YAML 1.1 reads 1e-5 (no dot) as a string; the CR should carry a number
            return float(value) if value.strip().lower() not in ("nan", "inf", "-inf", "infinity") else value
        except ValueError:
            return value
    return raw if isinstance(value, dict) else value


def parse_submit(words: list[str], defaults: dict[str, Any] | None = None,
                 ) -> tuple[str | None, PipelineSpec]:
    """words -> (name or None, validated PipelineSpec). Raises ConfigError naming the key."""
    tree: dict[str, Any] = dict(defaults or {})
    name = None
    for word in words:
        if "=" not in word:
            raise ConfigError(f"{word!r} is not of the form key=value (e.g. stage=prealign)")
        key, raw = (part.strip() for part in word.split("=", 1))
        value = _value(raw)
        if key == "name":
            name = validate_pipeline_name(str(value))
        elif key in PIPELINE_KEYS:
            if key in EMPTY_IS_A_VALUE and value is None:
                value = ""  # `gpu_product=`: any GPU, not "unset" (which takes the operator's default)
            if key == "data" and isinstance(value, str):
                value = [v for v in value.split(",") if v]
            set_dotted(tree, PIPELINE_KEYS[key], value)
        elif (stage := key.split(".", 1)[0]) in STAGES and "." in key:
            sub = key.split(".", 1)[1]
            if sub == "data":
                tree.setdefault("stages", {}).setdefault(stage, {})["data"] = (
                    [v for v in value.split(",") if v] if isinstance(value, str) else value)
            else:
                check_key(sub, f" (in {key})")
                tree.setdefault("stages", {}).setdefault(stage, {}).setdefault("overrides", {})[sub] = value
        else:
            _check_trainer_key(key)
            tree.setdefault("overrides", {})[key] = value
    if "start" not in tree:
        raise ConfigError(f"missing stage=<name>; choose one of {', '.join(STAGES)} "
                          "(e.g. `eve-platform submit stage=prealign`)")
    try:
        return name, PipelineSpec.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(validation_message(err, what="pipeline")) from None


def _check_trainer_key(key: str) -> None:
    try:
        check_key(key)
    except ConfigError:
        known = list(PIPELINE_KEYS) + ["name"] + config_keys()
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown key {key!r}{hint} (`eve-platform config keys` lists all keys)") from None
