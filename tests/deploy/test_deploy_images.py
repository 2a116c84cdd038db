"""Container images: lint the Dockerfiles (Docker itself is not needed to run this)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib
from support.deploy_support import ROOT

DOCKERFILES = {"operator": ROOT / "operator" / "Dockerfile", "trainer": ROOT / "trainer" / "Dockerfile"}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += " " + line[:-1] if line.endswith("\\") else " " + line
        if not line.endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def resolved_bases(path: Path) -> list[str]:
    """Base image of every stage, with ARG defaults substituted; stage names excluded."""
    args: dict[str, str] = {}
    stages: set[str] = set()
    bases = []
    for word, rest in instructions(path):
        if word == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args.setdefault(key.strip(), value.strip().strip('"'))
        elif word == "FROM":
            parts = rest.split()
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m[1], m[0]), parts[0])
            if image not in stages:
                bases.append(image)
            if len(parts) == 3 and parts[1].upper() == "AS":
                stages.add(parts[2])
    return bases


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_base_images_are_pinned(name: str) -> None:
    bases = resolved_bases(DOCKERFILES[name])
    assert bases, "no FROM"
    for image in bases:
        assert "$" not in image, f"{name}: unresolved {image}"
        if "@sha256:" in image:
            continue
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert tag, f"{name}: {image} has no tag"
        assert tag != "latest" and "latest" not in tag, f"{name}: {image} is not pinned"
        assert re.search(r"\d+\.\d+\.\d+", tag), f"{name}: {image} is not an exact version tag"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_runs_as_non_root(name: str) -> None:
    users = [rest for word, rest in instructions(DOCKERFILES[name]) if word == "USER"]
    assert users, f"{name}: no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"{name}: runs as root"
    assert user == "65532", f"{name}: expected uid 65532 (matches the chart's runAsUser), got {user}"


def test_no_latest_anywhere() -> None:
    for path in DOCKERFILES.values():
        assert ":latest" not in path.read_text(), path


def test_operator_image() -> None:
    steps = instructions(DOCKERFILES["operator"])
    froms = [rest for word, rest in steps if word == "FROM"]
    assert len(froms) >= 2, "multi-stage: build a wheel, then install it"
    assert all("python:3.11" in f and "slim" in f for f in resolved_bases(DOCKERFILES["operator"]))
    runs = " ".join(rest for word, rest in steps if word == "RUN")
    assert "pip wheel" in runs
    assert "[train]" not in runs and "torch" not in runs, "the operator image installs core dependencies only"
    assert ("ENTRYPOINT", '["eve-operator"]') in steps
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["eve-operator"] == "eve_operator.run:main"


def test_trainer_image() -> None:
    steps = instructions(DOCKERFILES["trainer"])
    (base,) = [b for b in resolved_bases(DOCKERFILES["trainer"]) if not b.startswith("python:")]
    assert re.match(r"(pytorch/pytorch:\d+\.\d+\.\d+-cuda\d+\.\d+-cudnn\d+-(runtime|devel)"
                    r"|nvcr\.io/nvidia/pytorch:\d+\.\d+-py3)$", base), base
    torch_pin = next(d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
                     ["optional-dependencies"]["train"] if d.startswith("torch=="))
    if base.startswith("pytorch/pytorch:"):
        assert base.split(":")[1].startswith(torch_pin.split("==")[1] + "-"), "base torch must match the [train] pin"
    runs = " ".join(rest for word, rest in steps if word == "RUN")
    assert "[train]" in runs and "deepspeed" in runs
    assert ("ENTRYPOINT", '["eve-train"]') in steps


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerignore(name: str) -> None:
    root = (ROOT / ".dockerignore").read_text().split()
    assert ".git" in root and ".venv" in root
    own = DOCKERFILES[name].with_name("Dockerfile.dockerignore").read_text().split()
    assert "*" in own, "allow-list: exclude everything, then name what the build copies"
    copied = [src for word, rest in instructions(DOCKERFILES[name])
              if word == "COPY" and not rest.startswith("--from") for src in rest.split()[:-1]]
    assert "pyproject.toml" in copied
    for src in copied:
        assert f"!{src}" in own or f"!{src}/**" in own or f"!{src.rstrip('/')}/**" in own, \
            f"{name}: COPY {src} is excluded by Dockerfile.dockerignore"
