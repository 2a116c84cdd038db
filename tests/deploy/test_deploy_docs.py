"""values.yaml is the one source of the values schema and of the values tables."""

from __future__ import annotations

import re

import gen_chart_docs
import yaml
from deploy_support import CHART, ROOT


def test_schema_and_tables_are_generated_from_values_yaml() -> None:
    stale = [p.relative_to(ROOT) for p, text in gen_chart_docs.outputs().items()
             if not p.exists() or p.read_text() != text]
    assert not stale, f"out of date: {stale}; run python scripts/gen_chart_docs.py"


def test_every_key_has_a_helm_docs_comment() -> None:
    text = (CHART / "values.yaml").read_text()
    docs = gen_chart_docs.parse_comments(text)
    _, leaves = gen_chart_docs.build(yaml.safe_load(text), docs)
    assert len(leaves) > 60
    assert all(leaf.description for leaf in leaves)

    def sections(values: dict, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
        out = []
        for key, value in values.items():
            sub = path + (key,)
            if gen_chart_docs._is_structured(value, docs.get(sub, gen_chart_docs.KeyDoc())):
                out += [sub, *sections(value, sub)]
        return out

    undocumented = [".".join(p) for p in sections(yaml.safe_load(text)) if not docs[p].description]
    assert not undocumented, f"sections without a `# --` comment: {undocumented}"


def test_install_doc_walks_the_whole_way() -> None:
    doc = (ROOT / "docs" / "install.md").read_text()
    for needle in ("manifests/overlays/standalone?ref=v1.9.4", "Volcano", "scheduler-plugins", "Kueue",
                   "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "nvidia.com/gpu.product", "A100",
                   "helm install eve-platform", "helm test", "eve-platform submit stage=prealign",
                   "kubectl apply -n team-a -f manifests/samples/", "port-forward svc/eve-platform-mlflow",
                   "helm upgrade", "helm uninstall", "helm.sh/resource-policy: keep",
                   "docker build -f operator/Dockerfile", "docker build -f trainer/Dockerfile"):
        assert needle in doc, needle
    table = doc.split("<!-- values-table:start", 1)[1]
    assert "`operator.metricsPort`" in table and "`crds.keep`" in table


def test_readme_links_and_rbac_table_match_the_chart() -> None:
    doc = (ROOT / "docs" / "install.md").read_text()
    rows = re.findall(r"^\| (eve-platform\.io|kubeflow\.org|\"\" \(core\)[^|]*|apiextensions\.k8s\.io) \| ([^|]+) \| ([^|]+) \|",
                      doc, re.M)
    resources = {r[1].strip() for r in rows}
    assert {"evepipelines", "evepipelines/status", "evepipelines/finalizers", "pytorchjobs", "pods", "pods/log",
            "events", "secrets", "customresourcedefinitions"} <= resources
