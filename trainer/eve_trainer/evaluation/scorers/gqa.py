"""GQA (scripts/convert_gqa_for_eval.py + the official eval.py, testdev_balanced): exact match.

The prediction is the answer text with trailing "." removed (rstrip: every trailing dot) and
lower-cased; it is right when it equals the question's `answer` in the GQA questions file
(testdev_balanced_questions.json: {question_id: {"answer": ...}}). The official script reports
this as `accuracy`; its other metrics (consistency, validity, plausibility, grounding,
distribution) need GQA's scene graphs and choices files and are not computed here.
"""

from __future__ import annotations

from typing import Any


def prediction(text: str) -> str:
    return text.rstrip(".").lower()


def predictions_file(answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The file the official evaluator reads: [{"questionId", "prediction"}]."""
    return [{"questionId": a["question_id"], "prediction": prediction(a["text"])} for a in answers]


def score(answers: list[dict[str, Any]], questions: dict[str, Any]) -> dict[str, float]:
    right, n = 0, 0
    for a in answers:
        gold = questions.get(str(a["question_id"]))
        if gold is None:
            raise KeyError(f"answer {a['question_id']!r}: not in the GQA questions file")
        n += 1
        right += prediction(a["text"]) == str(gold["answer"]).lower()
    return {"accuracy": right / n if n else 0.0, "n": n}
