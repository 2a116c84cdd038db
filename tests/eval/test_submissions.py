"""The files for the benchmarks scored by their servers, in the formats they take."""

from __future__ import annotations

import io
import json

import pytest

from eve_trainer.evaluation.scorers import submissions


def test_vqav2_covers_the_whole_split_with_normalised_answers() -> None:
    answers = [{"question_id": 1, "text": "Two dogs."}]
    out = json.loads(submissions.vqav2(answers, [{"question_id": 1}, {"question_id": 2}]))
    assert out == [{"question_id": 1, "answer": "2 dogs"}, {"question_id": 2, "answer": ""}]


def test_vizwiz_by_image_and_every_question_answered() -> None:
    answers = [{"question_id": 7, "text": "Unanswerable."}]
    out = json.loads(submissions.vizwiz(answers, [{"question_id": 7, "image": "VizWiz_test_00000007.jpg"}]))
    assert out == [{"image": "VizWiz_test_00000007.jpg", "answer": "unanswerable"}]
    with pytest.raises(KeyError, match="no answer for 1"):
        submissions.vizwiz(answers, [{"question_id": 8, "image": "x.jpg"}])


def test_mmvet_keys() -> None:
    assert json.loads(submissions.mmvet([{"question_id": 0, "text": "a cat"}])) == {"v1_0": "a cat"}


def test_seed_lines_and_accuracy_per_type_by_hand() -> None:
    answers = [{"question_id": "q1", "text": "A"}, {"question_id": "q2", "text": "A"},
               {"question_id": "q3", "text": "C"}]
    lines = [json.loads(line) for line in submissions.seed(answers).decode().splitlines()]
    assert lines[0] == {"question_id": "q1", "prediction": "A"}
    annotation = {"question_type": {"Scene Understanding": 1, "Instance Identity": 2}, "questions": [
        {"question_id": "q1", "question_type_id": 1, "answer": "A", "data_type": "image"},
        {"question_id": "q2", "question_type_id": 1, "answer": "B", "data_type": "image"},
        {"question_id": "q3", "question_type_id": 2, "answer": "C", "data_type": "image"},
        {"question_id": "q4", "question_type_id": 2, "answer": "D", "data_type": "video"}]}
    s = submissions.seed_accuracy(answers, annotation)
    # image questions only: Scene 1 of 2, Instance 1 of 1, all 2 of 3
    assert s["Scene Understanding/accuracy"] == 0.5 and s["Instance Identity/accuracy"] == 1.0
    assert s["accuracy"] == pytest.approx(2 / 3) and s["n"] == 3


def test_mmbench_sheet_columns_as_the_reference() -> None:
    from openpyxl import load_workbook

    rows = [{"index": "0", "question": "Q?", "hint": "h", "A": "x", "B": "y", "C": "", "D": "", "answer": "A",
             "category": "c", "source": "s", "l2-category": "l2", "comment": "", "split": "dev", "image": "b64"}]
    header, values = submissions.mmbench_rows([{"question_id": 0, "text": "B"}], rows)
    # hint, category, source, image, comment, l2-category dropped; prediction inserted as column 7
    assert header == ["index", "question", "A", "B", "C", "D", "prediction", "answer", "split"]
    assert values == [[0, "Q?", "x", "y", None, None, "B", "A", "dev"]]   # typed as pandas.read_table would
    sheet = load_workbook(io.BytesIO(submissions.mmbench_xlsx([{"question_id": 0, "text": "B"}], rows))).active
    assert [c.value for c in sheet[1]] == header and sheet["G2"].value == "B"
