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
    wait: bool = typer.Option(False, "--wait", "-w",
                              help="Follow the pipeline to its end with a progress line per stage and exit with "
                                   "its exit code (0 succeeded, 1 failed, 2 bad config or data). Local runs "
                                   "wait unless --detach."),
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
    if wait and detach:
        fail("--wait and --detach contradict each other: pick one")
    if where == "kubernetes":
        _submit_kubernetes(name, namespace, spec, dry_run, output_fmt, wait)
    else:
        _check_fits_this_machine(spec)
        _submit_local(name, spec, dry_run, detach, output_fmt)


def _check_fits_this_machine(spec: Any) -> None:
    """The local backend runs one machine: more nodes or GPUs than it has need a cluster."""
    gpus = _local_gpus()
    for stage in spec.chain():
        res = spec.resources_for(stage)
        where = f"stage {stage}: " if spec.stage(stage).resources is not None else ""
        if res.nodes > 1:
            fail(f"{where}nodes={res.nodes} needs a cluster; the local backend runs on this one machine. "
                 "Submit with --backend kubernetes (a kube context pointing at a cluster with eve-platform "
                 "installed), or set nodes=1")
        if res.gpus_per_node > gpus:
            fail(f"{where}gpus_per_node={res.gpus_per_node}, but this machine has {gpus} GPU(s). Submit with "
                 f"--backend kubernetes to run on a cluster, or set gpus_per_node={gpus}")


def pipeline_exit_code(status: dict[str, Any]) -> int:
    """0 succeeded; 2 failed for a reason the user must fix (spec, config, data); 1 otherwise."""
    if status.get("phase") == "Succeeded":
        return 0
    message = status.get("message") or ""
    permanent = message.startswith("invalid ") or "exited with 2" in message or "exited with code 2" in message
    return EXIT_USAGE if permanent else EXIT_FAILED


def _local_gpus() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    return len(list(Path("/dev").glob("nvidia[0-9]*")))


def _submit_kubernetes(name: str, namespace: str | None, spec: Any, dry_run: bool, fmt: Format,
                       wait: bool = False) -> None:
    kube = _kube()
    if dry_run:
        info("dry run: every stage's job, each starting from the previous stage's export; fields the "
             "pipeline omits (image, tracking, scheduler, ...) take the operator's defaults on the cluster")
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
         + ("waiting for it to finish (Ctrl-C stops waiting, not the pipeline)" if wait
            else f"watch it with `eve-platform status {name}`, or submit with --wait"))
    if wait:
        raise typer.Exit(_wait_kubernetes(name, obj["metadata"].get("namespace") or namespace))


#: Seconds between polls of `submit --wait` on a cluster (status and heartbeats).
WAIT_POLL_S = float(os.environ.get("EVE_PLATFORM_WAIT_POLL_S", "2"))


def _wait_kubernetes(name: str, namespace: str | None) -> int:
    """Follow an EvePipeline: a line per stage change, a progress line per running stage."""
    from eve_operator.cli import progress

    kube = _kube()
    follower = _Follower()
    try:
        while True:
            obj = _backend_call(kube.get_pipeline, name, namespace)
            if obj is None:
                fail(f"EvePipeline {name} was deleted while waiting", EXIT_NOT_FOUND)
            status = obj.get("status") or {}
            follower.stages(status.get("stages") or [])
            if status.get("phase") in ("Succeeded", "Failed"):
                follower.done()
                code = pipeline_exit_code(status)
                print(f"pipeline {name}: {status['phase']}" + (f" - {status['message']}" if status.get("message")
                                                                else ""))
                output.table(output.STAGE_HEADERS, output.stage_rows(obj), "no stages")
                return code
            for stage, now in progress.live(obj).items():
                follower.progress(stage, now)
            time.sleep(WAIT_POLL_S)
    except KeyboardInterrupt:
        follower.done()
        info(f"stopped waiting; the pipeline goes on (`eve-platform status {name}`)")
        return 130


