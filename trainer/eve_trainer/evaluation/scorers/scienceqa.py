"""ScienceQA-IMG (eve/eval/eval_science_qa.py): multiple choice, letter parsed from the answer.

Parsing: the whole text a letter of the options (A-E); or "X. " at the start; or the regex
`The answer is ([A-Z]).` (the dot matches any character) matching exactly once; else FAILED.
A FAILED or out-of-range letter is index -1: wrong. A problem of the split with no answer line
is FAILED too, and counts as text-only. IMG accuracy: over the answers whose prompt holds `<image>`.
"""

from __future__ import annotations

import re
from typing import Any

OPTIONS = ["A", "B", "C", "D", "E"]
_PATTERN = re.compile(r"The answer is ([A-Z]).")


def parse(text: str) -> str:
    if text in OPTIONS:
        return text
    if len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        return text[0]
    found = _PATTERN.findall(text)
    return found[0] if len(found) == 1 else "FAILED"


def pred_index(letter: str, choices: list[Any]) -> int:
    return OPTIONS.index(letter) if letter in OPTIONS[:len(choices)] else -1


def score(answers: list[dict[str, Any]], problems: dict[str, Any], split_ids: list[str]) -> dict[str, float]:
    """problems: problems.json {id: {"choices", "answer" (index)}}; split_ids: pid_splits.json[split]."""
    by_id = {str(a["question_id"]): a for a in answers}
    correct = total = img_correct = img_total = 0
    for pid in split_ids:
        prob = problems[pid]
        ans = by_id.get(str(pid))
        text = ans["text"] if ans else "FAILED"
        multimodal = ans is not None and "<image>" in ans["prompt"]
        right = pred_index(parse(text), prob["choices"]) == prob["answer"]
        total += 1
        correct += right
        if multimodal:
            img_total += 1
            img_correct += right
    return {"accuracy": correct / total if total else 0.0, "img_accuracy": img_correct / img_total if img_total else 0.0,
            "n": total, "n_img": img_total}
