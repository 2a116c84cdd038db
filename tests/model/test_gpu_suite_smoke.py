"""benchmarks/gpu_suite.sh cannot rot between device runs: its CPU smoke mode runs one
configuration per code path (today's path, all levers, varlen, flex, selective checkpointing,
SFT padded, ZeRO-3 with the optimizer offloaded) through the real Trainer at tiny sizes, and
every configuration must come back with a measurement rather than an error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = {"cap-base", "cap-all", "cap-varlen", "cap-flex", "sft-pad-base", "cap-all-m48-sacmlp", "z3-32-cap-all"}


@pytest.mark.slow
def test_gpu_suite_runs_every_lever_on_cpu(tmp_path):
    env = {**os.environ, "EVE_SUITE_CPU": "1", "OUT": str(tmp_path), "PYTHON": sys.executable,
           "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
               [str(ROOT), str(ROOT / "contract"), str(ROOT / "trainer"), str(ROOT / "operator"),
                os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_suite.sh")], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    log = (tmp_path / "log.txt").read_text() if (tmp_path / "log.txt").exists() else ""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["name"]: r for r in map(json.loads, (tmp_path / "results.jsonl").read_text().splitlines())}
    assert set(rows) == EXPECTED, log[-3000:]
    for name, row in rows.items():
        assert "error" not in row and row["tokens_per_s"] > 0, (name, row.get("error"), log[-2000:])
    assert rows["cap-varlen"]["attention_path"] == ["varlen"]
    assert rows["cap-flex"]["attention_path"] == ["flex"]
    assert rows["cap-base"]["fused"] is False and rows["cap-all"]["fused"] is True
    assert rows["z3-32-cap-all"]["zero"] == 3 and rows["z3-32-cap-all"]["gradient_checkpointing"]
    assert "cap-base" in proc.stdout and "vs base" in proc.stdout  # the table printed last
