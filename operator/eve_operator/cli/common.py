"""What every `eve-platform` command shares: the Typer apps, the common options, backend choice
and the way a command fails (message, exit code)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from eve_contract.exit_codes import EXIT_BACKEND, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_NOT_FOUND, EXIT_USER
from eve_operator.cli import output
from eve_operator.cli.output import Format

app = typer.Typer(
    name="eve-platform", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Train encoder-free vision-language models (EVE) on Kubernetes or on this machine.",
)
config_app = typer.Typer(no_args_is_help=True, help="Inspect the typed trainer configuration.")
app.add_typer(config_app, name="config")

BACKENDS = ("auto", "local", "kubernetes")


def fail(message: str, code: int = EXIT_USER) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def info(message: str) -> None:
    typer.echo(message, err=True)


def _kube_configured() -> bool:
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return True
    paths = os.environ.get("KUBECONFIG", str(Path.home() / ".kube" / "config")).split(os.pathsep)
    return any(Path(p).is_file() for p in paths if p)


def pick_backend(backend: str, local: bool) -> str:
    if local:
        return "local"
    backend = backend or os.environ.get("EVE_PLATFORM_BACKEND", "auto")
    if backend not in BACKENDS:
        fail(f"--backend={backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "kubernetes" if _kube_configured() else "local"
    return backend


def _kube():  # noqa: ANN202 - lazy: the kubernetes client is only loaded when used
    from eve_operator.backends import kubernetes

    return kubernetes


def _backend_call(fn, *args: Any, **kwargs: Any) -> Any:  # noqa: ANN001
    try:
        return fn(*args, **kwargs)
    except (ValueError, KeyError) as err:
        fail(str(err))
    except Exception as err:  # noqa: BLE001 - any client/transport error
        fail(f"{type(err).__name__}: {err}", EXIT_BACKEND)


LocalOpt = typer.Option(False, "--local", help="Run on this machine (same as --backend local).")
BackendOpt = typer.Option("", "--backend", help="auto | local | kubernetes (auto: kubernetes when a kube context exists).")
NamespaceOpt = typer.Option(None, "--namespace", "-n", help="Kubernetes namespace; default the context's.")
OutputOpt = typer.Option(Format.table, "--output", "-o", help="table | json | yaml.")


__all__ = ["app", "config_app", "BACKENDS", "fail", "info", "pick_backend", "LocalOpt", "BackendOpt", "NamespaceOpt",
           "OutputOpt", "output", "Format", "EXIT_BACKEND", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_NOT_FOUND",
           "EXIT_USER"]
