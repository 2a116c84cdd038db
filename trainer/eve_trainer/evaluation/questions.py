"""Benchmark questions: the question files of the EVE/LLaVA reference, read from a bench folder.

A bench folder (a local folder, ``file://`` or ``s3://`` URL) holds::

    questions.jsonl     the reference's question file: one {"question_id", "image", "text", ...}
                        object per line (ScienceQA: questions.json, its list of problems with
                        "id", "image", "conversations"; MMBench: questions.tsv, its TSV with
                        base64 images)
    images/             the image folder the "image" paths are relative to
      or index.json + shard-*.tar   the same questions as shards (`eve-platform data convert-bench`)
    annotations/        the scorer's ground truth, under the names the reference uses
                        (docs/eval.md lists them per benchmark)

torch-free: the CLI and the operator read question counts from here.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

QUESTIONS_JSONL = "questions.jsonl"
QUESTIONS_JSON = "questions.json"
QUESTIONS_TSV = "questions.tsv"
IMAGES_DIR = "images"
ANNOTATIONS_DIR = "annotations"
SHARD_INDEX = "index.json"
IMAGE_TOKEN = "<image>"


class BenchDataError(ValueError):
    """The bench folder is missing a file or holds a malformed one (the user's to fix: exit 2)."""


@dataclass
class Question:
    """One question, in question-file order (`index`)."""

    index: int
    question_id: Any
    text: str
    """The user turn without the image token (the question file's text, instructions included)."""
    image: str | None
    """The image's path relative to images/ (None: a text-only question)."""
    record: dict[str, Any] = field(default_factory=dict)
    """The question file's line as it is (category, answer, ...), for the scorers."""
    prompt_field: str | None = None
    """The answer line's `prompt` (default: `text`); ScienceQA keeps `<image>\\n` there."""
    image_b64: str | None = None
    """MMBench: the image inline, base64."""

    @property
    def prompt(self) -> str:
        return self.text if self.prompt_field is None else self.prompt_field


def parse_jsonl(blob: bytes, name: str) -> list[dict[str, Any]]:
    out = []
    for n, line in enumerate(blob.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as err:
            raise BenchDataError(f"{name} line {n}: not valid JSON ({err})") from None
        if not isinstance(value, dict):
            raise BenchDataError(f"{name} line {n}: expected a JSON object, got {type(value).__name__}")
        out.append(value)
    return out


def vqa_questions(records: list[dict[str, Any]], name: str) -> list[Question]:
    """The common question file (model_vqa_loader): question_id, image, text."""
    out = []
    for i, rec in enumerate(records):
        missing = [k for k in ("question_id", "text") if k not in rec]
        if missing:
            raise BenchDataError(f"{name} line {i + 1}: missing {', '.join(missing)}; each line needs "
                                 "question_id, image and text")
        image = rec.get("image")
        out.append(Question(i, rec["question_id"], str(rec["text"]), str(image) if image else None, rec))
    return out


SCIENCE_SUFFIX = "Answer with the option's letter from the given choices directly."


def science_questions(problems: Any, name: str) -> list[Question]:
    """ScienceQA (model_vqa_science --single-pred-prompt): a JSON list of {id, image?, conversations}.

    The question is the first turn without `<image>`; the letter instruction is appended; the
    answer line's prompt keeps `<image>\\n` in front when the problem has an image (the IMG split)."""
    if not isinstance(problems, list):
        raise BenchDataError(f"{name}: expected a JSON list of problems (the reference's eve_test_CQM-A.json)")
    out = []
    for i, rec in enumerate(problems):
        try:
            first = rec["conversations"][0]["value"]
            qid = rec["id"]
        except (KeyError, IndexError, TypeError):
            raise BenchDataError(f"{name}[{i}]: expected id and conversations[0].value") from None
        qs = str(first).replace(IMAGE_TOKEN, "").strip()
        image = rec.get("image")
        prompt = (IMAGE_TOKEN + "\n" + qs if image else qs) + "\n" + SCIENCE_SUFFIX
        out.append(Question(i, qid, qs + "\n" + SCIENCE_SUFFIX, str(image) if image else None, rec,
                            prompt_field=prompt))
    return out


MMBENCH_OPTIONS = ("A", "B", "C", "D")
MMBENCH_SUFFIX = {"en": "Answer with the option's letter from the given choices directly.",
                  "cn": "请直接回答选项字母。"}


def _present(value: Any) -> bool:
    return value is not None and str(value).strip() != "" and str(value).lower() != "nan"


def mmbench_questions(blob: bytes, name: str, lang: str = "en") -> list[Question]:
    """MMBench's TSV (model_vqa_mmbench, first round): index, question, hint, A-D, image (base64).

    Prompt: [hint + "\\n"] + question, then "\\nA. option" per present option, then the
    letter instruction (Chinese for mmbench_cn)."""
    rows = list(csv.DictReader(io.StringIO(blob.decode("utf-8")), delimiter="\t"))
    out = []
    for i, row in enumerate(rows):
        if "index" not in row or "question" not in row:
            raise BenchDataError(f"{name} row {i + 2}: expected the columns index, question, A..D, image")
        question = row["question"]
        if _present(row.get("hint")):
            question = row["hint"] + "\n" + question
        for letter in MMBENCH_OPTIONS:  # the options up to the first absent one (get_options)
            if not _present(row.get(letter)):
                break
            question += "\n" + letter + ". " + row[letter]
        text = question + "\n" + MMBENCH_SUFFIX[lang]
        qid = int(row["index"]) if str(row["index"]).isdigit() else row["index"]
        out.append(Question(i, qid, text, None, {k: v for k, v in row.items() if k != "image"},
                            prompt_field=question, image_b64=row.get("image") or None))
    return out


def chunk_bounds(total: int, world: int, rank: int) -> tuple[int, int]:
    """[start, end) of rank's share: the reference's --num-chunks/--chunk-idx, contiguous chunks of
    ceil(total / world); trailing ranks may get nothing."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank={rank}, world_size={world}: need 0 <= rank < world_size")
    size = math.ceil(total / world) if total else 0
    start = min(rank * size, total)
    return start, min(start + size, total)
