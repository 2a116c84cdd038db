"""`eve-platform demo` (what `make demo` runs) end to end, and what the trained chain learned.

Measured (deterministic: fixed seeds; docs/benchmarks.md): on the 200 held-out questions about 50
unseen shapes images, the initial model names the shape's colour in 0 % of its answers and the
trained one in 100 %; the POPE yes/no score of both is at chance (50 %): within the demo's minutes
of CPU training the tiny model learns to see the colour but not yet to compare it with the question.
The margins below leave wide room under those figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHANCE_YES_NO, CHANCE_COLOUR = 0.5, 0.25


def test_the_demo_runs_end_to_end_and_the_trained_model_sees_colours(tmp_path: Path) -> None:
    from eve_operator.cli.demo import colour_named

    home = tmp_path / "home"
    env = dict(os.environ, EVE_PLATFORM_HOME=str(home), EVE_PLATFORM_BACKEND="local", OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "eve_operator.cli.main", "demo", "--name", "learns"], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=2400)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "initial (random initialisation)" in run.stdout and "evaluation added" in run.stdout

    status = json.loads(subprocess.run([sys.executable, "-m", "eve_operator.cli.main", "status", "learns", "-o",
                                        "json"], env=env, capture_output=True, text=True, timeout=120).stdout)
    assert status["phase"] == "Succeeded"
    (ev,) = status["evals"]  # the pipeline scored the sft export itself (spec.eval)
    trained = ev["scores"]["pope"]
    datasets = home / "store" / "datasets"
    initial = json.loads((datasets / "initial-model" / "eval" / "pope" / "scores.json").read_text())["scores"]
    assert trained["n"] == initial["n"] == 200
    assert abs(initial["accuracy"] - CHANCE_YES_NO) <= 0.1  # the random initialisation guesses

    bench = datasets / "shapes-pope"
    before = colour_named(datasets / "initial-model" / "eval" / "pope" / "answers.jsonl", bench)
    after = colour_named(home / "store" / "learns" / "sft" / "eval" / "pope" / "answers.jsonl", bench)
    assert before <= CHANCE_COLOUR
    assert after >= CHANCE_COLOUR + 0.5, after  # measured 1.0
