"""spec.eval end to end on the local backend: the real CLI trains one tiny stage, the pipeline runs
eve-eval on its export as its own job, reads the scores beside the export, and a gate the random
model cannot meet stops the pipeline with a clear status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def cli(*args: str, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eve_operator.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_an_export_is_scored_by_its_own_job_and_a_failed_gate_stops_the_pipeline(tmp_path: Path) -> None:
    from eve_trainer.data.synth import write_shapes_pope, write_synthetic_dataset

    data, bench, output = tmp_path / "captions", tmp_path / "bench-pope", tmp_path / "store"
    write_synthetic_dataset(str(data), num_samples=32, kind="caption", seed=0, profile="shapes", image_size=(48, 64))
    write_shapes_pope(str(bench), num_images=3, seed=7, image_size=(48, 64))  # 12 yes/no questions
    env = dict(os.environ, EVE_PLATFORM_HOME=str(tmp_path / "home"), EVE_PLATFORM_BACKEND="local",
               OMP_NUM_THREADS="1")
    result = cli("submit", "stage=prealign", "until=prealign", "name=gated", f"output={output}", f"data={data}",
                 "nproc_per_node=1", "tracking_uri=", "max_steps=2", "data.num_workers=0",
                 f"eval.data.pope={bench}", "eval.gate=pope.accuracy >= 0.99", "eval.max_new_tokens=4", env=env)
    assert result.returncode != 0, result.stdout + result.stderr[-3000:]

    status = json.loads(cli("status", "gated", "-o", "json", env=env).stdout)
    assert status["phase"] == "Failed", status
    (ev,) = status["evals"]
    assert ev["stage"] == "prealign" and ev["state"] == "Succeeded" and ev["jobName"] == "gated-eval-prealign"
    accuracy = ev["scores"]["pope"]["accuracy"]
    assert 0.0 <= accuracy < 0.99 and ev["scores"]["pope"]["n"] == 12
    assert status["message"] == (f"gate failed on the prealign export: pope.accuracy = {accuracy:.4g}, "
                                 "not >= 0.99; no stage left")
    assert status["failure"]["class"] == "permanent"
    # eve-eval wrote its answers and scores beside the export, where the pipeline read them
    scores = json.loads((output / "gated" / "prealign" / "eval" / "pope" / "scores.json").read_text())
    assert scores["scores"]["accuracy"] == accuracy
    assert len((output / "gated" / "prealign" / "eval" / "pope" / "answers.jsonl").read_text().splitlines()) == 12
