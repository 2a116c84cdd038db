"""Validate manifests against a CRD's openAPIV3Schema with jsonschema.

OpenAPI v3 as Kubernetes uses it differs from JSON Schema in a few keywords: `nullable`,
`x-kubernetes-int-or-string`, `x-kubernetes-preserve-unknown-fields`. Unknown fields are
rejected here (the API server would silently prune them, hiding a typo).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
import yaml

VENDORED_PYTORCHJOB = Path(__file__).parent / "data" / "pytorchjob-v1.9.4-schema.json"
_VALIDATORS: dict[int, tuple[dict[str, Any], jsonschema.Draft7Validator]] = {}


def to_jsonschema(node: Any) -> Any:
    if isinstance(node, list):
        return [to_jsonschema(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_jsonschema(v) for k, v in node.items()
           if not k.startswith("x-kubernetes-") and k not in ("nullable", "format")}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("anyOf", None)
        out["type"] = ["integer", "string"]
    if node.get("nullable") and "type" in out:
        out["type"] = [*([out["type"]] if isinstance(out["type"], str) else out["type"]), "null"]
    if (out.get("type") == "object" and "properties" in out and "additionalProperties" not in out
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def crd_schema(crd: dict[str, Any]) -> dict[str, Any]:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@functools.lru_cache(maxsize=8)
def load_crd_schema(path: Path) -> dict[str, Any]:
    if path.suffix == ".json":
        return json.loads(path.read_text())["openAPIV3Schema"]
    return crd_schema(yaml.safe_load(path.read_text()))


def validate(obj: dict[str, Any], openapi_schema: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError naming the path of the first problem."""
    key = id(openapi_schema)
    if key not in _VALIDATORS or _VALIDATORS[key][0] is not openapi_schema:
        _VALIDATORS[key] = (openapi_schema, jsonschema.Draft7Validator(to_jsonschema(openapi_schema)))
    validator = _VALIDATORS[key][1]
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        raise jsonschema.ValidationError(f"{'.'.join(map(str, first.absolute_path))}: {first.message}")


def strip_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: strip_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip_descriptions(v) for v in node]
    return node


def assert_structural(node: Any, path: str = "") -> None:
    """Kubernetes' structural-schema rules, the ones a generator can break."""
    assert isinstance(node, dict), path
    assert "$ref" not in node and "$defs" not in node, f"{path}: $ref left in"
    if node.get("x-kubernetes-int-or-string"):
        assert node.get("anyOf") == [{"type": "integer"}, {"type": "string"}], path
    else:
        assert "anyOf" not in node and "oneOf" not in node, f"{path}: union left in"
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{path}: no type"
    if node.get("type") == "object" and "additionalProperties" in node:
        assert "properties" not in node, f"{path}: properties and additionalProperties"
        assert isinstance(node["additionalProperties"], dict), f"{path}: additionalProperties: bool"
    for key, child in (node.get("properties") or {}).items():
        assert_structural(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        assert_structural(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        assert_structural(node["additionalProperties"], f"{path}{{}}")
    if "default" in node and node["default"] is None:
        raise AssertionError(f"{path}: default null")
