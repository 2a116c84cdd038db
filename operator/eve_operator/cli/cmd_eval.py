"""`eve-platform eval <export URL | models:/name@alias> bench=pope,textvqa pope.data=<url> ...`.

Scores a stage export on EVE's benchmarks (docs/eval.md). On this machine (default without a kube
context, or --local) it runs one `eve-eval` process (nproc_per_node=1) or N local ranks started
by the node launcher; with --backend kubernetes it runs as a PyTorchJob (or TrainJob, job_api=) built
by the same job machinery as a stage: a JobSpec whose command is `eve-eval ...`, each pod running
`eve-launch -- eve-eval ...`. Either way it ends with each bench's scores (read back from
`<output>/<bench>/scores.json`).

torch-free: the CLI reads words, bench names and scores with the torch-free evaluation modules
(args, benches, paths); the ranks are processes of their own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any, Optional

import typer

from eve_contract.topology import free_port
from eve_operator.cli import output
from eve_operator.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_USER,
    BackendOpt,
    LocalOpt,
    NamespaceOpt,
    OutputOpt,
    app,
    fail,
    info,
    pick_backend,
)
from eve_operator.cli.output import Format

#: Keys eve-eval takes, passed to every rank unchanged.
EVAL_KEYS = ("bench", "output", "max_new_tokens", "batch_size", "dtype", "mlflow", "model_id", "region",
             "endpoint_url", "tracking_uri")
#: Keys that shape the job (PipelineSpec fields, as `submit` reads them).
JOB_KEYS = ("name", "image", "credentials_secret", "nodes", "gpus_per_node", "nproc_per_node", "gpu_product",
            "gang_scheduler", "queue", "priority_class", "job_api", "jobApi")
LABEL_EVAL = "eve-platform.io/eval"
WAIT_POLL_S = float(os.environ.get("EVE_PLATFORM_WAIT_POLL_S", "2"))


def split_words(words: list[str]) -> tuple[str, list[str], dict[str, str]]:
    """(model, eve-eval words, job keys); a mistake is a ValueError naming the key."""
    from eve_trainer.evaluation.benches import BENCHES

    model = [w for w in words if "=" not in w or w.startswith("models:/")]
    if len(model) != 1:
        raise ValueError("expected one model (an export URL or models:/<name>@<alias>) and key=value pairs, "
                         f"got {model or 'none'}; e.g. eve-platform eval s3://b/eve/p/sft/export bench=pope "
                         "pope.data=s3://b/bench/pope")
    eval_words, job = [], {}
    for word in words:
        if word == model[0]:
            continue
        key, value = word.split("=", 1)
        if key in EVAL_KEYS or (key.endswith(".data") and key[:-5] in BENCHES):
            eval_words.append(word)
        elif key in JOB_KEYS:
            job[key] = value
        else:
            raise ValueError(f"unknown key {key!r}; allowed: {', '.join(EVAL_KEYS + JOB_KEYS)} and "
                             f"<bench>.data (benches: {', '.join(BENCHES)})")
    return model[0], eval_words, job


@app.command("eval", context_settings={"ignore_unknown_options": True})
def eval_(words: list[str] = typer.Argument(..., metavar="<export URL | models:/name@alias> bench=<a,b> "
                                                          "<bench>.data=<url> [key=value ...]"),
          local: bool = LocalOpt, backend: str = BackendOpt, namespace: Optional[str] = NamespaceOpt,
          dry_run: bool = typer.Option(False, "--dry-run", help="Kubernetes: print the job, create nothing."),
          output_fmt: Format = OutputOpt) -> None:
    """Score an export on EVE's benchmarks (pope, textvqa, gqa, scienceqa, mme, vqav2, vizwiz, mmbench,
    mmbench_cn, seed, mmvet): answers, scores and submission files in <output>/<bench>/, scores in MLflow."""
    from eve_trainer.evaluation.args import UsageError, parse

    try:
        model, eval_words, job = split_words(words)
        args = parse([model, *eval_words])
    except (ValueError, UsageError) as err:
        fail(str(err))
    where = pick_backend(backend, local)
    if where == "local":
        if set(job) - {"nproc_per_node", "name"}:
            fail(f"{', '.join(sorted(set(job) - {'nproc_per_node', 'name'}))}: only with --backend kubernetes; "
                 "on this machine only nproc_per_node= sets the ranks")
        code = _run_local(model, eval_words, args, int(job.get("nproc_per_node", "1")))
    else:
        code = _run_kubernetes(model, eval_words, args, job, namespace, dry_run)
        if dry_run:
            return
    if code != 0:
        raise typer.Exit(code)
    _print_scores(args.output, args.benches, args.options.get("endpoint_url"), output_fmt)


# -- on this machine -------------------------------------------------------------------------------


def _local_tracking_uri() -> str | None:
    """The local backend's MLflow store when it exists (its exports' stage runs live there)."""
    from eve_operator.backends import local as lb

    return lb.default_tracking_uri() if (lb.home() / "mlflow.db").is_file() else None


def _run_local(model: str, eval_words: list[str], args: Any, nproc: int) -> int:
    if nproc < 1:
        fail(f"nproc_per_node={nproc}: must be >= 1")
    if not any(w.startswith("tracking_uri=") for w in eval_words) and not os.environ.get("MLFLOW_TRACKING_URI"):
        uri = _local_tracking_uri()
        if uri:
            eval_words = [*eval_words, f"tracking_uri={uri}"]
            args.options["tracking_uri"] = uri
    info(f"evaluating {model} on {', '.join(args.benches)} with {nproc} local rank(s); "
         f"answers and scores go to {args.output}")
    # the ranks are processes of their own (eve-eval, through the node launcher for several), so
    # this CLI never loads torch; their progress lines come to this terminal
    command = [sys.executable, "-m", "eve_trainer.evaluation", model, *eval_words]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PET_NNODES", "PET_NODE_RANK", "PET_NPROC_PER_NODE"):
        env.pop(var, None)
    if nproc > 1:
        env.update(PET_NNODES="1", PET_NODE_RANK="0", PET_NPROC_PER_NODE=str(nproc), PET_MASTER_ADDR="127.0.0.1",
                   PET_MASTER_PORT=str(free_port()))
        command = [sys.executable, "-m", "eve_trainer.launch", "--", *command]
    proc = subprocess.Popen(command, env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
        return EXIT_INTERRUPTED


# -- on the cluster ----------------------------------------------------------------------------------


def eval_job_spec(name: str, model: str, eval_words: list[str], job_keys: dict[str, str], output_url: str) -> Any:
    """The JobSpec of an evaluation: the pipeline's resources, image, S3 and MLflow wiring, read by
    `submit`'s own parser, and `eve-eval ...` as the rank command."""
    from eve_contract.naming import LABEL_PIPELINE, LABEL_STAGE
    from eve_operator.cli.submit_args import parse_submit
    from eve_operator.jobspec import evaluator_job

    values = dict(w.split("=", 1) for w in eval_words)
    words = ["stage=sft", f"output={output_url}", *(f"{k}={v}" for k, v in job_keys.items() if k != "name")]
    for key in ("endpoint_url", "tracking_uri"):
        if key in values:
            words.append(f"{key}={values[key]}")
    _, spec = parse_submit(words)
    return spec, evaluator_job(
        spec, name=name, pipeline=name, stage="eval", attempt=1, words=[model, *eval_words],
        env={"EVE_EVAL": name}, labels={LABEL_PIPELINE: name, LABEL_STAGE: "eval", LABEL_EVAL: name},
        resources=spec.resources, pod_template=spec.pod_template)


