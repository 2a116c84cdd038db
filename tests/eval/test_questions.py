"""Question files, prompts and the split across ranks, as the reference reads them."""

from __future__ import annotations

import json

import pytest

from eve_trainer.evaluation.questions import (
    BenchDataError,
    chunk_bounds,
    mmbench_questions,
    parse_jsonl,
    science_questions,
    vqa_questions,
)


@pytest.mark.parametrize("total, world, bounds", [
    (10, 4, [(0, 3), (3, 6), (6, 9), (9, 10)]),    # ceil(10/4) = 3 a chunk
    (6, 4, [(0, 2), (2, 4), (4, 6), (6, 6)]),      # ceil(6/4) = 2: the last rank gets nothing
    (3, 1, [(0, 3)]),
    (2, 3, [(0, 1), (1, 2), (2, 2)]),
])
def test_contiguous_chunks_of_ceil_n_over_world(total: int, world: int, bounds: list) -> None:
    assert [chunk_bounds(total, world, r) for r in range(world)] == bounds


def test_vqa_question_file() -> None:
    blob = b'{"question_id": 1, "image": "a.jpg", "text": "Q?\\nAnswer briefly.", "category": "x"}\n\n'
    (q,) = vqa_questions(parse_jsonl(blob, "q.jsonl"), "q.jsonl")
    assert (q.question_id, q.image, q.text, q.prompt, q.record["category"]) == (1, "a.jpg", "Q?\nAnswer briefly.",
                                                                               "Q?\nAnswer briefly.", "x")
    with pytest.raises(BenchDataError, match="line 1: missing text"):
        vqa_questions([{"question_id": 1}], "q.jsonl")
    with pytest.raises(BenchDataError, match="line 2: not valid JSON"):
        parse_jsonl(b'{}\n{nope\n', "q.jsonl")


def test_science_prompt_and_answer_prompt() -> None:
    problems = [{"id": "4", "image": "4/image.png",
                 "conversations": [{"from": "human", "value": "<image>\nWhich is hot?\nA. ice\nB. fire"}]},
                {"id": "5", "conversations": [{"from": "human", "value": "Which is cold?\nA. ice\nB. fire"}]}]
    img, txt = science_questions(problems, "questions.json")
    suffix = "Answer with the option's letter from the given choices directly."
    assert img.text == f"Which is hot?\nA. ice\nB. fire\n{suffix}" and img.image == "4/image.png"
    assert img.prompt == f"<image>\nWhich is hot?\nA. ice\nB. fire\n{suffix}"   # IMG split marker
    assert txt.image is None and txt.prompt == f"Which is cold?\nA. ice\nB. fire\n{suffix}"


def test_mmbench_prompt_stops_at_the_first_absent_option() -> None:
    header = "index\tquestion\thint\tA\tB\tC\tD\tanswer\timage\n"
    blob = (header + "3\tWhat is it?\tnan\tcat\tdog\t\tbird\tA\taGVsbG8=\n"
            + "4\tWhich?\tA hint\tx\ty\tz\tw\tB\taGVsbG8=\n").encode()
    a, b = mmbench_questions(blob, "questions.tsv")
    assert a.question_id == 3 and a.text == ("What is it?\nA. cat\nB. dog\n"
                                              "Answer with the option's letter from the given choices directly.")
    assert a.prompt == "What is it?\nA. cat\nB. dog" and a.image_b64 == "aGVsbG8="
    assert b.prompt == "A hint\nWhich?\nA. x\nB. y\nC. z\nD. w"
    (cn,) = mmbench_questions((header + "1\tQ\t\ta\tb\t\t\tA\taGVsbG8=\n").encode(), "q.tsv", "cn")
    assert cn.text.endswith("\n请直接回答选项字母。")
    assert json.dumps(cn.record)  # the record keeps everything but the image
