"""The Helm chart: lint, render every values file, validate every object, strict values."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import tomllib
import yaml
from support.deploy_support import (
    CHART,
    CI_VALUES,
    K8S_VERSION,
    NAMESPACE,
    RELEASE,
    RENDER_CASES,
    ROOT,
    Helm,
    find,
    pod_specs,
    values_args,
)

from eve_operator import run

#: Kinds kubernetes-validate has no schema for; checked structurally below.
NON_CORE_KINDS = {"ServiceMonitor"}


def test_app_version_follows_pyproject() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert str(chart["appVersion"]) == project["version"], "Chart.yaml appVersion must follow pyproject.toml"
    assert chart["apiVersion"] == "v2" and chart["type"] == "application"


def test_ci_values_files_exist() -> None:
    assert {p.stem for p in CI_VALUES} >= {"namespaced-values", "mlflow-sqlite-values",
                                           "mlflow-postgres-values", "kueue-values"}


def test_lint_strict(chart: Helm) -> None:
    proc = chart.run("lint", "--strict", str(CHART))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for values in CI_VALUES:
        proc = chart.run("lint", "--strict", str(CHART), "--values", str(values))
        assert proc.returncode == 0, f"{values.name}: {proc.stdout}{proc.stderr}"


@pytest.mark.parametrize("values", RENDER_CASES)
def test_every_object_is_valid(chart: Helm, values: Path | None) -> None:
    objs = chart.template(*values_args(values))
    assert find(objs, "Deployment", RELEASE), "the operator Deployment is always rendered"
    for obj in objs:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] in NON_CORE_KINDS:
            assert obj["apiVersion"] == "monitoring.coreos.com/v1"
            assert obj["spec"]["endpoints"] and obj["spec"]["selector"]["matchLabels"], where
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{where} is not a valid Kubernetes {K8S_VERSION} object: {err.message}")
        labels = obj["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/instance") == RELEASE, where
        assert labels.get("helm.sh/chart") == "eve-platform-0.1.0", where
        assert len(obj["metadata"]["name"]) <= 63, where
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"):
            assert obj["metadata"].get("namespace"), f"{where} has no namespace"


def test_one_object_per_template_file() -> None:
    """kuberay layout: one Kubernetes object (kind) per template; logic in _helpers.tpl."""
    for path in (CHART / "templates").rglob("*.yaml"):
        text = path.read_text()
        kinds = set(re.findall(r"^kind: (\w+)", text, re.M))
        assert len(kinds) <= 1, f"{path.relative_to(CHART)} renders {kinds}"
        assert "{{- include \"eve-platform.labels\"" in text or path.name == "crd.yaml", path.name


# -- values.schema.json: typos and wrong types fail -----------------------------------------

@pytest.mark.parametrize("args, message", [
    (("--set", "operatorr.image=x"), "operatorr"),
    (("--set", "operator.image.tga=1.0"), "tga"),
    (("--set", "mlflow.backendstore.type=sqlite"), "backendstore"),
    (("--set", "operator.replicas=abc"), "replicas"),
    (("--set", "operator.replicas=2"), "replicas"),
    (("--set-string", "crds.keep=yes"), "keep"),
    (("--set", "mlflow.backendStore.type=mysql"), "type"),
    (("--set", "scheduling.gangScheduler=yunikorn"), "gangScheduler"),
    (("--set", "watchNamespaces[0]=Bad_NS"), "watchNamespaces"),
])
def test_schema_rejects(chart: Helm, args: tuple[str, ...], message: str) -> None:
    assert message in chart.template_error(*args)


def test_schema_is_strict_at_every_level() -> None:
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(node: dict, path: str) -> None:
        if "properties" in node:
            assert node.get("additionalProperties") is False, f"{path}: additionalProperties must be false"
            for key, sub in node["properties"].items():
                walk(sub, f"{path}.{key}" if path else key)
        else:
            assert node.get("description"), f"{path}: no description"
            assert "default" in node, f"{path}: no default"

    walk(schema, "")


@pytest.mark.parametrize("args, message", [
    (("--set", "mlflow.enabled=true", "--set", "mlflow.trackingUri=http://mlflow:5000"), "set one of them"),
    (("--set", "mlflow.backendStore.type=postgres"), "existingSecret"),
    (("--set", "mlflow.ingress.enabled=true"), "mlflow.ingress.host"),
    (("--set", "serviceAccount.create=false"), "serviceAccount.name"),
    (("--set", "operator.metricsPort=8081"), "must differ"),
    (("--set", "mlflow.artifactsDestination=bucket/path"), "must be a URL"),
    (("--set", "operator.readPipelineSecrets=true"), "a cluster-wide Secret grant is not offered"),
    (("--set", "storage.s3.credentialsSecret.name="), "or set operator.s3Identity=serviceAccount"),
])
def test_validate_config_fails_with_a_clear_message(chart: Helm, args: tuple[str, ...], message: str) -> None:
    assert message in chart.template_error(*args)


# -- RBAC: exactly what the operator needs -----------------------------------------------------

NAMESPACED_RULES = {
    ("eve-platform.io", "evepipelines"): {"get", "list", "watch", "patch", "update"},
    ("eve-platform.io", "evepipelines/status"): {"get", "patch", "update"},
    ("eve-platform.io", "evepipelines/finalizers"): {"update"},
    ("kubeflow.org", "pytorchjobs"): {"get", "list", "watch", "create", "delete", "patch"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "pods/log"): {"get"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
}
#: Only with operator.readPipelineSecrets, and only in a Role per watched namespace.
SECRET_RULES = {("", "secrets"): {"get"}}
CLUSTER_RULES = {("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"}}


def grants(rules: list[dict]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert not rule.get("nonResourceURLs") and not rule.get("resourceNames"), rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert "*" not in (group, resource) and "*" not in rule["verbs"], rule
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def operator_roles(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in find(objs, kind) if "helm.sh/hook" not in o["metadata"].get("annotations", {})]


def test_rbac_cluster_wide_is_exact(chart: Helm) -> None:
    objs = chart.template()
    (role,) = operator_roles(objs, "ClusterRole")
    assert grants(role["rules"]) == NAMESPACED_RULES | CLUSTER_RULES
    assert not find(objs, "Role") and not find(objs, "RoleBinding")
    (binding,) = operator_roles(objs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}]
    args = find(objs, "Deployment", RELEASE)[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--all-namespaces" in args and not any(a.startswith("--namespace") for a in args)


def test_rbac_namespaced_is_exact(chart: Helm) -> None:
    objs = chart.template("--values", str(CHART / "ci" / "namespaced-values.yaml"))
    (cluster_role,) = operator_roles(objs, "ClusterRole")
    assert grants(cluster_role["rules"]) == CLUSTER_RULES
    roles = find(objs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert grants(role["rules"]) == NAMESPACED_RULES
    bindings = find(objs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for b in bindings:
        assert b["subjects"][0]["namespace"] == NAMESPACE and b["roleRef"]["kind"] == "Role"
    args = find(objs, "Deployment", RELEASE)[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args and "--all-namespaces" not in args


def test_rbac_namespaced_defaults_to_release_namespace(chart: Helm) -> None:
    objs = chart.template("--set", "rbac.namespaced=true")
    assert [r["metadata"]["namespace"] for r in find(objs, "Role")] == [NAMESPACE]


def test_no_secret_access_by_default_in_either_mode(chart: Helm) -> None:
    for args in ((), ("--values", str(CHART / "ci" / "namespaced-values.yaml"))):
        objs = chart.template(*args)
        for role in operator_roles(objs, "ClusterRole") + find(objs, "Role"):
            assert ("", "secrets") not in grants(role["rules"]), role["metadata"]
        env = {e["name"]: e for e in find(objs, "Deployment", RELEASE)[0]["spec"]["template"]["spec"]
               ["containers"][0]["env"]}
        assert env["EVE_READ_PIPELINE_SECRETS"]["value"] == "false"


@pytest.mark.parametrize("namespaced", [False, True])
def test_rbac_read_pipeline_secrets_is_exact_and_namespaced(chart: Helm, namespaced: bool) -> None:
    objs = chart.template("--set", "operator.readPipelineSecrets=true", "--set", "watchNamespaces={team-a,team-b}",
                          "--set", f"rbac.namespaced={str(namespaced).lower()}")
    (cluster_role,) = operator_roles(objs, "ClusterRole")
    assert grants(cluster_role["rules"]) == CLUSTER_RULES | ({} if namespaced else NAMESPACED_RULES)
    secret_roles = [r for r in find(objs, "Role") if r["metadata"]["name"] == f"{RELEASE}-secrets"]
    assert sorted(r["metadata"]["namespace"] for r in secret_roles) == ["team-a", "team-b"]
    for role in secret_roles:
        assert grants(role["rules"]) == SECRET_RULES
    other_roles = [r for r in find(objs, "Role") if r not in secret_roles]
    assert len(other_roles) == (2 if namespaced else 0)
    for role in other_roles:
        assert grants(role["rules"]) == NAMESPACED_RULES
    bindings = [b for b in find(objs, "RoleBinding") if b["roleRef"]["name"] == f"{RELEASE}-secrets"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    assert all(b["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}]
               for b in bindings)
    env = {e["name"]: e for e in find(objs, "Deployment", RELEASE)[0]["spec"]["template"]["spec"]
           ["containers"][0]["env"]}
    assert env["EVE_READ_PIPELINE_SECRETS"]["value"] == "true"


def test_operator_s3_identity(chart: Helm) -> None:
    def env(*args: str) -> dict[str, dict]:
        dep = find(chart.template(*args), "Deployment", RELEASE)[0]
        return {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}

    default = env()
    assert default["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "eve-s3-credentials"
    own = env("--set", "operator.credentialsSecret=operator-s3-readonly")
    assert own["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "operator-s3-readonly"
    assert own["EVE_CREDENTIALS_SECRET"]["value"] == "eve-s3-credentials"  # the pipelines' default stays
    irsa = env("--set", "operator.s3Identity=serviceAccount", "--set", "storage.s3.credentialsSecret.name=",
               "--set", "serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::1:role/eve")
    assert "AWS_ACCESS_KEY_ID" not in irsa and "EVE_CREDENTIALS_SECRET" not in irsa
    assert irsa["AWS_REGION"]["value"] == "us-east-1"


def test_rbac_off(chart: Helm) -> None:
    objs = chart.template("--set", "rbac.create=false", "--set", "tests.enabled=false")
    assert not {o["kind"] for o in objs} & {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


def test_helm_test_hook(chart: Helm) -> None:
    objs = [o for o in chart.template() if o["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    assert sorted(o["kind"] for o in objs) == ["ClusterRole", "ClusterRoleBinding", "Pod", "ServiceAccount"]
    (role,) = find(objs, "ClusterRole")
    assert role["rules"] == [{"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
                              "resourceNames": ["evepipelines.eve-platform.io", "pytorchjobs.kubeflow.org"],
                              "verbs": ["get", "list", "watch"]}]
    (pod,) = find(objs, "Pod")
    commands = [c["args"] for c in pod["spec"]["initContainers"] + pod["spec"]["containers"]]
    assert ["get", "crd", "pytorchjobs.kubeflow.org", "-o", "name"] in commands
    assert any("crd/evepipelines.eve-platform.io" in a for a in commands)
    assert ["get", "--raw", "/apis/eve-platform.io/v1alpha1"] in commands
    assert pod["spec"]["serviceAccountName"] == role["metadata"]["name"]
    assert not [o for o in chart.template("--set", "tests.enabled=false")
                if o["metadata"].get("annotations", {}).get("helm.sh/hook")]


# -- Pods: non-root, read-only, no capabilities, resources, pinned images ----------------------

@pytest.mark.parametrize("values", RENDER_CASES)
def test_pod_security(chart: Helm, values: Path | None) -> None:
    for where, spec in pod_specs(chart.template(*values_args(values))):
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True and pod_sc.get("runAsUser", 0) != 0, where
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), where
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c.get("securityContext", {})
            name = f"{where}/{c['name']}"
            assert sc.get("readOnlyRootFilesystem") is True, name
            assert sc.get("allowPrivilegeEscalation") is False, name
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], name
            assert not sc.get("capabilities", {}).get("add"), name
            assert sc.get("privileged") is not True, name
            assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
            assert c["resources"].get("requests") and c["resources"].get("limits"), f"{name}: resources"
            image = c["image"]
            assert re.search(r":[\w][\w.-]*$", image) and not image.endswith(":latest"), f"{name}: {image}"


SECRET_NAMES = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL|_KEY$)")


@pytest.mark.parametrize("values", RENDER_CASES)
def test_credentials_only_by_reference(chart: Helm, values: Path | None) -> None:
    objs = chart.template(*values_args(values))
    assert not find(objs, "Secret"), "the chart never creates Secrets: credentials are not values"
    for where, spec in pod_specs(objs):
        for c in spec["containers"]:
            env = {e["name"]: e for e in c.get("env", [])}
            for name, entry in env.items():
                if SECRET_NAMES.search(name) and name not in ("EVE_CREDENTIALS_SECRET", "EVE_READ_PIPELINE_SECRETS"):
                    assert "value" not in entry, f"{where}: {name} is inline"
            if c["name"] in ("operator", "mlflow"):
                for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                    assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "eve-s3-credentials", where
            if c["name"] == "mlflow" and "postgres" in str(values):
                assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"] == {"name": "mlflow-db", "key": "uri"}


def test_operator_deployment(chart: Helm) -> None:
    objs = chart.template("--set", "storage.s3.endpoint=http://minio.minio.svc:9000")
    (dep,) = find(objs, "Deployment", RELEASE)
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    spec = dep["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["command"] == ["eve-operator"]
    assert "--metrics-port=8080" in c["args"] and "--health-port=8081" in c["args"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"metrics": 8080, "health": 8081}
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["EVE_S3_ENDPOINT"] == env["AWS_ENDPOINT_URL"] == "http://minio.minio.svc:9000"
    assert env["MLFLOW_TRACKING_URI"] == f"http://{RELEASE}-mlflow.{NAMESPACE}.svc:5000"
    assert env["EVE_TRAINER_IMAGE"] == "ghcr.io/eve-platform/trainer:0.1.0"
    assert c["image"] == "ghcr.io/eve-platform/operator:0.1.0"
    assert spec["serviceAccountName"] == RELEASE
    (svc,) = find(objs, "Service", f"{RELEASE}-metrics")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]


def test_ports_and_args_follow_values(chart: Helm) -> None:
    objs = chart.template("--set", "operator.metricsPort=9090", "--set", "operator.healthPort=9091",
                          "--set", "operator.extraArgs[0]=--dev")
    (c,) = find(objs, "Deployment", RELEASE)[0]["spec"]["template"]["spec"]["containers"]
    assert c["args"][-3:] == ["--metrics-port=9090", "--health-port=9091", "--dev"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"metrics": 9090, "health": 9091}


def test_crd_keep_and_install_toggles(chart: Helm) -> None:
    (crd,) = find(chart.template(), "CustomResourceDefinition")
    assert crd["metadata"]["name"] == "evepipelines.eve-platform.io"
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    (crd,) = find(chart.template("--set", "crds.keep=false"), "CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in crd["metadata"].get("annotations", {})
    assert not find(chart.template("--set", "crds.install=false"), "CustomResourceDefinition")


def test_mlflow_modes(chart: Helm) -> None:
    external = chart.template("--set", "mlflow.trackingUri=https://mlflow.example.com")
    assert not [o for o in external if o["metadata"]["name"].endswith("-mlflow")]
    (op,) = find(external, "Deployment", RELEASE)
    env = {e["name"]: e.get("value") for e in op["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MLFLOW_TRACKING_URI"] == "https://mlflow.example.com"

    sqlite = chart.template("--values", str(CHART / "ci" / "mlflow-sqlite-values.yaml"))
    (dep,) = find(sqlite, "Deployment", f"{RELEASE}-mlflow")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert re.fullmatch(r"ghcr\.io/mlflow/mlflow:v\d+\.\d+\.\d+(-full)?", c["image"])
    assert "--artifacts-destination=s3://eve-ci/mlflow-artifacts" in c["args"]
    assert "--backend-store-uri=$(MLFLOW_BACKEND_STORE_URI)" in c["args"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("sqlite:////mlflow/data/")
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio.minio.svc:9000"
    assert "mlflow.example.com" in env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    (pvc,) = find(sqlite, "PersistentVolumeClaim")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    (ing,) = find(sqlite, "Ingress")
    assert ing["spec"]["rules"][0]["host"] == "mlflow.example.com"
    assert ing["spec"]["tls"][0]["secretName"] == "mlflow-tls"
    assert find(sqlite, "ServiceMonitor")

    postgres = chart.template("--values", str(CHART / "ci" / "mlflow-postgres-values.yaml"))
    assert not find(postgres, "PersistentVolumeClaim")
    (dep,) = find(postgres, "Deployment", f"{RELEASE}-mlflow")
    assert "--artifacts-destination=s3://eve-ci/mlflow" in dep["spec"]["template"]["spec"]["containers"][0]["args"]


def test_notes_tell_the_next_command(helm: str) -> None:
    proc = subprocess.run([helm, "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client"],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "KUBECONFIG": os.devnull})
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "eve-platform submit stage=prealign" in notes
    assert f"port-forward svc/{RELEASE}-mlflow 5000:5000" in notes
    assert "helm test" in notes


def test_kueue_values(chart: Helm) -> None:
    objs = chart.template("--values", str(CHART / "ci" / "kueue-values.yaml"))
    (c,) = find(objs, "Deployment", RELEASE)[0]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["EVE_GANG_SCHEDULER"] == "kueue" and env["EVE_QUEUE"] == "eve-gpu"
    assert c["image"].endswith(":0.1.0-ci")
    values = yaml.safe_load((CHART / "ci" / "kueue-values.yaml").read_text())
    assert values["scheduling"]["gangScheduler"] == "kueue"


@pytest.mark.parametrize("values", RENDER_CASES)
def test_operator_args_are_accepted_by_eve_operator(chart: Helm, values: Path | None) -> None:
    """The Deployment's args parse with the real `eve-operator` argument parser."""
    (c,) = find(chart.template(*values_args(values)), "Deployment", RELEASE)[0]["spec"]["template"]["spec"]["containers"]
    args = run.parse_args(c["args"])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert (args.metrics_port, args.health_port) == (ports["metrics"], ports["health"])
    assert args.all_namespaces or args.namespace


def test_crd_template_renders_the_generated_file_unchanged(chart: Helm) -> None:
    """fromYaml/toYaml must not alter the generated schema (numbers, nulls, ordering aside)."""
    from support.deploy_support import crd_file

    (crd,) = find(chart.template(), "CustomResourceDefinition")
    source = crd_file()
    assert crd["spec"] == source["spec"]
    assert crd["metadata"]["name"] == source["metadata"]["name"]
    assert source["metadata"].get("labels", {}).items() <= crd["metadata"]["labels"].items()
