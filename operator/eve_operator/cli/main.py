"""`eve-platform`: submit and watch EVE training pipelines, on a cluster or on this machine.

Exit codes: 0 ok, 1 the pipeline failed (when waiting), 2 bad input, 3 not found,
4 the backend is unreachable, 130 interrupted.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer

from eve_operator.cli import output
from eve_operator.cli.output import Format

app = typer.Typer(
    name="eve-platform", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Train encoder-free vision-language models (EVE) on Kubernetes or on this machine.",
)
config_app = typer.Typer(no_args_is_help=True, help="Inspect the typed trainer configuration.")
app.add_typer(config_app, name="config")

try:  # the data verbs (convert, synth) live beside the data pipeline
    from eve_operator.cli.cmd_data import data_app

    app.add_typer(data_app, name="data")
except ImportError:  # pragma: no cover - only while the data module is absent
    pass

EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_BACKEND = 1, 2, 3, 4


BACKENDS = ("auto", "local", "kubernetes")


def fail(message: str, code: int = EXIT_USAGE) -> None:
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


# -- submit ----------------------------------------------------------------------------------


@app.command(context_settings={"ignore_unknown_options": True})
def submit(
    words: list[str] = typer.Argument(..., metavar="stage=<name> [key=value ...]",
                                      help="Pipeline keys (stage, until, name, preset, data, init_from, "
                                           "output, ...) and trainer overrides (optim.lr=1e-4, "
                                           "sft.optim.lr=1e-5 for one stage)."),
    local: bool = LocalOpt,
    backend: str = BackendOpt,
    namespace: Optional[str] = NamespaceOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be created and exit."),
    detach: bool = typer.Option(False, "--detach", "-d", help="Local: run in the background."),
    output_fmt: Format = OutputOpt,
) -> None:
    """Start a pipeline at a stage; the following stages chain automatically unless until=<stage>."""
    from eve_trainer.config import ConfigError

    from eve_operator.cli.submit_args import parse_submit

    where = pick_backend(backend, local)
    defaults: dict[str, Any] = {}
    if where == "local":
        from eve_operator.backends import local as lb

        defaults = {"output": lb.default_output(), "mlflow": {"tracking_uri": lb.default_tracking_uri()},
                    "resources": {"gpus_per_node": _local_gpus(), "gpu_product": None}}
    try:
        name, spec = parse_submit(words, defaults)
    except (ConfigError, ValueError) as err:
        fail(str(err))
    name = name or f"eve-{spec.preset}".replace(".", "-")
    if where == "kubernetes":
        _submit_kubernetes(name, namespace, spec, dry_run, output_fmt)
    else:
        _submit_local(name, spec, dry_run, detach, output_fmt)


def _local_gpus() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    return len(list(Path("/dev").glob("nvidia[0-9]*")))


def _submit_kubernetes(name: str, namespace: str | None, spec: Any, dry_run: bool, fmt: Format) -> None:
    kube = _kube()
    if dry_run:
        docs = [_backend_call(kube.render_pipeline, name, namespace, spec),
                *_backend_call(kube.render_jobs, name, namespace, spec)]
        if fmt is Format.json:
            output.emit(docs, fmt)
        else:
            import yaml

            sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False))
        return
    obj = _backend_call(kube.create_pipeline, name, namespace, spec)
    if fmt is not Format.table:
        output.emit(obj, fmt)
        return
    print(name)
    info(f"EvePipeline {name} created in namespace {obj['metadata'].get('namespace')}; "
         f"watch it with `eve-platform status {name}`")


def _submit_local(name: str, spec: Any, dry_run: bool, detach: bool, fmt: Format) -> None:
    from eve_trainer.config import ConfigError

    from eve_operator.backends import local as lb
    from eve_operator.jobspec import build_job_spec
    from eve_operator.pipeline import decide, initial_status, Observation, SubmitJob

    existing = lb.load(name)
    if existing is not None and existing.runner_alive:
        fail(f"pipeline {name} is already running (pid {existing.runner_pid}); "
             f"watch it with `eve-platform status {name}` or choose another name=")
    # Validate every stage's trainer config before anything starts.
    try:
        jobs = [build_job_spec(name, spec, SubmitJob(stage, 1, f"{name}-{stage}", spec.init_from, None))
                for stage in spec.chain()]
    except (ConfigError, ValueError) as err:
        fail(str(err))
    if dry_run:
        plan = [{"name": j.name, "stage": j.stage, "processes": j.world_size,
                 "command": ["python", "-m", "eve_trainer", *j.command[1:]], "env": j.env} for j in jobs]
        output.emit({"pipeline": name, "backend": "local", "stages": plan}, fmt if fmt is not Format.table else Format.yaml)
        return
    record = lb.Record(name=name, spec=spec)
    record.save()
    if detach:
        pid = lb.run_detached(name)
        print(name)
        info(f"running in the background (pid {pid}); `eve-platform status {name}`, "
             f"`eve-platform logs {name} --follow`")
        return
    info(f"pipeline {name}: {' -> '.join(spec.chain())} on this machine "
         f"({jobs[0].world_size} process(es) per stage); state in {lb.home()}")
    status = _run_foreground(record)
    _print_summary(name, spec, status)
    if fmt is not Format.table:
        output.emit(lb.load(name).to_json(), fmt)
    raise typer.Exit(0 if status.phase == "Succeeded" else EXIT_FAILED)


def _run_foreground(record: Any) -> Any:
    import signal

    from eve_operator.backends import local as lb

    tty = sys.stderr.isatty()
    last_line = {"t": 0.0}

    def on_event(event: Any) -> None:
        color = typer.colors.YELLOW if event.type == "Warning" else typer.colors.GREEN
        typer.secho(f"{time.strftime('%H:%M:%S')} {event.reason:<16} {event.message}", fg=color, err=True)

    def on_tick(rec: Any, job: Any) -> None:
        if job is None or time.monotonic() - last_line["t"] < (1.0 if tty else 10.0):
            return
        last_line["t"] = time.monotonic()
        line = lb.last_line(job.logs / "rank-0.log", "[eve-train]")
        if line:
            text = f"  {job.job.stage}: {line[:110]}"
            if tty:
                sys.stderr.write("\r\033[K" + text)
                sys.stderr.flush()
            else:
                info(text)

    runner = lb.LocalRunner(record, on_event=on_event, on_tick=on_tick)
    signal.signal(signal.SIGTERM, runner.cancel)
    try:
        return runner.run()
    except KeyboardInterrupt:
        info("\ninterrupted: stopped the stage job (it resumes from its last checkpoint on resubmit)")
        raise typer.Exit(130) from None
    finally:
        if tty:
            sys.stderr.write("\n")


def _print_summary(name: str, spec: Any, status: Any) -> None:
    from eve_operator.backends import local as lb

    print()
    output.table(["STAGE", "STATE", "ATTEMPT", "CHECKPOINT"],
                 [[s.name, s.state, s.attempt, s.checkpoint] for s in status.stages], "no stages")
    print(f"\npipeline {name}: {status.phase}" + (f" - {status.message}" if status.message else ""))
    uri = spec.mlflow.tracking_uri
    if uri and not uri.startswith("http"):
        print(f"MLflow UI:  mlflow ui --backend-store-uri {uri}   (then open http://127.0.0.1:5000)")
    elif uri:
        print(f"MLflow UI:  {uri}")
    print(f"logs:       eve-platform logs {name} --stage <stage>   ({lb.pipeline_dir(name)}/logs)")


# -- status, list, describe --------------------------------------------------------------


def _get(name: str, where: str, namespace: str | None) -> dict[str, Any]:
    if where == "local":
        from eve_operator.backends import local as lb

        record = lb.load(name)
        if record is None:
            fail(f"no local pipeline named {name!r}; `eve-platform list --local` shows them", EXIT_NOT_FOUND)
        return record.to_json()
    obj = _backend_call(_kube().get_pipeline, name, namespace)
    if obj is None:
        fail(f"no EvePipeline {name!r} in namespace {namespace or '(current)'}; `eve-platform list`",
             EXIT_NOT_FOUND)
    return obj


def _list(where: str, namespace: str | None) -> list[dict[str, Any]]:
    if where == "local":
        from eve_operator.backends import local as lb

        return [r.to_json() for r in lb.list_records()]
    return _backend_call(_kube().list_pipelines, namespace)


@app.command("list")
def list_(local: bool = LocalOpt, backend: str = BackendOpt, namespace: Optional[str] = NamespaceOpt,
          output_fmt: Format = OutputOpt) -> None:
    """List pipelines."""
    objs = _list(pick_backend(backend, local), namespace)
    if output_fmt is not Format.table:
        output.emit(objs, output_fmt)
        return
    output.table(output.PIPELINE_HEADERS, output.pipeline_rows(objs),
                 "No pipelines. Start one with `eve-platform submit stage=prealign`.")


@app.command()
def status(name: Optional[str] = typer.Argument(None, help="Pipeline; all when omitted."),
           local: bool = LocalOpt, backend: str = BackendOpt, namespace: Optional[str] = NamespaceOpt,
           output_fmt: Format = OutputOpt) -> None:
    """Phase and per-stage state of one pipeline (or all)."""
    where = pick_backend(backend, local)
    if name is None:
        list_(local, backend, namespace, output_fmt)
        return
    obj = _get(name, where, namespace)
    if output_fmt is not Format.table:
        output.emit(obj.get("status") or {}, output_fmt)
        return
    status_ = obj.get("status") or {}
    print(f"{name}: {status_.get('phase', 'Pending')}"
          + (f" (stage {status_['currentStage']})" if status_.get("currentStage") else ""))
    output.table(output.STAGE_HEADERS, output.stage_rows(obj), "no stages yet")
    if status_.get("phase") == "Failed":
        raise typer.Exit(EXIT_FAILED)


@app.command()
def describe(name: str, local: bool = LocalOpt, backend: str = BackendOpt,
             namespace: Optional[str] = NamespaceOpt, output_fmt: Format = OutputOpt) -> None:
    """Everything about a pipeline: spec, stages, checkpoints, MLflow runs, events."""
    obj = _get(name, pick_backend(backend, local), namespace)
    if output_fmt is not Format.table:
        output.emit(obj, output_fmt)
        return
    output.describe(obj)


# -- logs, cancel ------------------------------------------------------------------------------


@app.command()
def logs(name: str, stage: Optional[str] = typer.Option(None, "--stage", help="Default: the current stage."),
         rank: int = typer.Option(0, "--rank", help="Local: which rank's log."),
         follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines."),
         local: bool = LocalOpt, backend: str = BackendOpt, namespace: Optional[str] = NamespaceOpt) -> None:
    """Print the logs of a stage's job (rank 0 / the master pod by default)."""
    where = pick_backend(backend, local)
    obj = _get(name, where, namespace)
    status_ = obj.get("status") or {}
    stages = status_.get("stages") or []
    stage = stage or status_.get("currentStage") or next(
        (s["name"] for s in reversed(stages) if s.get("attempt")), None)
    entry = next((s for s in stages if s["name"] == stage), None)
    if entry is None or not entry.get("attempt"):
        fail(f"stage {stage!r} of {name} has not started; stages: "
             + ", ".join(f"{s['name']} ({s.get('state')})" for s in stages), EXIT_NOT_FOUND)
    if where == "local":
        from eve_operator.backends import local as lb

        path = lb.log_dir(name, stage, entry["attempt"]) / f"rank-{rank}.log"
        if not path.is_file():
            fail(f"no log at {path}", EXIT_NOT_FOUND)
        _print_file(path, follow, lambda: bool((lb.load(name).runner_alive)))
        return
    kube = _kube()
    pods = _backend_call(kube.stage_pods, name, namespace, stage)
    if not pods:
        fail(f"no pods for stage {stage} of {name} yet", EXIT_NOT_FOUND)
    for line in _backend_call(kube.pod_logs, pods[0], namespace, follow):
        print(line)


