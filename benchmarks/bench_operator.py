"""Operator benchmark: N pipelines at once against kmock's emulator and a real S3 server.

    .venv/bin/python benchmarks/bench_operator.py [--pipelines 100] [--json out.json]

Measures, at the emulated API server (one clock for both ends):
- stage transition latency: from the PATCH that marks a stage's job Succeeded (its
  stage-complete manifest is already in S3) to the POST that creates the next stage's
  PyTorchJob; every pipeline finishes its stage at the same moment (a burst);
- API requests the operator makes per transition and per pipeline creation (the
  benchmark's own requests carry another User-Agent and are not counted).
The operator runs in this process (KopfRunner), the training-operator's part is played
by patching job status, as in tests/operator.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BENCH_AGENT = "eve-bench"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pipelines", type=int, default=100)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    import kopf.testing
    import kubernetes
    from support.kube_emulator import Emulator
    from support.operator_harness import Cluster, base_spec, wait_for, write_export  # the tests' harness
    from support.services import start_seaweedfs, stop

    from eve_operator import handlers, metrics

    work = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    s3 = start_seaweedfs(work / "seaweedfs")
    os.environ.update(s3.env())
    bucket = s3.make_bucket("bench")
    output = f"s3://{bucket}/eve"
    emulator = Emulator().start()
    os.environ["KUBECONFIG"] = str(emulator.write_kubeconfig(work / "kubeconfig"))
    # transitions must come from events, not the safety-net timer
    handlers.configure(handlers.Config(resync_s=60.0, metrics_port=0))

    cfg = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(os.environ["KUBECONFIG"], client_configuration=cfg)
    api = kubernetes.client.ApiClient(cfg)
    api.user_agent = BENCH_AGENT
    cluster = Cluster(emulator, Path(os.environ["KUBECONFIG"]))
    cluster.api, cluster.custom = api, kubernetes.client.CustomObjectsApi(api)
    cluster.core = kubernetes.client.CoreV1Api(api)

    names = [f"bench-{i:03d}" for i in range(args.pipelines)]
    chain = ["prealign", "pretrain", "sft"]
    spec = base_spec(output)
    log = emulator.kmock.log  # type: ignore[union-attr]

    def operator_requests(since: float, until: float) -> Counter[str]:
        """The operator's requests in a window, by verb and resource (watch streams excluded)."""
        return Counter(f"{r.action.lower()} {_kind(r.path)}" for r in list(log)
                       if since <= r.t <= until and r.agent != BENCH_AGENT and r.action != "WATCH")

    def created(stage: str) -> int:
        """Jobs of `stage` created so far, read from the emulator's log (polling the API would
        compete with the operator for this process's GIL)."""
        time.sleep(0.05)
        return sum(1 for r in list(log) if r.action == "CREATE" and r.name.endswith(f"-{stage}")
                   and r.path.endswith("/pytorchjobs"))

    results: dict[str, object] = {"pipelines": args.pipelines}
    pool = ThreadPoolExecutor(16)
    try:
        with kopf.testing.KopfRunner(["run", "--standalone", "--all-namespaces", "-m", "eve_operator.handlers"],
                                     timeout=60):
            time.sleep(1.0)
            t0 = time.monotonic()
            list(pool.map(lambda n: cluster.create_pipeline(n, spec), names))
            wait_for(lambda: created("prealign") == len(names), timeout=120, what="every first job")
            time.sleep(1.0)  # let kopf post the Events of that burst
            creation = operator_requests(t0, time.monotonic())
            results["create_to_first_job_s"] = round(time.monotonic() - t0 - 1.0, 3)
            results["requests_per_pipeline_creation"] = round(sum(creation.values()) / len(names), 2)
            results["requests_creation_breakdown"] = dict(creation)

            latencies: list[float] = []
            per_transition: list[float] = []
            for stage, nxt in zip(chain, chain[1:], strict=False):
                list(pool.map(lambda n: write_export(output, n, stage, work), names))
                start = time.monotonic()
                list(pool.map(lambda n: cluster.set_condition(f"{n}-{stage}", "Succeeded"), names))
                wait_for(lambda: created(nxt) == len(names), timeout=120, what=f"every {nxt} job")
                time.sleep(1.0)
                window = operator_requests(start, time.monotonic())
                per_transition.append(sum(window.values()) / len(names))
                results[f"requests_breakdown_{stage}_to_{nxt}"] = dict(window)
                done_at = {r.name: r.t for r in list(log) if r.agent == BENCH_AGENT and r.method == "PATCH"
                           and r.path.endswith("/status") and "/pytorchjobs/" in r.path}
                created_at = {r.name: r.t for r in list(log) if r.agent != BENCH_AGENT and r.action == "CREATE"
                              and r.path.endswith("/pytorchjobs")}
                latencies += [created_at[f"{n}-{nxt}"] - done_at[f"{n}-{stage}"] for n in names]
            results["transitions"] = len(latencies)
            results["latency_median_s"] = round(statistics.median(latencies), 3)
            results["latency_p99_s"] = round(percentile(latencies, 99), 3)
            results["latency_max_s"] = round(max(latencies), 3)
            results["requests_per_transition"] = round(statistics.mean(per_transition), 2)
            count = metrics.TRANSITIONS.value("_count", transition="StageSubmitted")
            if count:  # inside the operator: child event seen -> next job created (mean)
                total = metrics.TRANSITIONS.value("_sum", transition="StageSubmitted")
                results["operator_event_to_action_mean_s"] = round(total / count, 3)
    finally:
        pool.shutdown()
        emulator.stop()
        stop(s3.proc)

    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    ok = results.get("latency_p99_s", 99) < 2.0  # type: ignore[operator]
    print(f"p99 {'<' if ok else '>='} 2 s target: {'met' if ok else 'MISSED'}", file=sys.stderr)
    return 0 if ok else 1


def _kind(path: str) -> str:
    parts = [p for p in path.split("/") if p]
    for marker in ("pytorchjobs", "evepipelines", "events", "secrets"):
        if marker in parts:
            i = parts.index(marker)
            return "/".join(parts[i:i + 1] + (["status"] if parts[-1] == "status" else []))
    return "/".join(parts[:3])


if __name__ == "__main__":
    raise SystemExit(main())
