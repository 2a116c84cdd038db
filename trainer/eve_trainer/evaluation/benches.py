"""The benchmarks `evaluate` knows: where each one's questions and ground truth are, and how it
is scored once the answers are merged. torch-free.

Every bench reads a bench folder (eve_trainer.evaluation.questions); the ground truth sits in
its `annotations/` under the reference's file names. `finish` gets the merged answer lines (in
question order) and returns the scores plus the files to write beside answers.jsonl
(predictions and submission files).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from eve_trainer.evaluation.questions import (
    ANNOTATIONS_DIR,
    QUESTIONS_JSON,
    QUESTIONS_JSONL,
    QUESTIONS_TSV,
    BenchDataError,
    Question,
    mmbench_questions,
    parse_jsonl,
    science_questions,
    vqa_questions,
)
from eve_trainer.evaluation.scorers import gqa, mme, pope, scienceqa, submissions, vqa


class BenchFiles:
    """Read access to one bench folder (an ObjectStore rooted at it); a missing file is the user's."""

    def __init__(self, store: Any, bench: str):
        self.store, self.bench = store, bench

    @property
    def url(self) -> str:
        return self.store.url

    def exists(self, name: str) -> bool:
        return self.store.exists(name)

    def read(self, name: str, what: str = "") -> bytes:
        try:
            return self.store.get_bytes(name)
        except FileNotFoundError:
            raise BenchDataError(f"{self.bench}: {self.url}/{name} not found" + (f" ({what})" if what else "")
                                 + "; docs/eval.md shows the bench folder layout") from None

    def json(self, name: str, what: str = "") -> Any:
        try:
            return json.loads(self.read(name, what))
        except ValueError as err:
            raise BenchDataError(f"{self.bench}: {self.url}/{name} is not valid JSON ({err})") from None

    def list(self, prefix: str) -> list[str]:
        return sorted(self.store.list(prefix))


Result = tuple[dict[str, float], dict[str, bytes]]


@dataclass(frozen=True)
class Bench:
    name: str
    questions_file: str
    read_questions: Callable[[BenchFiles], list[Question]]
    finish: Callable[[list[dict[str, Any]], list[Question], BenchFiles], Result]
    headline: str
    """The metric a one-line summary shows."""
    server: bool = False
    """Scored by the benchmark's server: the run writes the submission file."""
    required: tuple[str, ...] = ()
    """Annotation files that must exist before any question is answered."""

    def check(self, files: BenchFiles, questions: list[Question]) -> None:
        """Fail before the answering (hours on a real benchmark) when the ground truth is missing."""
        for name in self.required:
            if not files.exists(name):
                raise BenchDataError(f"{self.name}: {files.url}/{name} not found (the scorer's ground truth); "
                                     "docs/eval.md lists each benchmark's files")
        if self.name == "pope" and not _pope_label_files(files) and any("label" not in q.record for q in questions):
            raise BenchDataError(f"pope: {files.url} has neither {ANNOTATIONS_DIR}/coco_pope_<category>.json "
                                 "nor a `label` on every question")
        if self.name == "mme":
            _mme_gold(questions, _mme_truth(files))


def _ann(name: str) -> str:
    return f"{ANNOTATIONS_DIR}/{name}"


def _read_vqa(files: BenchFiles) -> list[Question]:
    return vqa_questions(parse_jsonl(files.read(QUESTIONS_JSONL, "the question file"), QUESTIONS_JSONL),
                         QUESTIONS_JSONL)


def _read_science(files: BenchFiles) -> list[Question]:
    return science_questions(files.json(QUESTIONS_JSON, "the ScienceQA question file, eve_test_CQM-A.json"),
                             QUESTIONS_JSON)


def _read_mmbench(lang: str) -> Callable[[BenchFiles], list[Question]]:
    return lambda files: mmbench_questions(files.read(QUESTIONS_TSV, "MMBench's TSV"), QUESTIONS_TSV, lang)


# -- finishing: score + files ---------------------------------------------------------------------


def _pope_label_files(files: BenchFiles) -> list[str]:
    return [k for k in files.list(ANNOTATIONS_DIR)
            if k.rsplit("/", 1)[-1].startswith("coco_pope_") and k.endswith(".json")]


def _pope(answers: list[dict[str, Any]], questions: list[Question], files: BenchFiles) -> Result:
    categories = [str(q.record.get("category", "all")) for q in questions]
    label_files = _pope_label_files(files)
    labels: dict[str, list[str]] = {}
    if label_files:  # the reference: one coco_pope_<category>.json per category, labels in file order
        for key in label_files:
            category = key.rsplit("/", 1)[-1][len("coco_pope_"):-len(".json")]
            labels[category] = [str(r["label"]) for r in parse_jsonl(files.read(key), key)]
    else:  # labels inline in the question file
        for q, category in zip(questions, categories):
            if "label" not in q.record:
                raise BenchDataError(f"pope: {files.url} has neither {ANNOTATIONS_DIR}/coco_pope_<category>.json "
                                     f"nor a `label` in question {q.question_id!r}")
            labels.setdefault(category, []).append(str(q.record["label"]))
    return pope.score(answers, categories, labels), {}


def _textvqa(answers: list[dict[str, Any]], questions: list[Question], files: BenchFiles) -> Result:
    ann = files.json(_ann("TextVQA_0.5.1_val.json"), "TextVQA's annotation file")
    return vqa.score_textvqa(answers, ann), {}


def _gqa(answers: list[dict[str, Any]], questions: list[Question], files: BenchFiles) -> Result:
    out = {"testdev_balanced_predictions.json": json.dumps(gqa.predictions_file(answers)).encode()}
    gold = files.json(_ann("testdev_balanced_questions.json"), "GQA's testdev_balanced questions")
    return gqa.score(answers, gold), out


