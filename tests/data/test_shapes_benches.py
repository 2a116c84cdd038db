"""The demo's held-out benchmarks (`synth.write_shapes_pope`, `synth.write_shapes_gqa`): bench folders
that eve-eval's own readers and scorers take, whose ground truth is what the images show."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from eve_contract.storage import open_store
from eve_trainer.data.synth import _RGB, SHAPE_COLORS, write_shapes_gqa, write_shapes_pope
from eve_trainer.evaluation.benches import BenchFiles, bench


def _finish(name: str, folder: Path, texts: dict[str, str]) -> dict[str, float]:
    b = bench(name)
    files = BenchFiles(open_store(str(folder)), name)
    questions = b.read_questions(files)
    b.check(files, questions)
    answers = [{"question_id": q.question_id, "text": texts[str(q.question_id)]} for q in questions]
    return b.finish(answers, questions, files)[0]


def test_gqa_colour_bench_asks_what_the_image_shows_and_scores_by_exact_match(tmp_path: Path) -> None:
    made = write_shapes_gqa(str(tmp_path), num_images=8, seed=5, image_size=(48, 64))
    assert made["questions"] == 8
    gold = json.loads((tmp_path / "annotations" / "testdev_balanced_questions.json").read_text())
    for line in (tmp_path / "questions.jsonl").read_text().splitlines():
        q = json.loads(line)
        assert q["text"].startswith("What color is the ") and q["text"].endswith("single word or phrase.")
        answer = gold[q["question_id"]]["answer"]
        assert answer in SHAPE_COLORS
        pixels = Image.open(tmp_path / "images" / q["image"]).convert("RGB").getdata()
        assert _RGB[answer] in set(pixels), f"{q['image']}: no {answer} pixel"  # the shape's own colour
    right = {qid: f"{g['answer'].capitalize()}." for qid, g in gold.items()}  # "Red." as the model answers
    assert _finish("gqa", tmp_path, right) == {"accuracy": 1.0, "n": 8}
    wrong = {qid: "Purple." for qid in gold}
    assert _finish("gqa", tmp_path, wrong)["accuracy"] == 0.0


def test_pope_bench_is_balanced_and_its_seed_alone_decides_it(tmp_path: Path) -> None:
    write_shapes_pope(str(tmp_path / "a"), num_images=5, seed=9, image_size=(48, 64))
    write_shapes_pope(str(tmp_path / "b"), num_images=5, seed=9, image_size=(48, 64))
    assert (tmp_path / "a" / "questions.jsonl").read_text() == (tmp_path / "b" / "questions.jsonl").read_text()
    labels = [json.loads(line)["label"] for f in sorted((tmp_path / "a" / "annotations").glob("*.json"))
              for line in f.read_text().splitlines()]
    assert labels.count("yes") == labels.count("no") == 10
    all_yes = {str(json.loads(line)["question_id"]): "Yes"
               for line in (tmp_path / "a" / "questions.jsonl").read_text().splitlines()}
    assert _finish("pope", tmp_path / "a", all_yes)["accuracy"] == 0.5
