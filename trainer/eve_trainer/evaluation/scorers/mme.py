"""MME (MME's eval_tool/calculation.py): perception and cognition from yes/no answers.

An answer reads as "yes" or "no" when it is exactly that (lower-cased), else from its first four
characters ("yes" in them -> yes, else "no" in them -> no, else "other", which is wrong).
Per subtask: accuracy = right answers / questions x 100; accuracy+ = images with both questions
right / images x 100; the subtask's score = accuracy + accuracy+ (at most 200). Perception is
the sum over its 10 subtasks (at most 2000), cognition over its 4 (at most 800).
"""

from __future__ import annotations

from collections import defaultdict

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
              "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def parse(text: str) -> str:
    pred = text.lower().strip()
    if pred in ("yes", "no"):
        return pred
    prefix = pred[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def score(rows: list[tuple[str, str, str, str]]) -> dict[str, float]:
    """rows: (category, image, prediction text, ground truth "Yes"/"No") per question."""
    per: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for category, image, text, gold in rows:
        per[category][image].append(parse(text) == gold.strip().lower())
    out: dict[str, float] = {}
    totals = {"perception": 0.0, "cognition": 0.0}
    for category, images in sorted(per.items()):
        answers = [r for rs in images.values() for r in rs]
        acc = 100.0 * sum(answers) / len(answers)
        acc_plus = 100.0 * sum(all(rs) for rs in images.values()) / len(images)
        out[f"{category}/accuracy"], out[f"{category}/accuracy_plus"] = acc, acc_plus
        out[f"{category}/score"] = acc + acc_plus
        if category in PERCEPTION:
            totals["perception"] += acc + acc_plus
        elif category in COGNITION:
            totals["cognition"] += acc + acc_plus
    out.update(totals)
    out["n"] = len(rows)
    return out
