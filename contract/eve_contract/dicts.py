"""Merging nested mappings: the one definition (trainer recipes and overrides, the operator's
spec defaults and pod templates)."""

from __future__ import annotations

from typing import Any


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Maps merged key by key, recursively; any other value of `over` replaces the base's.
    Neither argument is modified."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


__all__ = ["deep_merge"]
