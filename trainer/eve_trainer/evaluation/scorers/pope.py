"""POPE (eve/eval/eval_pope.py): yes/no answers against labels, per category.

Normalisation: the text before the first "."; commas dropped; split on spaces; "No", "not" or
"no" among the words -> no, else yes. Predictions and labels are paired by position within a
category, so answers must be in question-file order (evaluate merges them so).
"""

from __future__ import annotations

from typing import Any


def normalise(text: str) -> str:
    """"yes" or "no", as the reference reads an answer."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def _div(a: float, b: float) -> float:
    return a / b if b else 0.0


def score_split(predictions: list[str], labels: list[str]) -> dict[str, float]:
    """Counts and rates of one category. The reference divides by zero where a denominator is
    0 (no yes predictions, no yes labels); here that rate is 0."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} answers for {len(labels)} labels: POPE pairs them by position")
    pred = [1 if normalise(p) == "yes" else 0 for p in predictions]
    gold = [0 if label == "no" else 1 for label in labels]
    tp = sum(1 for p, g in zip(pred, gold) if p == 1 and g == 1)
    fp = sum(1 for p, g in zip(pred, gold) if p == 1 and g == 0)
    tn = sum(1 for p, g in zip(pred, gold) if p == 0 and g == 0)
    fn = sum(1 for p, g in zip(pred, gold) if p == 0 and g == 1)
    precision, recall = _div(tp, tp + fp), _div(tp, tp + fn)
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn, "accuracy": _div(tp + tn, len(pred)),
            "precision": precision, "recall": recall, "f1": _div(2 * precision * recall, precision + recall),
            "yes_ratio": _div(sum(pred), len(pred)), "n": len(pred)}


def score(answers: list[dict[str, Any]], categories: list[str], labels: dict[str, list[str]]) -> dict[str, float]:
    """answers and categories in question-file order; labels: {category: [label, ...] in file order}.

    Per category: `<category>/<metric>`; the headline accuracy/precision/recall/f1/yes_ratio are the
    means over categories (the paper's POPE column is the F1 averaged over the three splits)."""
    out: dict[str, float] = {}
    per: list[dict[str, float]] = []
    for category in sorted(labels):
        texts = [a["text"] for a, c in zip(answers, categories) if c == category]
        split = score_split(texts, labels[category])
        per.append(split)
        out.update({f"{category}/{k}": v for k, v in split.items()})
    for key in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
        out[key] = sum(s[key] for s in per) / len(per) if per else 0.0
    out["n"] = sum(s["n"] for s in per)
    return out
