"""GQA, ScienceQA-IMG and MME by hand."""

from __future__ import annotations

import pytest

from eve_trainer.evaluation.scorers import gqa, mme, scienceqa


def test_gqa_exact_match_after_its_normalisation() -> None:
    assert gqa.prediction("Yes.") == "yes"
    assert gqa.prediction("left..") == "left"            # rstrip: every trailing dot
    assert gqa.prediction("U.S.A.") == "u.s.a"           # only trailing ones
    questions = {"q1": {"answer": "yes"}, "q2": {"answer": "table"}, "q3": {"answer": "right"}}
    answers = [{"question_id": "q1", "text": "Yes."},       # right
               {"question_id": "q2", "text": "the table"},  # wrong: no article removal in GQA
               {"question_id": "q3", "text": "Left"}]       # wrong
    assert gqa.score(answers, questions) == {"accuracy": pytest.approx(1 / 3), "n": 3}
    assert gqa.predictions_file(answers)[0] == {"questionId": "q1", "prediction": "yes"}


@pytest.mark.parametrize("text, letter", [
    ("B", "B"),
    ("C. the cat", "C"),
    ("The answer is A. Because ...", "A"),
    ("The answer is A; or so", "A"),                     # the regex's "." matches any character
    ("The answer is A. The answer is B.", "FAILED"),     # must match exactly once
    ("b", "FAILED"),
    ("C.", "FAILED"),                                    # "X. " needs the space
    ("", "FAILED"),
])
def test_scienceqa_letter_parsing(text: str, letter: str) -> None:
    assert scienceqa.parse(text) == letter


def test_scienceqa_score_by_hand() -> None:
    problems = {"p1": {"choices": ["a", "b", "c"], "answer": 1}, "p2": {"choices": ["a", "b"], "answer": 0},
                "p3": {"choices": ["a", "b", "c"], "answer": 2}, "p4": {"choices": ["a", "b"], "answer": 0},
                "p5": {"choices": ["a", "b"], "answer": 1}}
    answers = [
        {"question_id": "p1", "prompt": "<image>\nWhich?\nAnswer with ...", "text": "B"},      # right, IMG
        {"question_id": "p2", "prompt": "Which?\nAnswer with ...", "text": "The answer is A."},  # right
        {"question_id": "p3", "prompt": "<image>\nWhich?\nAnswer with ...", "text": "D"},      # D of 3: -1, IMG
        # p4: no answer line -> FAILED, wrong, not IMG
        {"question_id": "p5", "prompt": "Which?\nAnswer with ...", "text": "A"},               # wrong
    ]
    scores = scienceqa.score(answers, problems, ["p1", "p2", "p3", "p4", "p5"])
    assert scores["accuracy"] == pytest.approx(2 / 5)       # p1, p2 right of 5
    assert scores["img_accuracy"] == pytest.approx(1 / 2)   # p1 right, p3 wrong
    assert (scores["n"], scores["n_img"]) == (5, 2)


@pytest.mark.parametrize("text, read", [
    ("Yes", "yes"), ("no", "no"), ("Yes.", "yes"), ("No, there is none", "no"), ("Nope", "no"),
    ("I think yes", "other"), ("Sure", "other"), ("yes and no", "yes"),
])
def test_mme_answer_reading(text: str, read: str) -> None:
    assert mme.parse(text) == read


def test_mme_perception_and_cognition_by_hand() -> None:
    rows = [
        ("existence", "a.jpg", "Yes", "Yes"),              # right
        ("existence", "a.jpg", "No, there is none", "No"),  # right  -> a.jpg both right
        ("existence", "b.jpg", "yes", "Yes"),              # right
        ("existence", "b.jpg", "Yes", "No"),               # wrong  -> b.jpg not both
        ("code_reasoning", "c.png", "Sure", "Yes"),        # other: wrong
        ("code_reasoning", "c.png", "no", "No"),           # right
    ]
    s = mme.score(rows)
    # existence: acc 3/4 = 75, acc+ 1/2 images = 50 -> 125; code_reasoning: 1/2 = 50, 0/1 = 0 -> 50
    assert s["existence/accuracy"] == pytest.approx(75.0) and s["existence/accuracy_plus"] == pytest.approx(50.0)
    assert s["perception"] == pytest.approx(125.0)
    assert s["cognition"] == pytest.approx(50.0)
    assert s["n"] == 6
