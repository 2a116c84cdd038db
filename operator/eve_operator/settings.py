"""The operator's settings: the flags of `eve-operator`, or EVE_OPERATOR_* in the environment.
One set of defaults (the chart's values say the same). Light: `eve-operator --help` imports no kopf."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass
class Config:
    """Operator settings: flags of `eve-operator`, or EVE_OPERATOR_* in the environment."""

    resync_s: float = 30.0
    """Safety-net reconcile period of each pipeline (manifests in S3 send no events)."""
    metrics_port: int = 8080
    """Serve /metrics on this port; 0: off (the chart's operator.metricsPort)."""
    deep_verify: bool = True
    """Re-hash every export file before a stage counts as complete (else: sizes only)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        env = os.environ if env is None else env
        return cls(resync_s=float(env.get("EVE_OPERATOR_RESYNC_S", cls.resync_s)),
                   metrics_port=int(env.get("EVE_OPERATOR_METRICS_PORT", cls.metrics_port)),
                   deep_verify=env.get("EVE_OPERATOR_VERIFY", "deep") != "size")


__all__ = ["Config"]
