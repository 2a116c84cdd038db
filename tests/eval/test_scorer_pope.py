"""POPE scoring on hand-made answers, worked out by hand (eve/eval/eval_pope.py's rules)."""

from __future__ import annotations

import pytest

from eve_trainer.evaluation.scorers import pope


@pytest.mark.parametrize("text, expected", [
    ("Yes", "yes"),
    ("No", "no"),
    ("no", "no"),
    ("NO", "yes"),                                   # only "No", "no" and "not" count: "NO" reads yes
    ("Yes, there is a dog.", "yes"),
    ("No, there is no dog.", "no"),
    ("There is not a dog.", "no"),
    ("Yes. But no cat.", "yes"),                     # only the text before the first "." counts
    ("No,", "no"),                                   # commas are dropped before splitting
    ("Nope", "yes"),                                 # a word, not a prefix
    ("", "yes"),                                     # empty answer: yes (no negative word)
    ("I cannot tell, not sure", "no"),
    ("nothing", "yes"),
])
def test_normalisation(text: str, expected: str) -> None:
    assert pope.normalise(text) == expected


def test_one_split_by_hand() -> None:
    preds = ["Yes", "No", "Yes, it is.", "no", "Yes"]
    labels = ["yes", "no", "no", "yes", "yes"]
    s = pope.score_split(preds, labels)
    # pred: y n y n y ; gold: y n n y y -> TP=2 (1st, 5th), FP=1 (3rd), TN=1 (2nd), FN=1 (4th)
    assert (s["tp"], s["fp"], s["tn"], s["fn"]) == (2, 1, 1, 1)
    assert s["accuracy"] == pytest.approx(3 / 5)          # (TP+TN)/n = 3/5
    assert s["precision"] == pytest.approx(2 / 3)         # TP/(TP+FP) = 2/3
    assert s["recall"] == pytest.approx(2 / 3)            # TP/(TP+FN) = 2/3
    assert s["f1"] == pytest.approx(2 / 3)                # 2PR/(P+R) = 2/3 when P = R
    assert s["yes_ratio"] == pytest.approx(3 / 5)         # 3 yes of 5


def test_categories_paired_by_position_and_averaged() -> None:
    answers = [{"text": t} for t in ["yes", "yes", "no", "no"]]
    categories = ["random", "popular", "random", "popular"]
    labels = {"random": ["yes", "yes"], "popular": ["no", "no"]}
    s = pope.score(answers, categories, labels)
    # random: preds y n vs y y -> TP=1 FN=1: acc 1/2, P 1, R 1/2, F1 2*(1*.5)/(1.5) = 2/3, yes 1/2
    assert s["random/f1"] == pytest.approx(2 / 3)
    assert s["random/precision"] == 1.0 and s["random/recall"] == 0.5
    # popular: preds y n vs n n -> FP=1 TN=1: acc 1/2, P 0/1 = 0, R 0/0 -> 0 (the reference divides by 0)
    assert (s["popular/fp"], s["popular/tn"]) == (1, 1) and s["popular/recall"] == 0.0 and s["popular/f1"] == 0.0
    assert s["accuracy"] == pytest.approx(0.5)            # mean of 1/2 and 1/2
    assert s["f1"] == pytest.approx((2 / 3 + 0) / 2)      # mean over the categories = 1/3
    assert s["n"] == 4


def test_count_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="pairs them by position"):
        pope.score_split(["yes"], ["yes", "no"])
