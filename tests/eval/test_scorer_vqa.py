"""VQA accuracy, the EvalAI normaliser (m4c_evaluator.py) and TextVQA, by hand."""

from __future__ import annotations

import pytest

from eve_trainer.evaluation.scorers.vqa import normalise, score_textvqa, score_vqa, soft_accuracy, textvqa_question


@pytest.mark.parametrize("answer, expected", [
    ("Two", "2"),                        # number words -> digits
    ("none", "0"),
    ("The cat", "cat"),                  # articles removed
    ("a dog.", "dog"),                   # a "." not followed by a digit goes
    ("3.5", "3.5"),                      # ... one followed by a digit stays
    ("Yes!", "yes"),                     # "!" with no space beside it: replaced by a space, then trimmed
    ("dont", "don't"),                   # contractions restored
    ("10,000", "10000"),                 # commas go first (word_tokenize)
    ("hello-world", "hello world"),      # "-" without a space beside it -> space
    ("hello - world", "hello world"),    # " -" in the text -> deleted
    ("it's red", "it 's red"),           # "'s" split off
    ("  Red\tcar\n", "red car"),
    ("x" + "." * 40, "x" + "." * 8),     # the reference's sub(..., re.UNICODE): at most 32 dots removed
    ("", ""),
])
def test_normalisation(answer: str, expected: str) -> None:
    assert normalise(answer) == expected


def test_soft_accuracy_by_hand() -> None:
    gt = ["2"] * 3 + ["three"] * 7
    # pred "two" -> "2": leaving out one of the three "2": 2 matches -> 2/3 (3 times);
    # leaving out a "3": 3 matches -> 1 (7 times); mean (3 * 2/3 + 7) / 10 = 0.9
    assert soft_accuracy("two", gt) == pytest.approx(0.9)
    assert soft_accuracy("3", gt) == pytest.approx(1.0)   # 6 or 7 matches among any 9: min(1, ./3) = 1
    assert soft_accuracy("4", gt) == 0.0
    # a single human gave the answer: 0 when it is left out, 1/3 the other 9 times: 9 * 1/3 / 10 = 0.3
    assert soft_accuracy("cat", ["cat"] + ["dog"] * 9) == pytest.approx(0.3)


def test_textvqa_question_from_each_prompt_shape() -> None:
    assert textvqa_question("What is written?\nAnswer the question using a single word or phrase.") == \
        "what is written?"
    assert textvqa_question("OCR tokens: STOP, sign. Question: What does the Sign say? Short answer:") == \
        "what does the sign say?"
    assert textvqa_question("What brand?\nReference OCR token: Nike\nAnswer briefly.") == "what brand?"
    assert textvqa_question("Reference OCR token: Nike\nWhat brand?\nAnswer briefly.") == "what brand?"
    with pytest.raises(ValueError, match="cannot find the question"):
        textvqa_question("one line only")


def test_textvqa_score_by_hand() -> None:
    annotations = {"data": [
        {"image_id": "img1", "question": "What is written?", "answers": ["stop"] * 10},
        {"image_id": "img2", "question": "What number?", "answers": ["2"] * 3 + ["3"] * 7},
    ]}
    answers = [
        {"question_id": "img1", "prompt": "What is written?\nAnswer the question using a single word or phrase.",
         "text": "STOP."},                                               # "stop": 1.0
        {"question_id": "img2", "prompt": "What number?\nAnswer the question using a single word or phrase.",
         "text": "Two"},                                                 # "2": 0.9 (as above)
    ]
    scores = score_textvqa(answers, annotations)
    assert scores["accuracy"] == pytest.approx((1.0 + 0.9) / 2)          # 0.95
    assert scores["n"] == 2
    with pytest.raises(KeyError, match="no annotation"):
        score_textvqa([{**answers[0], "question_id": "nope"}], annotations)


def test_vqa_with_known_answers_skips_questions_without_them() -> None:
    answers = [{"question_id": 1, "text": "yes"}, {"question_id": 2, "text": "no"}]
    scores = score_vqa(answers, {1: ["yes"] * 10, 2: []})
    assert scores == {"accuracy": 1.0, "n": 1}
