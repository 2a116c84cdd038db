"""The EvePipeline CRD: generated from the spec model, structural, and committed as generated."""

from __future__ import annotations

import pytest
import yaml
from fixtures.schema_check import assert_structural, crd_schema, validate

from eve_operator import crd
from eve_operator.spec import PipelineSpec


def test_committed_files_equal_the_generator_output() -> None:
    expected = crd.render()
    for path in crd.OUTPUTS:
        assert path.read_text() == expected, f"{path} is stale: run python -m eve_operator.crd --write"


def test_schema_is_structural() -> None:
    schema = crd_schema(crd.crd_manifest())
    assert_structural(schema)
    assert_structural(schema["properties"]["spec"], "spec")


def test_names_printer_columns_and_status_subresource() -> None:
    manifest = crd.crd_manifest()
    assert manifest["metadata"]["name"] == "evepipelines.eve-platform.io"
    assert manifest["spec"]["names"]["shortNames"] == ["evp"] and manifest["spec"]["scope"] == "Namespaced"
    version = manifest["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Stage"] == ".status.currentStage" and columns["Phase"] == ".status.phase"
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_required_enums_bounds_defaults_and_descriptions_come_from_the_model() -> None:
    spec = crd.spec_schema()
    props = spec["properties"]
    assert spec["required"] == ["output"]
    assert props["start"]["enum"] == ["prealign", "pretrain", "sft", "sft-hd"]
    assert props["scheduling"]["properties"]["gangScheduler"]["enum"] == [
        "volcano", "scheduler-plugins", "kueue", "none"]
    nodes = props["resources"]["properties"]["nodes"]
    assert (nodes["minimum"], nodes["maximum"], nodes["default"]) == (1, 512, 1)
    assert props["maxAttempts"]["default"] == 3 and props["until"]["nullable"] is True
    assert props["resources"]["properties"]["cpu"]["x-kubernetes-int-or-string"] is True
    assert props["overrides"]["additionalProperties"]["x-kubernetes-preserve-unknown-fields"] is True
    assert set(props["stages"]["properties"]) == {"prealign", "pretrain", "sft", "sft-hd"}
    assert props["output"]["description"]


SAMPLE = {
    "apiVersion": "eve-platform.io/v1alpha1", "kind": "EvePipeline", "metadata": {"name": "demo"},
    "spec": {
        "preset": "eve-7b", "output": "s3://ckpt/eve", "data": ["s3://data/shards-{000..099}.tar"],
        "overrides": {"optim.lr": 3e-4, "train.max_steps": 100, "optim.betas": [0.9, 0.95], "x": None},
        "stages": {"sft": {"resources": {"nodes": 4, "cpu": 32}, "overrides": {"train.max_steps": 50}}},
        "resources": {"nodes": 2, "gpuProduct": None, "memory": "400Gi"},
        "s3": {"credentialsSecret": "s3-creds"},
        "scheduling": {"gangScheduler": "kueue", "queue": "team-a"},
        "activeDeadlineSeconds": 86400,
    },
}


def test_sample_pipelines_validate_under_the_crd_and_the_model() -> None:
    validate(SAMPLE, crd_schema(crd.crd_manifest()))
    PipelineSpec.model_validate(SAMPLE["spec"])


@pytest.mark.parametrize(("patch", "field"), [
    ({"start": "finetune"}, "spec.start"),
    ({"maxAttempts": 0}, "spec.maxAttempts"),
    ({"scheduling": {"gangScheduler": "yunikorn"}}, "spec.scheduling.gangScheduler"),
    ({"resources": {"nodes": 1000}}, "spec.resources.nodes"),
    ({"stages": {"finetune": {}}}, "spec.stages"),
    ({"typo": 1}, "spec"),
])
def test_the_crd_rejects_what_the_model_rejects(patch: dict, field: str) -> None:
    bad = {**SAMPLE, "spec": {**SAMPLE["spec"], **patch}}
    with pytest.raises(Exception, match=field.replace(".", r"\.")):
        validate(bad, crd_schema(crd.crd_manifest()))
    with pytest.raises(ValueError):
        PipelineSpec.model_validate(bad["spec"])


def test_cli_writes_both_files(tmp_path, monkeypatch, capsys) -> None:
    targets = (tmp_path / "a/crd.yaml", tmp_path / "b/crd.yaml")
    monkeypatch.setattr(crd, "OUTPUTS", targets)
    monkeypatch.setattr(crd, "ROOT", tmp_path)
    assert crd.main(["--write"]) == 0
    assert all(yaml.safe_load(t.read_text())["kind"] == "CustomResourceDefinition" for t in targets)
