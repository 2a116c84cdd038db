"""The docs: generated from values.yaml, walking the whole install, links and RBAC true to the chart."""

from __future__ import annotations

import re
from pathlib import Path

import gen_chart_docs
import yaml
from support.deploy_support import CHART, RELEASE, ROOT, Helm, find


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


def _anchors(doc: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    headings = re.findall(r"^#+ (.+)$", doc.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def _rbac_table(doc: str) -> dict[tuple[str, str], set[str]]:
    """{(API group, resource): verbs} of the table under "What the operator may do (RBAC)"."""
    section = doc.split("### What the operator may do (RBAC)", 1)[1].split("\n#", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| API group")]
    table: dict[tuple[str, str], set[str]] = {}
    for groups, resources, verbs in rows:
        for group in groups.split(","):
            group = "" if group.strip().startswith('""') else group.strip()
            for resource in resources.split(","):
                table[(group, resource.strip())] = set(verbs.split("(", 1)[0].split())
    return table


def test_readme_links_and_rbac_table_match_the_chart(chart: Helm) -> None:
    for doc in (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))):
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not fetched here
            path, _, anchor = target.partition("#")
            linked = (doc.parent / path).resolve() if path else doc
            assert linked.exists(), f"{doc.relative_to(ROOT)} links to {target}, which does not exist"
            if anchor:
                assert anchor in _anchors(linked), f"{doc.relative_to(ROOT)} links to {target}: no such heading"
    documented = _rbac_table((ROOT / "docs" / "install.md").read_text())
    (role,) = find(chart.template(), "ClusterRole", RELEASE)
    rendered = {(group, resource): set(rule["verbs"])
                for rule in role["rules"] for group in rule["apiGroups"] for resource in rule["resources"]}
    assert documented == rendered, "docs/install.md's RBAC table differs from the chart's ClusterRole"
