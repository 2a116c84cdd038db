"""Harness for trainer tests: launch N ranks of `python -m eve_trainer` the way a PyTorchJob
would (RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT / LOCAL_RANK), against the real S3 and
MLflow servers of the session, and read back rank 0's JSON progress lines. (A uniquely named
module, not conftest: several test folders have a conftest.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from support.services import free_port

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Ranks:
    procs: list[subprocess.Popen]
    logs: list[Path]

    def wait(self, timeout: float = 180.0) -> list[int]:
        deadline = time.monotonic() + timeout
        codes = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(timeout=max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"ranks did not finish in {timeout}s:\n{self.tail()}") from None
        return codes

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def signal(self, rank: int, sig: int) -> None:
        os.kill(self.procs[rank].pid, sig)

    def output(self, rank: int = 0) -> str:
        return self.logs[rank].read_text(errors="replace")

    def events(self, rank: int = 0) -> list[dict]:
        out = []
        for line in self.output(rank).splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def losses(self) -> dict[int, float]:
        return {e["step"]: e["loss"] for e in self.events() if e.get("event") == "step"}

    def wait_for(self, predicate, timeout: float = 120.0) -> dict:
        """The first rank-0 event matching `predicate`, polling the log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if predicate(event):
                    return event
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(0.1)
        raise AssertionError(f"event not seen:\n{self.tail()}")

    def tail(self, n: int = 3000) -> str:
        return "\n".join(f"--- rank {r} (exit {p.poll()}) ---\n{self.output(r)[-n:]}"
                         for r, p in enumerate(self.procs))


def launch(args: list[str], *, world: int, log_dir: Path, env: dict[str, str] | None = None) -> Ranks:
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    procs, logs = [], []
    for rank in range(world):
        rank_env = dict(os.environ, **(env or {}), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                        PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
        log = log_dir / f"rank{rank}.log"
        procs.append(subprocess.Popen([sys.executable, "-m", "eve_trainer", *args], cwd=REPO, env=rank_env,
                                      stdout=open(log, "wb"), stderr=subprocess.STDOUT))
        logs.append(log)
    return Ranks(procs, logs)
