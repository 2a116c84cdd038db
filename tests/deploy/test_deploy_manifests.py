"""manifests/: in sync with the chart, the kustomize overlay builds, samples match the CRD."""

from __future__ import annotations

import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import render_manifests
import yaml
from support.deploy_support import K8S_VERSION, NAMESPACE, ROOT, crd_file
from support.schema_check import assert_structural, crd_schema, problems

from eve_contract.naming import validate_pipeline_name
from eve_operator.spec import PipelineSpec

MANIFESTS = ROOT / "manifests"
SAMPLES = sorted((MANIFESTS / "samples").glob("*.yaml"))


def test_base_is_in_sync_with_the_chart(helm: str) -> None:
    files = render_manifests.render(helm)
    stale = render_manifests.stale_files(files)
    assert not stale, f"manifests/base/ differs from the chart in {stale}: run scripts/render-manifests.sh"
    assert render_manifests.crd_in_sync(), (
        "manifests/base/crd-evepipelines.yaml differs from the chart's files/ copy: run python -m eve_operator.crd --write")


def test_base_objects_are_valid() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "base" / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in (MANIFESTS / "base").glob("*.yaml") if p.name != "kustomization.yaml")
    for name in kustomization["resources"]:
        docs = [d for d in yaml.safe_load_all((MANIFESTS / "base" / name).read_text()) if d]
        assert len(docs) == 1, f"{name}: one object per file"
        kubernetes_validate.validate(docs[0], K8S_VERSION, strict=True)
        if docs[0]["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"):
            assert docs[0]["metadata"]["namespace"] == NAMESPACE, name
        assert "helm.sh/hook" not in docs[0]["metadata"].get("annotations", {}), name


def kustomize(kubectl: str, path: Path) -> list[dict]:
    proc = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def test_overlay_example_builds(kubectl: str) -> None:
    objs = kustomize(kubectl, MANIFESTS / "overlays" / "example")
    for obj in objs:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        if obj["kind"] == "Namespace":
            assert obj["metadata"]["name"] == "ml-platform"
        elif "namespace" in obj["metadata"]:
            assert obj["metadata"]["namespace"] == "ml-platform"
    binding = next(o for o in objs if o["kind"] == "ClusterRoleBinding")
    assert binding["subjects"][0]["namespace"] == "ml-platform"
    deployments = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Deployment"}
    (op,) = deployments["eve-platform"]["spec"]["template"]["spec"]["containers"]
    assert op["image"] == "registry.example.com/eve-platform/operator:0.1.0"
    env = {e["name"]: e.get("value") for e in op["env"]}
    assert env["EVE_S3_ENDPOINT"] == env["AWS_ENDPOINT_URL"] == "http://minio.minio.svc:9000"
    assert env["MLFLOW_TRACKING_URI"] == "http://eve-platform-mlflow.ml-platform.svc:5000"
    assert "secretKeyRef" in {e["name"]: e for e in op["env"]}["AWS_ACCESS_KEY_ID"]["valueFrom"]
    (ml,) = deployments["eve-platform-mlflow"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in ml["env"]}
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio.minio.svc:9000"
    assert "eve-system" not in yaml.safe_dump(objs).replace("app.kubernetes.io", ""), "a name still says eve-system"


# -- the CRD --------------------------------------------------------------------------------

def test_crd_is_structural() -> None:
    crd = crd_file()
    kubernetes_validate.validate(crd, K8S_VERSION, strict=True)
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "evepipelines.eve-platform.io"
    assert spec["group"] == "eve-platform.io" and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "EvePipeline" and spec["names"]["plural"] == "evepipelines"
    versions = {v["name"]: v for v in spec["versions"]}
    assert "v1alpha1" in versions and versions["v1alpha1"]["served"]
    assert sum(v["storage"] for v in versions.values()) == 1
    assert versions["v1alpha1"]["subresources"]["status"] == {}
    schema = versions["v1alpha1"]["schema"]["openAPIV3Schema"]
    assert schema["type"] == "object" and "spec" in schema["properties"]
    assert_structural(schema)


def test_samples_exist() -> None:
    names = {p.name for p in SAMPLES}
    assert {"evepipeline-tiny.yaml", "evepipeline-eve-7b.yaml", "evepipeline-eve-7b-hd.yaml"} <= names


@pytest.mark.parametrize("sample", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_sample_matches_the_crd(sample: Path) -> None:
    obj = yaml.safe_load(sample.read_text())
    assert obj["apiVersion"] == "eve-platform.io/v1alpha1" and obj["kind"] == "EvePipeline"
    found = problems(obj, crd_schema(crd_file(), "v1alpha1"))
    assert not found, "\n".join(found)


@pytest.mark.parametrize("sample", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_sample_matches_the_pipeline_model(sample: Path) -> None:
    """The pydantic model the CRD is generated from accepts the sample too (cross-field rules)."""
    obj = yaml.safe_load(sample.read_text())
    validate_pipeline_name(obj["metadata"]["name"])
    spec = PipelineSpec.model_validate(obj["spec"])
    assert spec.chain()


def test_samples_cover_the_presets() -> None:
    specs = {p.stem: yaml.safe_load(p.read_text())["spec"] for p in SAMPLES}
    assert specs["evepipeline-tiny"]["preset"] == "tiny"
    big = specs["evepipeline-eve-7b"]
    assert big["preset"] == "eve-7b" and big["resources"]["nodes"] == 4 and big["resources"]["gpusPerNode"] == 8
    assert "A100" in big["resources"]["gpuProduct"] and big["scheduling"]["gangScheduler"] == "volcano"
    hd = specs["evepipeline-eve-7b-hd"]
    assert hd["preset"] == "eve-7b-hd" and hd["start"] == "sft-hd" and hd["hd"] is True