def _job_api(spec: Any) -> Any:
    from eve_operator.jobapi import JOB_APIS
    from eve_operator.trainjob import job_api_of

    return JOB_APIS[job_api_of(spec, os.environ)]


def _run_kubernetes(model: str, eval_words: list[str], args: Any, job_keys: dict[str, str],
                    namespace: str | None, dry_run: bool) -> int:
    from eve_contract.naming import validate_pipeline_name as validate_name
    from eve_operator.backends.kubernetes import KubeConfigError, _apis, current_namespace
    from eve_trainer.config import ConfigError

    if not args.output.startswith("s3://"):
        fail(f"output={args.output}: a cluster job writes to the object store; give an s3:// output")
    for bench, url in args.benches.items():
        if not url.startswith("s3://"):
            fail(f"{bench}.data={url}: pods read bench data from the object store; give an s3:// URL")
    name = job_keys.get("name") or time.strftime("eval-%Y%m%d-%H%M%S")
    try:
        validate_name(name)
        spec, job = eval_job_spec(name, model, eval_words, job_keys, args.output)
        api = _job_api(spec)
        ns = current_namespace(namespace)
        body = api.body(job, ns, None)
    except (ConfigError, ValueError) as err:
        fail(str(err))
    if dry_run:
        import yaml

        sys.stdout.write(yaml.safe_dump(body, sort_keys=False))
        return 0
    import kubernetes

    try:
        custom, core = _apis()
        custom.create_namespaced_custom_object(api.group, api.version, ns, api.plural, body)
    except KubeConfigError as err:
        fail(str(err), 4)
    except kubernetes.client.ApiException as err:
        if err.status == 409:
            fail(f"{body['kind']} {ns}/{body['metadata']['name']} already exists: pick another name=")
        fail(f"cannot create {body['kind']} {ns}/{body['metadata']['name']}: {err.status} {err.reason}", 4)
    info(f"{body['kind']} {ns}/{body['metadata']['name']} created: {job.nodes} pod(s) x {job.procs_per_node} "
         f"rank(s) evaluate {model} on {', '.join(args.benches)}; waiting for it (Ctrl-C stops waiting, not the job)")
    return _wait_job(api, custom, core, ns, body["metadata"]["name"])


