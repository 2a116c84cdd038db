"""The layers, the lint and the types, enforced on every test run (the tools come with `make venv`).

- import-linter: the contracts in pyproject.toml [tool.importlinter] (listed in docs/contracts.md);
- ruff: the rule set in [tool.ruff];
- mypy: the contract package and the pipeline core ([tool.mypy] files).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(tool: str, *args: str) -> None:
    exe = BIN / tool
    command = [str(exe), *args] if exe.exists() else [sys.executable, "-m", tool.replace("-", "_"), *args]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"`{' '.join([tool, *args])}` failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"


def test_import_contracts_hold() -> None:
    run("lint-imports", "--no-cache")


def test_ruff_finds_nothing() -> None:
    run("ruff", "check", "--no-cache", ".")


@pytest.mark.timeout(300)
def test_mypy_on_the_contract_and_the_pipeline_core() -> None:
    run("mypy", "--cache-dir", "/dev/null" if sys.platform != "win32" else "nul")
