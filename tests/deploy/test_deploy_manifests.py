"""manifests/: in sync with the chart, the kustomize overlay builds, samples match the CRD."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from deploy_support import K8S_VERSION, NAMESPACE, ROOT, crd_file

import render_manifests

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


def kustomize(path: Path) -> list[dict]:
    local = ROOT / ".tools" / "bin" / "kubectl"  # scripts/install-helm.sh installs it beside helm
    kubectl = str(local) if local.exists() else shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (for kubectl kustomize) is not installed: run scripts/install-helm.sh")
    proc = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def test_overlay_example_builds(helm: str) -> None:  # helm: the installer also brings kubectl
    objs = kustomize(MANIFESTS / "overlays" / "example")
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

NOT_STRUCTURAL = ("$ref", "definitions", "$defs", "$schema", "const")
JUNCTORS = ("allOf", "anyOf", "oneOf")
#: A branch of allOf/anyOf/oneOf/not may only carry value validations.
NOT_IN_JUNCTOR = {"type", "properties", "items", "additionalProperties", "default", "description", "nullable"}


def walk_schema(node: dict, path: str, problems: list[str]) -> None:
    """apiextensions v1 structural-schema rules (the subset that a generator can get wrong)."""
    for key in NOT_STRUCTURAL:
        if key in node:
            problems.append(f"{path}: `{key}` is not allowed in a CRD schema")
    branches = [b for j in JUNCTORS for b in node.get(j, [])] + ([node["not"]] if "not" in node else [])
    if not node.get("x-kubernetes-int-or-string"):
        for branch in branches:
            if NOT_IN_JUNCTOR & set(branch):
                problems.append(f"{path}: allOf/anyOf/oneOf/not may only hold value validations, got {sorted(branch)}")
    if not ("type" in node or node.get("x-kubernetes-int-or-string")
            or node.get("x-kubernetes-preserve-unknown-fields")):
        problems.append(f"{path}: no type")
    if "properties" in node and node.get("additionalProperties") not in (None, True):
        problems.append(f"{path}: properties and additionalProperties are mutually exclusive")
    if node.get("type") == "array" and "items" not in node:
        problems.append(f"{path}: array without items")
    for key, sub in node.get("properties", {}).items():
        walk_schema(sub, f"{path}.{key}", problems)
    if isinstance(node.get("items"), dict):
        walk_schema(node["items"], f"{path}[]", problems)
    if isinstance(node.get("additionalProperties"), dict):
        walk_schema(node["additionalProperties"], f"{path}{{}}", problems)


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
    problems: list[str] = []
    walk_schema(schema, "openAPIV3Schema", problems)
    assert not problems, "\n".join(problems)


def to_jsonschema(node: object) -> object:
    """OpenAPI v3 (Kubernetes flavour) -> JSON Schema: `nullable` becomes a null type, and
    unknown fields fail as they do under kubectl's default strict field validation."""
    if isinstance(node, list):
        return [to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
    if "properties" in node and "additionalProperties" not in node \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if node.get("x-kubernetes-int-or-string") and "type" not in node and "anyOf" not in node:
        out["type"] = ["integer", "string"]
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else [*out["type"], "null"]
    return out


def crd_validator() -> jsonschema.Validator:
    version = next(v for v in crd_file()["spec"]["versions"] if v["name"] == "v1alpha1")
    schema = to_jsonschema(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    return jsonschema.Draft4Validator(schema)


def test_samples_exist() -> None:
    names = {p.name for p in SAMPLES}
    assert {"evepipeline-tiny.yaml", "evepipeline-eve-7b.yaml", "evepipeline-eve-7b-hd.yaml"} <= names


@pytest.mark.parametrize("sample", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_sample_matches_the_crd(sample: Path) -> None:
    obj = yaml.safe_load(sample.read_text())
    assert obj["apiVersion"] == "eve-platform.io/v1alpha1" and obj["kind"] == "EvePipeline"
    errors = sorted(crd_validator().iter_errors(obj), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)


@pytest.mark.parametrize("sample", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_sample_matches_the_pipeline_model(sample: Path) -> None:
    """The pydantic model the CRD is generated from accepts the sample too (cross-field rules)."""
    spec_mod = pytest.importorskip("eve_operator.spec")
    obj = yaml.safe_load(sample.read_text())
    spec_mod.validate_name(obj["metadata"]["name"])
    spec = spec_mod.PipelineSpec.model_validate(obj["spec"])
    assert spec.chain()


def test_samples_cover_the_presets() -> None:
    specs = {p.stem: yaml.safe_load(p.read_text())["spec"] for p in SAMPLES}
    assert specs["evepipeline-tiny"]["preset"] == "tiny"
    big = specs["evepipeline-eve-7b"]
    assert big["preset"] == "eve-7b" and big["resources"]["nodes"] == 4 and big["resources"]["gpusPerNode"] == 8
    assert "A100" in big["resources"]["gpuProduct"] and big["scheduling"]["gangScheduler"] == "volcano"
    hd = specs["evepipeline-eve-7b-hd"]
    assert hd["preset"] == "eve-7b-hd" and hd["start"] == "sft-hd" and hd["hd"] is True