def _print_file(path: Path, follow: bool, alive: Any) -> None:
    with open(path, errors="replace") as f:
        while True:
            chunk = f.read()
            if chunk:
                sys.stdout.write(chunk)
                sys.stdout.flush()
            elif not follow or not alive():
                return
            else:
                time.sleep(0.5)


@app.command()
def cancel(name: str, local: bool = LocalOpt, backend: str = BackendOpt,
           namespace: Optional[str] = NamespaceOpt) -> None:
    """Stop a pipeline: its current job is stopped (checkpointing first) and it is marked Failed."""
    where = pick_backend(backend, local)
    if where == "kubernetes":
        _get(name, where, namespace)
        _backend_call(_kube().delete_pipeline, name, namespace)
        info(f"EvePipeline {name} deleted; its PyTorchJobs are deleted with it")
        return
    import signal

    from eve_operator.backends import local as lb

    record = lb.load(name)
    if record is None:
        fail(f"no local pipeline named {name!r}", EXIT_NOT_FOUND)
    if not record.runner_alive:
        info(f"pipeline {name} is not running (phase {record.status.phase})")
        return
    os.kill(record.runner_pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and lb.load(name).runner_alive:
        time.sleep(0.5)
    info(f"pipeline {name} cancelled")


# -- config ------------------------------------------------------------------------------------


@config_app.command("keys")
def config_keys_cmd() -> None:
    """Every key `submit` accepts: pipeline keys, then trainer keys."""
    from eve_trainer.config import config_keys

    from eve_operator.cli.submit_args import PIPELINE_KEYS

    print("# pipeline keys")
    for key, path in sorted(PIPELINE_KEYS.items()):
        print(f"{key:<20} -> spec.{path}")
    print("name                 pipeline name (default eve-<preset>)")
    print("\n# trainer keys (prefix with a stage to set it for one stage: sft.optim.lr=1e-5)")
    for key in config_keys():
        print(key)


@config_app.command("show")
def config_show(words: list[str] = typer.Argument(..., metavar="stage=<name> [key=value ...]"),
                output_fmt: Format = typer.Option(Format.yaml, "--output", "-o")) -> None:
    """The resolved trainer config of one stage (recipe + overrides)."""
    from eve_trainer.config import ConfigError, resolve

    pairs = [w for w in words if not w.startswith(("stage=", "preset="))]
    kv = dict(w.split("=", 1) for w in words if w.startswith(("stage=", "preset=")))
    if "stage" not in kv:
        fail("missing stage=<name>")
    try:
        cfg = resolve(kv["stage"], kv.get("preset", "tiny"), pairs)
    except ConfigError as err:
        fail(str(err))
    output.emit(cfg.model_dump(mode="json"), output_fmt if output_fmt is not Format.table else Format.yaml)


# -- demo ----------------------------------------------------------------------------------


@app.command()
def demo(name: str = typer.Option("", help="Pipeline name; default demo-<date>-<time>, a fresh run each time."),
         samples: int = typer.Option(96, help="Synthetic samples per dataset."),
         nproc: int = typer.Option(2, help="Processes (ranks) per stage.")) -> None:
    """Synthetic data + the tiny EVE pipeline (prealign -> pretrain -> sft) on this machine."""
    from eve_operator.backends import local as lb

    name = name or time.strftime("demo-%Y%m%d-%H%M%S")
    store = lb.default_output()
    captions, convs = f"{store}/datasets/synth-captions", f"{store}/datasets/synth-conversations"
    try:
        from eve_trainer.data import write_synthetic_dataset
    except ImportError as err:
        fail(f"the data pipeline is not installed ({err}); run `make demo`, which installs it")
    for url, kind in ((captions, "caption"), (convs, "conversation")):
        index = write_synthetic_dataset(url, num_samples=samples, kind=kind, seed=0)
        info(f"synthetic {kind} dataset: {url} ({getattr(index, 'num_samples', samples)} samples)")
    submit([f"stage=prealign", f"name={name}", f"data={captions}", f"sft.data={convs}",
            f"nproc_per_node={nproc}"], local=True, backend="", namespace=None, dry_run=False,
           detach=False, output_fmt=Format.table)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
