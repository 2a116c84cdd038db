"""`eve-platform data convert-bench`: a question file and its images -> a bench folder with shards,
which the evaluation reads like a folder with images/."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from eval_helpers import make_pope_bench

from eve_contract.storage import open_store
from eve_trainer.evaluation.benches import BenchFiles, bench
from eve_trainer.evaluation.runner import load_images


def test_convert_bench_then_read_the_same_images(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_pope_bench(src, n=5)
    out = tmp_path / "bench"
    result = subprocess.run([sys.executable, "-m", "eve_operator.cli.main", "data", "convert-bench",
                             str(src / "questions.jsonl"), str(out), "--images", str(src / "images"),
                             "--annotations", str(src / "annotations"), "-o", "json"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert (report["questions"], report["images"], report["shards"]) == (5, 5, 1)
    assert sorted(p.name for p in (out / "annotations").iterdir()) == [
        "coco_pope_adversarial.json", "coco_pope_popular.json", "coco_pope_random.json"]
    assert (out / "questions.jsonl").read_bytes() == (src / "questions.jsonl").read_bytes()
    assert json.loads((out / "index.json").read_text())["num_samples"] == 5
    sharded = BenchFiles(open_store(str(out)), "pope")
    folder = BenchFiles(open_store(str(src)), "pope")
    questions = bench("pope").read_questions(sharded)
    mine = questions[2:5]  # one rank's share: only its samples are read
    for a, b in zip(load_images(sharded, mine), load_images(folder, mine)):
        assert a.size == b.size and a.tobytes() == b.tobytes()


def test_convert_bench_missing_image_is_a_user_error(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_pope_bench(src, n=2)
    (src / "images" / "img_1.png").unlink()
    result = subprocess.run([sys.executable, "-m", "eve_operator.cli.main", "data", "convert-bench",
                             str(src / "questions.jsonl"), str(tmp_path / "out"), "--images", str(src / "images")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "img_1.png not found" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "out" / "index.json").exists()