def _wait_job(api: Any, custom: Any, core: Any, ns: str, obj_name: str) -> int:
    """Follow the job: its state on each change, the newest `[eve-eval]` line of its first pod."""
    import kubernetes

    last_state, last_line = "", ""
    said: dict[str, str] = {}
    try:
        while True:
            try:
                obj = custom.get_namespaced_custom_object(api.group, api.version, ns, api.plural, obj_name)
            except kubernetes.client.ApiException as err:
                if err.status == 404:
                    fail(f"{obj_name} was deleted while waiting", EXIT_NOT_FOUND)
                raise
            report = api.report(obj)
            if report.state != last_state:
                info(f"{obj_name}: {report.state}" + (f" ({report.message})" if report.message else ""))
                last_state = report.state
            pods = _pods(api, core, ns, obj_name)
            for pod, why in _waiting(api, pods).items():
                if why != said.get(pod):
                    info(f"{obj_name}: pod {pod} waits: {why}")
                    said[pod] = why
            line = _last_eval_line(api, core, ns, pods[:1])
            if line and line != last_line:
                info(line)
                last_line = line
            if report.state in ("Succeeded", "Failed"):
                return 0 if report.state == "Succeeded" else _failure_code(api, pods)
            time.sleep(WAIT_POLL_S)
    except KeyboardInterrupt:
        info(f"stopped waiting; {obj_name} goes on (kubectl get {api.plural} {obj_name} -n {ns})")
        return EXIT_INTERRUPTED


def _pods(api: Any, core: Any, ns: str, obj_name: str) -> list[dict[str, Any]]:
    raw = core.list_namespaced_pod(ns, label_selector=f"{api.pod_label}={obj_name}", _preload_content=False)
    pods = json.loads(raw.data)["items"]
    return sorted(pods, key=lambda p: p["metadata"]["name"])


def _waiting(api: Any, pods: list[dict[str, Any]]) -> dict[str, str]:
    """Pods whose container cannot start, with the reason (a missing Secret, an image pull error)."""
    out = {}
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (status.get("state") or {}).get("waiting") or {}
            if status.get("name") == api.container and waiting.get("reason") not in (None, "ContainerCreating",
                                                                                        "PodInitializing"):
                out[pod["metadata"]["name"]] = f"{waiting['reason']}: {waiting.get('message', '')}".strip(": ")
    return out


