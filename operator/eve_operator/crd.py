"""The `EvePipeline` CRD, generated from the pydantic spec so the two never drift.

    python -m eve_operator.crd --write   # charts/eve-platform/files/ and manifests/base/

Kubernetes wants a *structural* schema: every node typed, no $ref, no anyOf-with-null
(`nullable: true` instead), defaults valid under the node. Pydantic's JSON schema is
converted node by node; a test checks the committed YAML equals this output.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from eve_operator.pipeline import PipelineStatus
from eve_operator.spec import PipelineSpec

GROUP = "eve-platform.io"
VERSION = "v1alpha1"
KIND = "EvePipeline"
PLURAL = "evepipelines"
SINGULAR = "evepipeline"
SHORT_NAMES = ["evp"]
API_VERSION = f"{GROUP}/{VERSION}"

ROOT = Path(__file__).resolve().parents[2]
OUTPUTS = (ROOT / "charts/eve-platform/files/crd-evepipelines.yaml",
           ROOT / "manifests/base/crd-evepipelines.yaml")

_DROP = {"title", "$defs", "propertyNames"}
_PRESERVE = {"x-kubernetes-preserve-unknown-fields": True}


def structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """One pydantic JSON-schema node as a structural OpenAPI v3 node."""
    if "$ref" in node:
        target = structural(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        extra = {k: v for k, v in node.items() if k not in ("$ref", *_DROP)}
        return {**target, **{k: structural_value(k, v, defs) for k, v in extra.items()}}
    if node.get("x-kubernetes-int-or-string"):
        out = {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True}
        return {**out, **{k: v for k, v in node.items() if k in ("description", "default")}}
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        nullable = len(options) < len(node["anyOf"])
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if len(options) == 1:  # X | None -> X, nullable
            out = {**structural(options[0], defs), **_plain(rest, defs)}
        else:  # a union of several types (override values): keep it, untyped
            out = {**_plain(rest, defs), **_PRESERVE}
        if nullable:
            out["nullable"] = True
            if out.get("default", 0) is None:
                del out["default"]
        return out
    out = _plain(node, defs)
    if out.get("type") == "object":
        if "properties" not in out and out.get("additionalProperties") in (True, {}, None):
            out.pop("additionalProperties", None)  # free-form object (a toleration)
            out.update(_PRESERVE)
        elif out.get("additionalProperties") is False:
            del out["additionalProperties"]  # unknown fields are pruned (and rejected by kubectl)
    return out


def structural_value(key: str, value: Any, defs: dict[str, Any]) -> Any:
    if key in ("properties", "patternProperties"):
        return {k: structural(v, defs) for k, v in value.items()}
    if key in ("items", "additionalProperties") and isinstance(value, dict):
        return structural(value, defs)
    return value


def _plain(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    return {k: structural_value(k, v, defs) for k, v in node.items() if k not in _DROP}


def spec_schema() -> dict[str, Any]:
    raw = PipelineSpec.model_json_schema(by_alias=True)
    schema = structural(raw, raw.get("$defs", {}))
    stages = raw["properties"]["stages"]
    if "propertyNames" in stages:  # dict[Stage, StageSpec]: one property per stage name
        names = stages["propertyNames"]["enum"]
        stage_schema = structural(stages["additionalProperties"], raw["$defs"])
        schema["properties"]["stages"] = {
            "type": "object", "description": stages.get("description", ""),
            "properties": {name: stage_schema for name in names}}
    schema["description"] = "What the pipeline runs: the stage chain, data, resources and scheduling."
    return schema


def status_schema() -> dict[str, Any]:
    raw = PipelineStatus.model_json_schema(by_alias=True)
    schema = structural(raw, raw.get("$defs", {}))
    schema.update(_PRESERVE)  # room for the operator's own bookkeeping
    schema["description"] = "Observed state, written by the operator."
    return schema


def crd_manifest() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}",
                     "labels": {"app.kubernetes.io/part-of": "eve-platform"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": KIND, "listKind": f"{KIND}List", "plural": PLURAL, "singular": SINGULAR,
                      "shortNames": SHORT_NAMES, "categories": ["eve"]},
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Stage", "type": "string", "jsonPath": ".status.currentStage"},
                    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "A multi-stage EVE training pipeline; one PyTorchJob per stage attempt.",
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec_schema(),
                        "status": status_schema(),
                    },
                }},
            }],
        },
    }


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # the stage schema repeats; write it out, no YAML anchors


_FIRST = ("type", "description", "required", "nullable", "default")


def _ordered(node: Any) -> Any:
    """type and description first in every schema node: easier to read in review."""
    if isinstance(node, dict):
        keys = [k for k in _FIRST if k in node] + [k for k in node if k not in _FIRST]
        return {k: _ordered(node[k]) for k in keys}
    if isinstance(node, list):
        return [_ordered(v) for v in node]
    return node


def render() -> str:
    header = "# Generated by `python -m eve_operator.crd --write` from eve_operator.spec; do not edit.\n"
    manifest = crd_manifest()
    version = manifest["spec"]["versions"][0]
    version["schema"]["openAPIV3Schema"] = _ordered(version["schema"]["openAPIV3Schema"])
    return header + yaml.dump(manifest, Dumper=_Dumper, sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eve_operator.crd", description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="write the CRD files (else print to stdout)")
    args = parser.parse_args(argv)
    text = render()
    if not args.write:
        sys.stdout.write(text)
        return 0
    for path in OUTPUTS:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
