"""docs/contracts.md lists exactly the import contracts that import-linter enforces."""

from __future__ import annotations

import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def documented() -> set[tuple[str, str]]:
    text = (ROOT / "docs/contracts.md").read_text()
    section = text.split("### Import contracts (enforced)", 1)[1].split("\n#", 1)[0]
    return set(re.findall(r"^- `([a-z0-9-]+)`: (.+)$", section, flags=re.M))


def configured() -> set[tuple[str, str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {(c["id"], c["name"]) for c in config["contracts"]}


def test_contracts_md_lists_the_import_linter_contracts() -> None:
    assert documented() == configured(), (
        f"only in docs/contracts.md: {sorted(documented() - configured())}; "
        f"only in pyproject.toml: {sorted(configured() - documented())}")