def _last_eval_line(api: Any, core: Any, ns: str, pods: list[dict[str, Any]]) -> str:
    for pod in pods:
        try:
            log = core.read_namespaced_pod_log(pod["metadata"]["name"], ns, container=api.container, tail_lines=50)
        except Exception:  # noqa: BLE001 - not started yet, or gone
            return ""
        lines = [line for line in (log or "").splitlines() if "[eve-eval]" in line or "eve-eval: error" in line]
        return lines[-1].strip() if lines else ""
    return ""


def _failure_code(api: Any, pods: list[dict[str, Any]]) -> int:
    """2 when a pod's container exited 2 (the user's to fix), else 1."""
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            if status.get("name") == api.container and \
                    ((status.get("state") or {}).get("terminated") or {}).get("exitCode") == 2:
                return EXIT_USER
    return EXIT_FAILED


# -- results -------------------------------------------------------------------------------------------


def read_scores(output_url: str, benches: list[str], endpoint_url: str | None = None) -> dict[str, dict[str, Any]]:
    """{bench: scores.json} for the benches that have one."""
    from eve_contract.storage import open_store
    from eve_trainer.evaluation import paths

    store = open_store(output_url, endpoint_url=endpoint_url)
    found = {}
    for bench in benches:
        try:
            found[bench] = json.loads(store.get_bytes(paths.scores_key(bench)))
        except FileNotFoundError:
            continue
    return found


def headline_rows(records: dict[str, dict[str, Any]]) -> list[list[Any]]:
    """One row per bench: its headline metric, then the other top-level ones (no per-split ones)."""
    from eve_trainer.evaluation.benches import BENCHES

    rows = []
    for bench, record in records.items():
        scores = record.get("scores") or {}
        head = BENCHES[bench].headline if bench in BENCHES else next(iter(scores), "")
        others = ", ".join(f"{k}={v:.4g}" for k, v in scores.items() if "/" not in k and k not in (head, "n"))
        rows.append([bench, head, f"{scores.get(head, float('nan')):.4g}", int(scores.get("n", 0)), others])
    return rows


def _print_scores(output_url: str, benches: dict[str, str], endpoint_url: str | None, fmt: Format) -> None:
    records = read_scores(output_url, list(benches), endpoint_url)
    if fmt is not Format.table:
        output.emit(records, fmt)
        return
    output.table(["BENCH", "METRIC", "VALUE", "N", "OTHERS"], headline_rows(records), "no scores written")
    info(f"answers, scores and submission files: {output_url}/<bench>/")


def pipeline_eval_rows(obj: dict[str, Any]) -> list[list[Any]]:
    """For `status`/`describe`: the scores written beside each stage's export
    (`<output>/<pipeline>/<stage>/eval/<bench>/scores.json`). Best effort: [] when unreadable."""
    from eve_contract import layout
    from eve_contract.storage import open_store
    from eve_trainer.evaluation import paths

    spec = obj.get("spec") or {}
    out = spec.get("output")
    if not out:
        return []
    rows = []
    try:
        store = open_store(out, endpoint_url=(spec.get("s3") or {}).get("endpointUrl"))
        name = obj["metadata"]["name"]
        # only a finished stage has an export to evaluate; one listing per such stage
        for stage in [s for s in (obj.get("status") or {}).get("stages") or [] if s.get("state") == "Succeeded"]:
            prefix = paths.default_output(layout.export_prefix(name, stage["name"]))
            for key in store.list(prefix):
                if not key.endswith("/" + paths.SCORES):
                    continue
                record = json.loads(store.get_bytes(key))
                bench = record.get("bench", key.rsplit("/", 2)[-2])
                for row in headline_rows({bench: record}):
                    rows.append([stage["name"], *row[:4]])
    except Exception:  # noqa: BLE001 - the store may be unreachable from here (no credentials)
        return rows
    return rows


EVAL_HEADERS = ["STAGE", "BENCH", "METRIC", "VALUE", "N"]