def _science(answers: list[dict[str, Any]], questions: list[Question], files: BenchFiles) -> Result:
    problems = files.json(_ann("problems.json"), "ScienceQA's problems.json")
    splits = files.json(_ann("pid_splits.json"), "ScienceQA's pid_splits.json")
    return scienceqa.score(answers, problems, splits["test"]), {}


def _mme_truth(files: BenchFiles) -> dict[tuple[str, str, str], str]:
    """eval_tool's Your_Results/<category>.txt: image \\t question \\t answer, one per line."""
    truth = {}
    for key in files.list(ANNOTATIONS_DIR):
        if not key.endswith(".txt"):
            continue
        category = key.rsplit("/", 1)[-1][:-4]
        for line in files.read(key).decode("utf-8").splitlines():
            parts = line.split("\t")
            if len(parts) >= 3:
                truth[(category, parts[0].strip(), parts[1].strip())] = parts[2].strip()
    return truth


def _mme_gold(questions: list[Question], truth: dict[tuple[str, str, str], str]) -> list[tuple[str, str, str]]:
    """(category, image name, ground truth) per question: its `answer`, else the eval_tool's file."""
    out = []
    for q in questions:
        category = str(q.record.get("category", ""))
        image = (q.image or "").rsplit("/", 1)[-1]
        gold = q.record.get("answer") or truth.get((category, image, q.text.strip()))
        if gold is None:
            raise BenchDataError(f"mme: no ground truth for question {q.question_id!r} ({category}, {image}): "
                                 f"expected {ANNOTATIONS_DIR}/{category}.txt (eval_tool's Your_Results) or an "
                                 "`answer` in the question file")
        out.append((category, image, str(gold)))
    return out


def _mme(answers: list[dict[str, Any]], questions: list[Question], files: BenchFiles) -> Result:
    gold = _mme_gold(questions, _mme_truth(files))
    return mme.score([(c, i, a["text"], g) for a, (c, i, g) in zip(answers, gold)]), {}


def _vqav2(answers: list[dict[str, Any]], questions: list[Question], files: BenchFiles) -> Result:
    split_name = _ann("llava_vqav2_mscoco_test2015.jsonl")
    split = parse_jsonl(files.read(split_name), split_name) if files.exists(split_name) \
        else [q.record for q in questions]
    gt = {q.question_id: q.record["answers"] for q in questions if isinstance(q.record.get("answers"), list)}
    scores = vqa.score_vqa(answers, gt) if gt else {"n": len(answers)}
    return scores, {"vqav2_test-dev_submission.json": submissions.vqav2(answers, split)}


def _vizwiz(answers: list[dict[str, Any]], questions: list[Question], files: BenchFiles) -> Result:
    return {"n": len(answers)}, {"vizwiz_submission.json": submissions.vizwiz(answers, [q.record for q in questions])}


def _mmbench(answers: list[dict[str, Any]], questions: list[Question], files: BenchFiles) -> Result:
    rows = list(csv.DictReader(io.StringIO(files.read(QUESTIONS_TSV).decode("utf-8")), delimiter="\t"))
    return {"n": len(answers)}, {"mmbench_submission.xlsx": submissions.mmbench_xlsx(answers, rows)}


def _seed(answers: list[dict[str, Any]], questions: list[Question], files: BenchFiles) -> Result:
    out = {"seed_submission.jsonl": submissions.seed(answers)}
    name = _ann("SEED-Bench.json")
    if files.exists(name):
        return submissions.seed_accuracy(answers, files.json(name)), out
    return {"n": len(answers)}, out


def _mmvet(answers: list[dict[str, Any]], questions: list[Question], files: BenchFiles) -> Result:
    return {"n": len(answers)}, {"mmvet_results.json": submissions.mmvet(answers)}


BENCHES: dict[str, Bench] = {b.name: b for b in (
    Bench("pope", QUESTIONS_JSONL, _read_vqa, _pope, "f1"),
    Bench("textvqa", QUESTIONS_JSONL, _read_vqa, _textvqa, "accuracy",
          required=(_ann("TextVQA_0.5.1_val.json"),)),
    Bench("gqa", QUESTIONS_JSONL, _read_vqa, _gqa, "accuracy", required=(_ann("testdev_balanced_questions.json"),)),
    Bench("scienceqa", QUESTIONS_JSON, _read_science, _science, "img_accuracy",
          required=(_ann("problems.json"), _ann("pid_splits.json"))),
    Bench("mme", QUESTIONS_JSONL, _read_vqa, _mme, "perception"),
    Bench("vqav2", QUESTIONS_JSONL, _read_vqa, _vqav2, "n", server=True),
    Bench("vizwiz", QUESTIONS_JSONL, _read_vqa, _vizwiz, "n", server=True),
    Bench("mmbench", QUESTIONS_TSV, _read_mmbench("en"), _mmbench, "n", server=True),
    Bench("mmbench_cn", QUESTIONS_TSV, _read_mmbench("cn"), _mmbench, "n", server=True),
    Bench("seed", QUESTIONS_JSONL, _read_vqa, _seed, "accuracy", server=True),
    Bench("mmvet", QUESTIONS_JSONL, _read_vqa, _mmvet, "n", server=True),
)}


def bench(name: str) -> Bench:
    if name not in BENCHES:
        raise BenchDataError(f"bench={name!r} is not a benchmark this platform scores; allowed: "
                             f"{', '.join(BENCHES)}")
    return BENCHES[name]
