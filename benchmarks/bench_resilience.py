"""What failures cost eve-train (CPU; SeaweedFS on loopback):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_resilience.py [--only blackhole|nodeloss]

1. Black-holed S3 read. A 64 MiB object is read through ResumableS3Stream behind a TCP
   forwarder (tests/support/tcp_proxy.py); after 8 MiB every open connection stops answering
   (bytes swallowed, no error), as a dead NAT entry or a frozen server would. Reported: the
   extra seconds the read took over a clean read, with the platform's client policy (read
   timeout storage.READ_TIMEOUT_S) and with botocore's default config (60 s read timeout).
2. Steps redone after a node loss. Two ranks (tiny preset, max_steps 12) are started with
   checkpoint.every_steps k; rank 1 is SIGKILLed right after step 7 is logged (a node lost);
   the job is started again and resumes from its last checkpoint. Reported: steps redone =
   7 - resumed step, for each k, and the wall time from the restart to the step reached
   before the loss.
3. Goodput under a fault schedule on the emulated cluster (`--only goodput`): the real CLI,
   kopf operator, training-operator and kubelet emulators (tests/operator/cluster_emulator.py),
   launcher, trainer and SeaweedFS. One prealign stage on 2 pods x 1 rank (--steps steps,
   checkpoints every --ckpt-every, heartbeats every second, EVE_DEBUG_STEP_DELAY_S per step);
   the Worker pod is SIGKILLed (a node lost) each time the stage reaches another --fault-every
   steps, and the operator restarts the stage from its last checkpoint. Reported: the
   goodput line of `eve-platform status`, every part, and the parts' sum against the wall time
   the benchmark itself measured (the first submission, status.stages[0].startedAt, until it
   saw the pipeline Succeeded): they must agree within 2 %.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]


def blackhole(server) -> None:  # noqa: ANN001
    import boto3
    from botocore.config import Config
    from support.services import free_port
    from support.tcp_proxy import TcpForwarder

    from eve_contract.storage import READ_TIMEOUT_S, S3Store, open_store, s3_client

    os.environ.update(server.env())
    size, cut = 64 << 20, 8 << 20
    blob = os.urandom(size)
    server.make_bucket("bench-bh")
    open_store("s3://bench-bh/x", endpoint_url=server.endpoint_url).put_bytes("obj", blob)
    target = urlparse(server.endpoint_url)
    clients = {
        f"eve (read timeout {READ_TIMEOUT_S:g} s)": lambda url: s3_client(url),
        "botocore default (read timeout 60 s)": lambda url: boto3.client(
            "s3", endpoint_url=url, region_name="us-east-1", config=Config(s3={"addressing_style": "path"})),
    }
    for name, make in clients.items():
        for hole in (False, True):
            proxy = TcpForwarder(free_port(), (target.hostname, target.port))
            proxy.start()
            store = S3Store("bench-bh", "x", endpoint_url=proxy.url)
            store.client = make(proxy.url)
            t0 = time.monotonic()
            with store.open_read("obj") as stream:
                got = stream.read(cut)
                if hole:
                    proxy.blackhole()
                got += b"".join(iter(lambda: stream.read(1 << 20), b""))
            took = time.monotonic() - t0
            proxy.stop()
            assert got == blob
            print(f"{name:40s} {'black-holed after 8 MiB' if hole else 'clean':26s} {took:6.1f} s  "
                  f"reconnects {stream.reconnects}", flush=True)


def node_loss(server, work: Path, every: list[int]) -> None:  # noqa: ANN001
    from support.eve_trainer_harness import launch

    from eve_trainer.data import write_synthetic_dataset

    server.make_bucket("bench-nl")
    os.environ.update(server.env())
    write_synthetic_dataset("s3://bench-nl/data", num_samples=128, kind="caption", seed=0,
                            endpoint_url=server.endpoint_url)
    for k in every:
        args = ["pretrain", "data.urls=[s3://bench-nl/data]", "output=s3://bench-nl/runs", f"pipeline=k{k}",
                "max_steps=12", f"checkpoint.every_steps={k}", "checkpoint.keep_last=2", "checkpoint.export=false",
                "data.num_workers=1", "progress=json", "distributed.timeout_s=30"]
        first = launch(args, world=2, log_dir=work / f"k{k}-a", env={**server.env(), "EVE_DEBUG_STEP_DELAY_S": "0.5"})
        first.wait_for(lambda e: e.get("event") == "step" and e["step"] >= 7, timeout=300)
        lost_at = max(e["step"] for e in first.events() if e.get("event") == "step")
        first.signal(1, signal.SIGKILL)
        first.kill()
        t0 = time.monotonic()
        second = launch(args, world=2, log_dir=work / f"k{k}-b", env=server.env())
        ev = second.wait_for(lambda e: e.get("event") == "step" and e["step"] >= lost_at, timeout=300)
        back = time.monotonic() - t0
        resumed = next((e["step"] for e in second.events() if e.get("event") == "resumed"), 0)
        second.wait(300)
        print(f"checkpoint.every_steps={k:2d}: lost after step {lost_at}, resumed from {resumed}, "
              f"steps redone {lost_at - resumed}, restart to step {ev['step']} in {back:.0f} s", flush=True)


def fault_schedule(server, work: Path, steps: int, fault_every: int, ckpt_every: int, delay_s: float) -> None:  # noqa: ANN001
    import base64
    import json
    import subprocess

    from support.cluster_emulator import ClusterEmulator
    from support.kube_emulator import Emulator
    from support.operator_harness import running_operator

    from eve_contract.goodput import PARTS
    from eve_operator.pipeline import PipelineStatus, pipeline_goodput
    from eve_trainer.data import write_synthetic_dataset

    ns, name = "ml", "faults"
    bucket = server.make_bucket("bench-goodput")
    os.environ.update(server.env())  # the operator (in this process) reads S3 with them
    data, output = f"s3://{bucket}/data", f"s3://{bucket}/runs"
    write_synthetic_dataset(data, num_samples=128, kind="caption", seed=0, endpoint_url=server.endpoint_url)
    emulator = Emulator().start()
    kubeconfig = emulator.write_kubeconfig(work / "kubeconfig", ns)
    os.environ["KUBECONFIG"] = str(kubeconfig)
    cluster = ClusterEmulator(emulator, kubeconfig, work / "node", max_grace_s=5.0, interval_s=0.25,
                              extra_env={"EVE_DEBUG_STEP_DELAY_S": str(delay_s)})
    cluster.core.create_namespaced_secret(ns, {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds", "namespace": ns},
        "data": {k: base64.b64encode(server.env()[k].encode()).decode()
                 for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}})
    env = dict(os.environ, EVE_PLATFORM_HOME=str(work / "home"), OMP_NUM_THREADS="1")
    env.pop("EVE_PLATFORM_BACKEND", None)

    def status() -> dict:
        obj = cluster.custom.get_namespaced_custom_object("eve-platform.io", "v1alpha1", ns, "evepipelines", name)
        return obj.get("status") or {}

    kills: list[tuple[int, str]] = []
    try:
        cluster.start()
        with running_operator(resync_s=1.0):
            submitted = subprocess.run(
                [sys.executable, "-m", "eve_operator.cli.main", "submit", "stage=prealign", "until=prealign",
                 f"name={name}", f"output={output}", f"data={data}", f"endpoint_url={server.endpoint_url}",
                 "credentials_secret=s3-creds", "nodes=2", "nproc_per_node=1", "gpus_per_node=0",
                 "gang_scheduler=none", f"max_steps={steps}", f"checkpoint.every_steps={ckpt_every}",
                 "heartbeat.every_s=1", "distributed.timeout_s=60", "data.num_workers=1", "max_attempts=20",
                 "--backend", "kubernetes"], env=env, capture_output=True, text=True, timeout=120)
            assert submitted.returncode == 0, submitted.stdout + submitted.stderr[-3000:]
            next_fault = fault_every
            while True:
                st = status()
                if st.get("phase") in ("Succeeded", "Failed"):
                    ended = time.time()
                    break
                stage = (st.get("stages") or [{}])[0]
                if next_fault < steps and (stage.get("step") or 0) >= next_fault and stage.get("trainerPhase") == "train":
                    victim = f"{stage['jobName']}-worker-0"
                    try:
                        cluster.kill_pod(victim, ns)
                        kills.append((stage["step"], victim))
                        print(f"  node lost: {victim} SIGKILLed at step {stage['step']}", flush=True)
                        next_fault += fault_every
                    except LookupError:
                        pass  # restarting: try again on the next look
                time.sleep(0.2)
            shown = subprocess.run([sys.executable, "-m", "eve_operator.cli.main", "status", name, "--backend",
                                    "kubernetes", "-n", ns], env=env, capture_output=True, text=True, timeout=120)
    finally:
        cluster.stop()
        emulator.stop()
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)[-3000:]
    parsed = PipelineStatus.model_validate(st)
    g = pipeline_goodput(parsed, ended)
    wall = ended - parsed.stages[0].started_at
    print(next((line for line in shown.stdout.splitlines() if line.startswith("Goodput:")), shown.stdout[-2000:]))
    print(f"fault schedule: {steps} steps, checkpoint every {ckpt_every}, a node lost every {fault_every} steps "
          f"({len(kills)} lost), step delay {delay_s} s, {len(parsed.stages[0].segments)} segments, load average "
          f"{os.getloadavg()[0]:.1f}")
    print("  nodes lost: " + ", ".join(f"{pod} at step {at}" for at, pod in kills))
    print("  " + ", ".join(f"{p} {getattr(g, p):.1f} s" for p in PARTS))
    print(f"  goodput {100 * g.goodput:.1f} %, {g.redone_steps} steps redone, {g.restarts} restarts")
    gap = abs(g.parts_sum - wall) / wall
    print(f"  parts sum {g.parts_sum:.1f} s vs wall {wall:.1f} s measured here (submission to Succeeded seen): "
          f"{100 * gap:.2f} % apart (target <= 2 %) {'PASS' if gap <= 0.02 else 'FAIL'}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=["blackhole", "nodeloss", "goodput"])
    parser.add_argument("--every", type=int, nargs="+", default=[2, 5])
    parser.add_argument("--steps", type=int, default=24, help="goodput: the stage's steps")
    parser.add_argument("--fault-every", type=int, default=8, help="goodput: a node lost every N steps")
    parser.add_argument("--ckpt-every", type=int, default=3, help="goodput: checkpoint.every_steps")
    parser.add_argument("--step-delay", type=float, default=0.5, help="goodput: EVE_DEBUG_STEP_DELAY_S")
    args = parser.parse_args()
    from support.services import start_seaweedfs, stop

    with tempfile.TemporaryDirectory() as tmp:
        server = start_seaweedfs(Path(tmp) / "weed")
        try:
            if args.only in (None, "blackhole"):
                blackhole(server)
            if args.only in (None, "nodeloss"):
                node_loss(server, Path(tmp), args.every)
            if args.only in (None, "goodput"):
                fault_schedule(server, Path(tmp), args.steps, args.fault_every, args.ckpt_every, args.step_delay)
        finally:
            stop(server.proc)


if __name__ == "__main__":
    main()
