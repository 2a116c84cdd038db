"""The exit codes every eve-platform process agrees on: the one definition.

The operator's retry policy reads them from the trainer's pods, the node launcher passes them
through, and the CLI ends with them. torch-free (the operator and the CLI import it).

    0    done
    1    failed, retryable (an outage, a timeout, a lost peer, a bug)
    2    the user must change something (bad key or value, missing bucket, denied access,
         wrong checkpoint architecture): permanent, never retried
    3    (CLI) not found
    4    (CLI) backend unreachable
    130  interrupted (Ctrl-C)
    143  stopped by SIGTERM after a final checkpoint (128 + 15): retryable
"""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USER = 2
EXIT_NOT_FOUND = 3
EXIT_BACKEND = 4
EXIT_INTERRUPTED = 130
EXIT_SIGTERM = 143

__all__ = ["EXIT_OK", "EXIT_FAILED", "EXIT_USER", "EXIT_NOT_FOUND", "EXIT_BACKEND", "EXIT_INTERRUPTED",
           "EXIT_SIGTERM"]
