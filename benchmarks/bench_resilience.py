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
"""

from __future__ import annotations

import argparse
import os
import signal
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=["blackhole", "nodeloss"])
    parser.add_argument("--every", type=int, nargs="+", default=[2, 5])
    args = parser.parse_args()
    from support.services import start_seaweedfs, stop

    with tempfile.TemporaryDirectory() as tmp:
        server = start_seaweedfs(Path(tmp) / "weed")
        try:
            if args.only in (None, "blackhole"):
                blackhole(server)
            if args.only in (None, "nodeloss"):
                node_loss(server, Path(tmp), args.every)
        finally:
            stop(server.proc)


if __name__ == "__main__":
    main()
