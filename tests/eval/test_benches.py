"""Each benchmark end to end from its bench folder (the reference's file names) to scores and files,
with hand-made answers instead of a model."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from eve_contract.storage import open_store
from eve_trainer.evaluation.benches import BENCHES, BenchFiles
from eve_trainer.evaluation.questions import BenchDataError


def folder(root: Path, files: dict[str, Any]) -> BenchFiles:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, (dict, list)):
            content = json.dumps(content)
        path.write_text(content)
    return BenchFiles(open_store(str(root)), root.name)


def jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def finish(name: str, files: BenchFiles, texts: list[str]) -> tuple[dict[str, float], dict[str, bytes]]:
    bench = BENCHES[name]
    questions = bench.read_questions(files)
    bench.check(files, questions)
    answers = [{"question_id": q.question_id, "prompt": q.prompt, "text": t} for q, t in zip(questions, texts)]
    return bench.finish(answers, questions, files)


def test_pope_from_label_files_and_inline_labels(tmp_path: Path) -> None:
    questions = [{"question_id": i, "image": "a.jpg", "text": "Is there a cat?", "category": c}
                 for i, c in enumerate(["random", "random", "popular"])]
    files = folder(tmp_path / "pope", {"questions.jsonl": jsonl(questions),
                                       "annotations/coco_pope_random.json": jsonl([{"label": "yes"}, {"label": "no"}]),
                                       "annotations/coco_pope_popular.json": jsonl([{"label": "no"}])})
    scores, _ = finish("pope", files, ["Yes", "No", "No"])   # random: TP, TN -> acc 1; popular: TN -> acc 1
    assert scores["random/accuracy"] == 1.0 and scores["popular/tn"] == 1 and scores["accuracy"] == 1.0
    inline = folder(tmp_path / "pope2", {"questions.jsonl": jsonl([{**q, "label": "yes"} for q in questions])})
    scores, _ = finish("pope", inline, ["Yes", "No", "No"])  # all yes: random TP+FN, popular FN
    assert scores["random/recall"] == 0.5 and scores["popular/fn"] == 1
    bare = folder(tmp_path / "pope3", {"questions.jsonl": jsonl(questions)})
    with pytest.raises(BenchDataError, match="neither annotations/coco_pope_<category>.json nor a `label`"):
        finish("pope", bare, ["Yes"] * 3)


def test_textvqa_gqa_scienceqa_need_their_files_before_answering(tmp_path: Path) -> None:
    q = jsonl([{"question_id": "i1", "image": "a.jpg", "text": "What?\nAnswer briefly."}])
    for name, needed in (("textvqa", "TextVQA_0.5.1_val.json"), ("gqa", "testdev_balanced_questions.json")):
        files = folder(tmp_path / name, {"questions.jsonl": q})
        with pytest.raises(BenchDataError, match=needed):
            BENCHES[name].check(files, BENCHES[name].read_questions(files))
    files = folder(tmp_path / "sqa", {"questions.json": [{"id": "1", "conversations": [{"value": "Q"}]}]})
    with pytest.raises(BenchDataError, match="problems.json"):
        BENCHES["scienceqa"].check(files, BENCHES["scienceqa"].read_questions(files))


def test_textvqa_from_its_annotation_file(tmp_path: Path) -> None:
    files = folder(tmp_path / "textvqa", {
        "questions.jsonl": jsonl([{"question_id": "img1", "image": "a.jpg",
                                   "text": "What is written?\nAnswer the question using a single word or phrase."}]),
        "annotations/TextVQA_0.5.1_val.json": {"data": [{"image_id": "img1", "question": "What is written?",
                                                          "answers": ["stop"] * 9 + ["go"]}]}})
    scores, _ = finish("textvqa", files, ["Stop"])   # 9 "stop": min(1, 8/3 or 9/3) = 1 for every left-out
    assert scores == {"accuracy": 1.0, "n": 1}


def test_gqa_scores_and_writes_the_predictions_file(tmp_path: Path) -> None:
    files = folder(tmp_path / "gqa", {
        "questions.jsonl": jsonl([{"question_id": "201", "image": "a.jpg", "text": "Left or right?"},
                                  {"question_id": "202", "image": "b.jpg", "text": "Color?"}]),
        "annotations/testdev_balanced_questions.json": {"201": {"answer": "left"}, "202": {"answer": "red"}}})
    scores, out = finish("gqa", files, ["Left.", "blue"])
    assert scores == {"accuracy": 0.5, "n": 2}
    assert json.loads(out["testdev_balanced_predictions.json"]) == [{"questionId": "201", "prediction": "left"},
                                                                    {"questionId": "202", "prediction": "blue"}]


def test_scienceqa_from_problems_and_splits(tmp_path: Path) -> None:
    files = folder(tmp_path / "sqa", {
        "questions.json": [{"id": "1", "image": "1/image.png", "conversations": [{"value": "<image>\nQ1\nA. x\nB. y"}]},
                           {"id": "2", "conversations": [{"value": "Q2\nA. x\nB. y"}]}],
        "annotations/problems.json": {"1": {"choices": ["x", "y"], "answer": 1},
                                      "2": {"choices": ["x", "y"], "answer": 1}},
        "annotations/pid_splits.json": {"test": ["1", "2"]}})
    scores, _ = finish("scienceqa", files, ["B", "A"])   # 1 (IMG) right, 2 wrong
    assert scores == {"accuracy": 0.5, "img_accuracy": 1.0, "n": 2, "n_img": 1}


def test_mme_from_the_eval_tool_files(tmp_path: Path) -> None:
    q = [{"question_id": f"existence/1.png-{i}", "image": "existence/1.png", "category": "existence",
          "text": f"Is there a {o}? Please answer yes or no."} for i, o in enumerate(["cat", "dog"])]
    files = folder(tmp_path / "mme", {
        "questions.jsonl": jsonl(q),
        "annotations/existence.txt": "1.png\tIs there a cat? Please answer yes or no.\tYes\n"
                                     "1.png\tIs there a dog? Please answer yes or no.\tNo\n"})
    scores, _ = finish("mme", files, ["Yes", "No"])  # both right: acc 100 + acc+ 100
    assert scores["existence/score"] == 200.0 and scores["perception"] == 200.0 and scores["cognition"] == 0.0
    missing = folder(tmp_path / "mme2", {"questions.jsonl": jsonl(q)})
    with pytest.raises(BenchDataError, match="no ground truth"):
        BENCHES["mme"].check(missing, BENCHES["mme"].read_questions(missing))


def test_server_benches_write_their_files(tmp_path: Path) -> None:
    q = jsonl([{"question_id": 5, "image": "VizWiz_test_5.jpg", "text": "What is it?"}])
    for name, filename in (("vqav2", "vqav2_test-dev_submission.json"), ("vizwiz", "vizwiz_submission.json"),
                           ("seed", "seed_submission.jsonl"), ("mmvet", "mmvet_results.json")):
        scores, out = finish(name, folder(tmp_path / name, {"questions.jsonl": q}), ["A bottle."])
        assert scores == {"n": 1} and list(out) == [filename]
    tsv = "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\tsource\tl2-category\tcomment\tsplit\timage\n" \
          "7\tWhat?\tnan\tx\ty\t\t\tA\tc\ts\tl2\t\tdev\taGk=\n"
    scores, out = finish("mmbench", folder(tmp_path / "mmbench", {"questions.tsv": tsv}), ["B"])
    from openpyxl import load_workbook

    sheet = load_workbook(io.BytesIO(out["mmbench_submission.xlsx"])).active
    assert [c.value for c in sheet[2]][:7] == [7, "What?", "x", "y", None, None, "B"]
