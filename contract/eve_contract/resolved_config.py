"""A stage's resolved trainer config on its way to the ranks: one JSON document.

The CLI and the operator resolve a stage's trainer config once (recipe + the pipeline's
overrides + the pipeline's wiring, validated), then hand it to every rank as this document in
the environment variable `EVE_TRAIN_CONFIG`; `eve-train` reads it back. Values travel as JSON
types, so they reach the pod unchanged: a string stays a string (`experiment: "2024"`,
`queue: "yes"`), a URL with `: `, ` #` or a comma stays one URL, and no YAML re-parsing of an
argv can turn them into numbers, booleans or lists.

Written and read here only (eve_operator.jobspec writes, eve_trainer.main reads). stdlib only.

The document: `{"schema": 1, "stage": "<stage>", "config": {<TrainConfig, as JSON>}}`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

#: The environment variable every rank of a stage job gets.
ENV_VAR = "EVE_TRAIN_CONFIG"
#: Version of the document; a reader refuses a schema it does not know.
SCHEMA = 1


class ResolvedConfigError(ValueError):
    """The document is not one this reader can take; the message says why and what to do."""


def _finite(value: Any, path: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ResolvedConfigError(f"{path}={value!r} is not a finite number")
    if isinstance(value, Mapping):
        for key, item in value.items():
            _finite(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _finite(item, f"{path}[{i}]")


def dumps(stage: str, config: Mapping[str, Any]) -> str:
    """The document for one stage, as one line of ASCII JSON (newlines in values are escaped)."""
    _finite(config, "")
    return json.dumps({"schema": SCHEMA, "stage": stage, "config": dict(config)}, sort_keys=True,
                      ensure_ascii=True, allow_nan=False, separators=(",", ":"))


def loads(text: str, *, source: str = ENV_VAR) -> tuple[str, dict[str, Any]]:
    """(stage, config values) of a document; ResolvedConfigError naming `source` otherwise."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise ResolvedConfigError(f"{source} is not valid JSON ({err})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict) or not isinstance(doc.get("stage"), str):
        raise ResolvedConfigError(f"{source} is not a resolved trainer config "
                                  '(expected {"schema": 1, "stage": ..., "config": {...}})')
    if doc.get("schema") != SCHEMA:
        raise ResolvedConfigError(
            f"{source} has schema {doc.get('schema')!r}, this eve-train reads schema {SCHEMA}: the pipeline "
            "was submitted by another eve-platform release than the trainer image's; use the trainer image "
            "of the operator's release (spec.image)")
    return doc["stage"], doc["config"]


def from_env(environ: Mapping[str, str]) -> tuple[str, dict[str, Any]] | None:
    """The document in `environ`, or None when there is none."""
    text = environ.get(ENV_VAR)
    return None if text is None or text == "" else loads(text)


__all__ = ["ENV_VAR", "SCHEMA", "ResolvedConfigError", "dumps", "loads", "from_env"]
