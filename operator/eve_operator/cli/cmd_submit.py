"""`eve-platform submit`: validate, plan and start a pipeline; follow it with --wait."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer

from eve_contract.exit_codes import cli_exit_code
from eve_contract.naming import default_pipeline_name, job_name
from eve_contract.topology import gpu_count
from eve_operator.cli import output
from eve_operator.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    BackendOpt,
    LocalOpt,
    NamespaceOpt,
    OutputOpt,
    _backend_call,
    _kube,
    app,
    backend_is_auto,
    check_namespace,
    fail,
    info,
    pick_backend,
)
from eve_operator.cli.output import Format

# -- submit ----------------------------------------------------------------------------------


@app.command(context_settings={"ignore_unknown_options": True})
def submit(
    words: Optional[list[str]] = typer.Argument(
        None, metavar="stage=<name> [key=value ...]",
        help="Pipeline keys (stage, until, name, preset, data, init_from, output, nodes, cpu, memory, ...) and "
             "trainer overrides (optim.lr=1e-4, sft.optim.lr=1e-5 for one stage); `eve-platform config keys` "
             "lists them all."),
    file: Optional[Path] = typer.Option(
        None, "--file", "-f", help="An EvePipeline manifest (or just its spec) to submit; key=value pairs "
                                   "on the command line go on top of it. Same validation as the pairs."),
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
    from eve_contract.naming import validate_pipeline_name
    from eve_operator.cli.submit_args import load_pipeline_file, parse_submit
    from eve_trainer.config import ConfigError

    file_name = file_namespace = base = None
    if file is not None:
        try:
            file_name, file_namespace, base = load_pipeline_file(file)
        except ConfigError as err:
            fail(str(err))
    where = pick_backend(backend, local)
    try:
        name, spec = parse_submit(words or [], _local_defaults() if where == "local" else {}, base)
        if name is None and file_name is not None:
            name = validate_pipeline_name(str(file_name))
    except (ConfigError, ValueError) as err:
        fail(str(err))
    name = name or default_pipeline_name(spec.preset)
    namespace = namespace or file_namespace
    if namespace is not None:
        check_namespace(namespace)
    if wait and detach:
        fail("--wait and --detach contradict each other: pick one")
    if where == "local" and dry_run and backend_is_auto(backend, local) and (why := _needs_a_cluster(spec)):
        # a dry run renders what it can: the cluster objects, without a kube context
        try:
            spec = parse_submit(words or [], {}, base)[1]
        except (ConfigError, ValueError) as err:
            fail(str(err))
        info(f"dry run: {why[0]} needs a cluster and there is no kube context here, so this renders the "
             "Kubernetes objects (as --backend kubernetes does); submitting them needs a kube context")
        where = "kubernetes"
    from eve_operator.cli.training_block import show_for_submit

    # what each stage will train (-o table); exit 2 for a missing teacher or a tokenizer that does not fit
    show_for_submit(name, spec, quiet=output_fmt is not Format.table)
    if where == "kubernetes":
        _submit_kubernetes(name, namespace, spec, dry_run, output_fmt, wait)
    else:
        if why := _needs_a_cluster(spec):
            fail(why[1])
        _submit_local(name, spec, dry_run, detach, output_fmt)


def _local_defaults() -> dict[str, Any]:
    from eve_operator.backends import local as lb

    return {"output": lb.default_output(), "mlflow": {"tracking_uri": lb.default_tracking_uri()},
            "resources": {"gpus_per_node": gpu_count(), "gpu_product": None}}


def _needs_a_cluster(spec: Any) -> tuple[str, str] | None:
    """(what, the full message) when this pipeline cannot run on this one machine, else None."""
    gpus = gpu_count()
    for stage in spec.chain():
        res = spec.resources_for(stage)
        where = f"stage {stage}: " if spec.stage(stage).resources is not None else ""
        if res.nodes > 1:
            return (f"{where}nodes={res.nodes}",
                    f"{where}nodes={res.nodes} needs a cluster; the local backend runs on this one machine. "
                    "Submit with --backend kubernetes (a kube context pointing at a cluster with eve-platform "
                    "installed), or set nodes=1")
        if res.gpus_per_node > gpus:
            return (f"{where}gpus_per_node={res.gpus_per_node}",
                    f"{where}gpus_per_node={res.gpus_per_node}, but this machine has {gpus} GPU(s). Submit with "
                    f"--backend kubernetes to run on a cluster, or set gpus_per_node={gpus}")
    return None


def _export_note(name: str, spec: Any, *, missing: bool = False) -> str | None:
    """When the first stage starts from this pipeline's previous stage's export (no init_from):
    the sentence saying that this export must already exist and how to make it."""
    first = spec.chain()[0]
    previous = spec.previous_stage(first)
    if spec.init_from or previous is None:
        return None
    state = "and there is none" if missing else "which must already exist"
    return (f"stage {first} starts from {spec.planned_init_from(name, first)}, the export of stage {previous} of "
            f"pipeline {name}, {state}: run `eve-platform submit stage={previous} name={name} ...` first (it "
            f"chains on to {first}), or set init_from=<export URL>")


def pipeline_exit_code(status: dict[str, Any]) -> int:
    """0 succeeded; else from the status's failure class (2 permanent: the user must fix the spec,
    config or data; 1 otherwise). The message is never parsed."""
    if status.get("phase") == "Succeeded":
        return 0
    return cli_exit_code((status.get("failure") or {}).get("class"))


def _submit_kubernetes(name: str, namespace: str | None, spec: Any, dry_run: bool, fmt: Format,
                       wait: bool = False) -> None:
    kube = _kube()
    # every stage's job, built as the operator will build it: what a pod would refuse, submit refuses
    jobs = _backend_call(kube.render_jobs, name, namespace, spec)
    if note := _export_note(name, spec):
        info(note)
    if dry_run:
        info("dry run: every stage's job, each starting from the previous stage's export; fields the "
             "pipeline omits (image, tracking, scheduler, ...) take the operator's defaults on the cluster")
        info(f"checked against {_backend_call(kube.check_admission, name, namespace, spec)}")
        docs = [_backend_call(kube.render_pipeline, name, namespace, spec), *jobs]
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
        return EXIT_INTERRUPTED


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
    from eve_operator.backends import local as lb
    from eve_operator.jobspec import build_job_spec
    from eve_operator.pipeline import SubmitJob
    from eve_trainer.config import ConfigError

    existing = lb.load(name)
    if existing is not None and existing.runner_alive:
        fail(f"pipeline {name} is already running (pid {existing.runner_pid}); "
             f"watch it with `eve-platform status {name}` or choose another name=")
    # Validate every stage's trainer config before anything starts.
    try:
        jobs = [build_job_spec(name, spec, SubmitJob(stage, 1, job_name(name, stage, 1),
                                                     spec.planned_init_from(name, stage), None))
                for stage in spec.chain()]
    except (ConfigError, ValueError) as err:
        fail(str(err))
    if note := _export_note(name, spec):
        if dry_run:
            info(note)
        else:
            _check_export_exists(name, spec, note)
    if dry_run:
        from eve_contract import resolved_config

        plan = [{"name": j.name, "stage": j.stage, "processes": j.world_size,
                 "init_from": spec.planned_init_from(name, j.stage),
                 "command": ["python", "-m", "eve_trainer", *j.command[1:]],
                 "env": {k: v for k, v in j.env.items() if k != resolved_config.ENV_VAR},
                 # what every rank reads from EVE_TRAIN_CONFIG (shown decoded)
                 "config": resolved_config.loads(j.env[resolved_config.ENV_VAR])[1]} for j in jobs]
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


def _check_export_exists(name: str, spec: Any, note: str) -> None:
    """The local backend reads the store: refuse a start from an export that is not there."""
    from eve_contract.layout import stage_complete
    from eve_contract.storage import StorageError, open_store

    previous = spec.previous_stage(spec.chain()[0])
    try:
        store = open_store(spec.output, endpoint_url=spec.s3.endpoint_url, region=spec.s3.region)
        found = stage_complete(store, name, previous, deep=False)
    except (StorageError, OSError) as err:
        info(f"could not check the {previous} export ({err}); {note}")
        return
    if found is None:
        fail(_export_note(name, spec, missing=True) or note)


def _run_foreground(record: Any) -> Any:
    import signal

    from eve_contract.layout import read_heartbeats
    from eve_operator.backends import local as lb
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
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        if tty:
            sys.stderr.write("\n")


def _print_summary(name: str, spec: Any, status: Any) -> None:
    from eve_operator.backends import local as lb

    print()
    output.table(*output.summary_table(status.stages), "no stages")
    print(f"\npipeline {name}: {status.phase}" + (f" - {status.message}" if status.message else ""))
    uri = spec.mlflow.tracking_uri
    if uri:
        print(f"MLflow UI:  {_mlflow_ui_hint(uri, spec.mlflow.experiment)}")
    print(f"logs:       eve-platform logs {name} --stage <stage>   ({lb.pipeline_dir(name)}/logs)")


def _mlflow_ui_hint(uri: str, experiment: str) -> str:
    """How to open this pipeline's runs: a link to the model-training view (MLflow 3's UI opens
    on GenAI traces otherwise), after `mlflow ui` for a local store."""
    from eve_contract.tracking_names import ui_runs_url
    from eve_operator.tracking import experiment_id

    local = not uri.startswith("http")
    base = "http://127.0.0.1:5000" if local else uri
    try:
        found = experiment_id(uri, experiment, create=False)
    except Exception:  # noqa: BLE001 - a hint; the store may be gone
        found = None
    link = ui_runs_url(base, found) if found else base
    return f"mlflow ui --backend-store-uri {uri}   (then open {link})" if local else link
