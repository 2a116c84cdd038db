"""Fixtures of the operator tests (from the harness in support.operator_harness)."""

from support.operator_harness import cluster, emulator, operator, output  # noqa: F401
