"""The exit codes every eve-platform process agrees on, and the failure classes: the one definition.

The operator's retry policy reads exit codes from the trainer's pods, the node launcher passes
them through, and the CLI ends with them. torch-free (the operator and the CLI import it).

    0    done
    1    failed, retryable (an outage, a timeout, a lost peer, a bug)
    2    the user must change something (bad key or value, missing bucket, denied access,
         wrong checkpoint architecture): permanent, never retried
    3    (CLI) not found
    4    (CLI) backend unreachable
    130  interrupted (Ctrl-C)
    143  stopped by SIGTERM after a final checkpoint (128 + 15): retryable

A failed pipeline's status says why as a field, `failure.class` (docs/contracts.md):

    permanent  a retry cannot help: the trainer exited 2, or the spec or config is invalid
    transient  the world's fault (exit 1, 137, 143, 255, ...), and the attempts ran out
    stalled    no rank made progress for stallTimeoutSeconds, and the attempts ran out
    cancelled  the user (or a signal) stopped the pipeline
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USER = 2
EXIT_NOT_FOUND = 3
EXIT_BACKEND = 4
EXIT_INTERRUPTED = 130
EXIT_SIGTERM = 143

FailureClass = Literal["permanent", "transient", "stalled", "cancelled"]
FAILURE_CLASSES: tuple[str, ...] = get_args(FailureClass)


def exit_code(returncode: int) -> int:
    """A Popen returncode as a container runtime reports it (-15 -> 143, -9 -> 137)."""
    return 128 - returncode if returncode < 0 else returncode


def is_permanent(code: int | None) -> bool:
    """Whether an exit code says "the user must change something" (never retried)."""
    return code == EXIT_USER


def deciding_exit_code(codes: Iterable[int]) -> int | None:
    """The one code that classifies a failed job of several ranks or nodes: the permanent code
    if any of them exited with it (one rank's bad input fails them all), else the first failure."""
    failures = [c for c in codes if c != EXIT_OK]
    if EXIT_USER in failures:
        return EXIT_USER
    return failures[0] if failures else None


def failure_class_of_exit(code: int | None) -> FailureClass:
    """A failed job's class from its deciding exit code (None: the backend reported none)."""
    return "permanent" if is_permanent(code) else "transient"


def cli_exit_code(failure_class: str | None) -> int:
    """What `eve-platform submit --wait` exits with for a failed pipeline of this class."""
    return EXIT_USER if failure_class == "permanent" else EXIT_FAILED


__all__ = ["EXIT_OK", "EXIT_FAILED", "EXIT_USER", "EXIT_NOT_FOUND", "EXIT_BACKEND", "EXIT_INTERRUPTED",
           "EXIT_SIGTERM", "FailureClass", "FAILURE_CLASSES", "exit_code", "is_permanent", "deciding_exit_code",
           "failure_class_of_exit", "cli_exit_code"]
