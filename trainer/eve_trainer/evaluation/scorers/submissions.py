"""Files for the benchmarks scored by their own servers, in the formats those servers take
(the reference's scripts/convert_*_for_submission.py).

- VQAv2 (EvalAI, test-dev): a JSON list [{"question_id", "answer"}] over every question of the
  test split, the answer EvalAI-normalised ("" where the model gave none);
- VizWiz (EvalAI): a JSON list [{"image", "answer"}], normalised, in question order;
- MMBench (its server): an .xlsx of the question TSV's rows without hint, category, source,
  image, comment and l2-category, with a `prediction` column inserted after the options;
- SEED-Bench: [{"question_id", "prediction"}] as JSON lines; with the annotation file
  (SEED-Bench.json) the accuracy per question type too (exact match, as the reference script);
- MM-Vet (scored by GPT-4 with MM-Vet's own evaluator): {"v1_<question_id>": answer} as JSON.
"""

from __future__ import annotations

import io
import json
from typing import Any

from eve_trainer.evaluation.scorers.vqa import normalise


def vqav2(answers: list[dict[str, Any]], split_questions: list[dict[str, Any]]) -> bytes:
    results = {a["question_id"]: a["text"] for a in answers}
    rows = [{"question_id": q["question_id"],
             "answer": normalise(results[q["question_id"]]) if q["question_id"] in results else ""}
            for q in split_questions]
    return json.dumps(rows).encode()


def vizwiz(answers: list[dict[str, Any]], questions: list[dict[str, Any]]) -> bytes:
    results = {a["question_id"]: a["text"] for a in answers}
    missing = [q["question_id"] for q in questions if q["question_id"] not in results]
    if missing:
        raise KeyError(f"VizWiz: no answer for {len(missing)} question(s), e.g. {missing[:3]}")
    return json.dumps([{"image": q["image"], "answer": normalise(results[q["question_id"]])}
                       for q in questions]).encode()


MMBENCH_DROPPED = ("hint", "category", "source", "image", "comment", "l2-category")


def mmbench_rows(answers: list[dict[str, Any]], rows: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """(header, rows) of the upload sheet: the question rows minus MMBENCH_DROPPED, `prediction`
    inserted as the 7th column (after index, question, A, B, C, D, as the reference's insert(6))."""
    predictions = {str(a["question_id"]): a["text"] for a in answers}
    if not rows:
        return ["index", "prediction"], []
    columns = [c for c in rows[0] if c not in MMBENCH_DROPPED]
    header = columns[:6] + ["prediction"] + columns[6:]
    out = []
    for row in rows:
        values = [_cell(row.get(c)) for c in columns]
        out.append(values[:6] + [predictions.get(str(row["index"]))] + values[6:])
    return header, out


def _cell(value: Any) -> Any:
    """A TSV value as pandas.read_table types it: integers as numbers, empty or "nan" as empty."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "nan")):
        return None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


def mmbench_xlsx(answers: list[dict[str, Any]], rows: list[dict[str, Any]]) -> bytes:
    """The .xlsx MMBench's server takes (openpyxl, which the reference's pandas.to_excel uses)."""
    from openpyxl import Workbook

    header, values = mmbench_rows(answers, rows)
    book = Workbook()
    sheet = book.active
    sheet.append(header)
    for row in values:
        sheet.append(row)
    buf = io.BytesIO()
    book.save(buf)
    return buf.getvalue()


def seed(answers: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps({"question_id": a["question_id"], "prediction": a["text"]}) + "\n"
                   for a in answers).encode()


def seed_accuracy(answers: list[dict[str, Any]], annotation: dict[str, Any]) -> dict[str, float]:
    """convert_seed_for_submission.py: exact match against SEED-Bench.json, per question type;
    a question without an answer line counts as wrong. Over the image questions only (the
    `data_type` image split EVE reports)."""
    names = {str(v): k for k, v in annotation.get("question_type", {}).items()}
    results = {str(a["question_id"]): a["text"] for a in answers}
    counts: dict[str, list[int]] = {}
    for q in annotation["questions"]:
        if q.get("data_type", "image") != "image":
            continue
        kind = names.get(str(q["question_type_id"]), str(q["question_type_id"]))
        right = results.get(str(q["question_id"])) == q["answer"]
        c = counts.setdefault(kind, [0, 0])
        c[0] += right
        c[1] += 1
    out = {f"{k}/accuracy": r / n for k, (r, n) in sorted(counts.items())}
    total_r, total_n = sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values())
    out["accuracy"] = total_r / total_n if total_n else 0.0
    out["n"] = total_n
    return out


def mmvet(answers: list[dict[str, Any]]) -> bytes:
    return json.dumps({f"v1_{a['question_id']}": a["text"] for a in answers}, indent=2).encode()
