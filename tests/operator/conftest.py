"""Fixtures of the operator tests; the harness lives in operator_harness.py (a unique module
name: test folders each put their own directory on sys.path, so `conftest` would collide)."""

from operator_harness import cluster, emulator, operator, output  # noqa: F401