class _Follower:
    """Prints what changed: stage transitions always, progress at most every few seconds."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.seen: dict[str, tuple[Any, ...]] = {}
        self.last_progress: dict[str, tuple[float, str]] = {}
        self.open_line = False

    def _print(self, text: str, *, transient: bool = False) -> None:
        if self.tty and transient:
            sys.stderr.write("\r\033[K" + text)
            sys.stderr.flush()
            self.open_line = True
            return
        self.done()
        info(text)

    def done(self) -> None:
        if self.open_line:
            sys.stderr.write("\n")
            self.open_line = False

    def stages(self, stages: list[dict[str, Any]]) -> None:
        for s in stages:
            key = (s.get("state"), s.get("attempt"), s.get("message"))
            if self.seen.get(s["name"]) != key and s.get("state") != "Pending":
                self.seen[s["name"]] = key
                text = f"{time.strftime('%H:%M:%S')} {s['name']}: {s.get('state')}"
                if (s.get("attempt") or 0) > 1:
                    text += f" (attempt {s['attempt']})"
                if s.get("message"):
                    text += f" - {s['message']}"
                if s.get("state") == "Succeeded" and s.get("checkpoint"):
                    text += f" -> {s['checkpoint']}"
                self._print(text)

    def progress(self, stage: str, now: dict[str, Any]) -> None:
        from eve_operator.cli.progress import short

        text = short(now.get("progress"))
        if now.get("mlflowRunId"):
            text += f" (MLflow run {now['mlflowRunId']})"
        if not text:
            return
        last_t, last_text = self.last_progress.get(stage, (0.0, ""))
        if text == last_text or time.monotonic() - last_t < (1.0 if self.tty else 10.0):
            return
        self.last_progress[stage] = (time.monotonic(), text)
        self._print(f"  {stage}: {text}", transient=True)


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
        jobs = [build_job_spec(name, spec, SubmitJob(stage, 1, f"{name}-{stage}",
                                                     spec.planned_init_from(name, stage), None))
                for stage in spec.chain()]
    except (ConfigError, ValueError) as err:
        fail(str(err))
    if dry_run:
        plan = [{"name": j.name, "stage": j.stage, "processes": j.world_size,
                 "init_from": spec.planned_init_from(name, j.stage),
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
    raise typer.Exit(pipeline_exit_code(status.model_dump(by_alias=True)))


def _run_foreground(record: Any) -> Any:
    import signal

    from eve_operator.backends import local as lb

    from eve_trainer.layout import read_heartbeats

    from eve_operator.cli import progress

    tty = sys.stderr.isatty()
    last_line: dict[str, Any] = {"t": 0.0}

    def on_event(event: Any) -> None:
        color = typer.colors.YELLOW if event.type == "Warning" else typer.colors.GREEN
        typer.secho(f"{time.strftime('%H:%M:%S')} {event.reason:<16} {event.message}", fg=color, err=True)

    def on_tick(rec: Any, job: Any) -> None:
        if job is None or time.monotonic() - last_line["t"] < (1.0 if tty else 10.0):
            return
        last_line["t"] = time.monotonic()
        try:  # the trainer's heartbeats; its last log line when there are none (yet)
            now = progress.summarize(read_heartbeats(runner.store, rec.name, job.job.stage), job.job.attempt)
        except Exception:  # noqa: BLE001 - progress display never stops the run
            now = None
        line = progress.short(now) or lb.last_line(job.logs / "rank-0.log", "[eve-train]")
        if line and line != last_line.get("text"):
            last_line["text"] = line
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
    live = _live(obj)
    if output_fmt is not Format.table:
        output.emit(_with_live(obj.get("status") or {}, live), output_fmt)
        return
    status_ = obj.get("status") or {}
    print(f"{name}: {status_.get('phase', 'Pending')}"
          + (f" (stage {status_['currentStage']})" if status_.get("currentStage") else ""))
    output.table(output.STAGE_HEADERS, output.stage_rows(obj, live), "no stages yet")
    if status_.get("phase") == "Failed":
        raise typer.Exit(EXIT_FAILED)


@app.command()
def describe(name: str, local: bool = LocalOpt, backend: str = BackendOpt,
             namespace: Optional[str] = NamespaceOpt, output_fmt: Format = OutputOpt) -> None:
    """Everything about a pipeline: spec, stages, checkpoints, MLflow runs, events."""
    obj = _get(name, pick_backend(backend, local), namespace)
    live = _live(obj)
    if output_fmt is not Format.table:
        output.emit({**obj, "status": _with_live(obj.get("status") or {}, live)}, output_fmt)
        return
    output.describe(obj, live)


def _live(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A running stage's heartbeat progress and MLflow run (best effort; see cli.progress)."""
    from eve_operator.cli import progress

    if (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return {}
    return progress.live(obj)


def _with_live(status: dict[str, Any], live: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if not live:
        return status
    return {**status, "live": {stage: {"progress": now["progress"].to_json() if now.get("progress") else None,
                                       "mlflowRunId": now.get("mlflowRunId")} for stage, now in live.items()}}


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
           detach=False, wait=False, output_fmt=Format.table)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
