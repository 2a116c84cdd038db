"""`eve-platform demo` (what `make demo` runs) end to end, and what the trained chain learned.

Measured (deterministic: fixed seeds; docs/benchmarks.md): on 50 colour questions about unseen shapes
images in GQA's format ("What color is the square?", exact match, 4 colours: chance 25 %) the initial
model scores 0 % and the trained chain 100 %; on the 200 yes/no questions in POPE's
format both stay near chance (50 %): within the demo's minutes of CPU training the tiny model learns to
see the colour but not yet to compare what it sees with the question. The margins below leave wide
room under those figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHANCE = {"pope": 0.5, "gqa": 0.25}


def test_the_demo_runs_end_to_end_and_the_trained_model_sees_colours(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = dict(os.environ, EVE_PLATFORM_HOME=str(home), EVE_PLATFORM_BACKEND="local", OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "eve_operator.cli.main", "demo", "--name", "learns"], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=2400)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "held-out benchmarks" in run.stdout and "evaluation added" in run.stdout

    status = json.loads(subprocess.run([sys.executable, "-m", "eve_operator.cli.main", "status", "learns", "-o",
                                        "json"], env=env, capture_output=True, text=True, timeout=120).stdout)
    assert status["phase"] == "Succeeded"
    # every stage ran validation.data: its held-out loss is in the status, its StageSucceeded line and the table
    assert all(isinstance(s.get("valLoss"), float) and s.get("valStep") for s in status["stages"]), status["stages"]
    assert run.stderr.count("(validation loss ") == 3 and "VAL LOSS" in run.stdout
    (ev,) = status["evals"]  # the pipeline scored the sft export itself (spec.eval), on both benchmarks
    trained = ev["scores"]
    initial_dir = home / "store" / "datasets" / "initial-model" / "eval"
    initial = {b: json.loads((initial_dir / b / "scores.json").read_text())["scores"] for b in CHANCE}
    assert trained["pope"]["n"] == initial["pope"]["n"] == 200 and trained["gqa"]["n"] == initial["gqa"]["n"] == 50
    assert abs(initial["pope"]["accuracy"] - CHANCE["pope"]) <= 0.1  # the random initialisation guesses
    assert initial["gqa"]["accuracy"] <= CHANCE["gqa"]  # ... or names no colour at all
    assert trained["gqa"]["accuracy"] >= CHANCE["gqa"] + 0.5, trained["gqa"]  # it names the colour it sees
