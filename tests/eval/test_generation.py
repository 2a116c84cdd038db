"""Batched, left-padded generation gives each question the answer it gets alone (fp32, CPU)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def tiny():
    import torch

    from eve_model import EveForCausalLM, EveImageProcessor, get_preset
    from eve_trainer.data import load_tokenizer

    torch.manual_seed(0)
    config = get_preset("tiny")
    return EveForCausalLM(config).eval(), load_tokenizer("builtin:tiny"), EveImageProcessor.from_config(config)


def test_batched_answers_equal_one_at_a_time(tiny) -> None:
    from PIL import Image

    from eve_model.inference import generate_batch, generate_text
    from eve_trainer.evaluation.runner import vicuna_v1_prompt

    model, tok, proc = tiny
    questions = ["Is there a red square in the image?", "What colour is it? Answer with one word.",
                 "Describe the picture in detail, please, with as many words as you like.", "Hi"]
    prompts = [vicuna_v1_prompt("<image>\n" + q) for q in questions[:3]] + [vicuna_v1_prompt(questions[3])]
    images = [Image.new("RGB", (40 + 30 * i, 24 + 11 * i), (200, 60 * i, 30)) for i in range(3)] + [None]
    batched = generate_batch(model, tok, proc, prompts, images, max_new_tokens=6)
    alone = [generate_batch(model, tok, proc, [p], [im], max_new_tokens=6)[0] for p, im in zip(prompts, images)]
    assert batched == alone
    # one at a time is generate_text's greedy answer (cut at EOS, stripped)
    assert alone[0] == generate_text(model, tok, proc, prompts[0], images[0], max_new_tokens=6).strip()
    text_only = generate_batch(model, tok, proc, prompts[3:], [None], max_new_tokens=6)
    assert text_only == alone[3:]


def test_the_prompt_is_vicuna_v1_with_the_image_first() -> None:
    from eve_trainer.evaluation.questions import Question
    from eve_trainer.evaluation.runner import user_turn, vicuna_v1_prompt

    q = Question(0, 1, "Is there a dog?", "a.jpg")
    assert vicuna_v1_prompt(user_turn(q)) == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\nIs there a dog? ASSISTANT:")
    assert user_turn(Question(0, 1, "Why?", None)) == "Why?"


def test_an_image_prompt_without_its_image_is_refused(tiny) -> None:
    from eve_model.inference import generate_batch

    model, tok, proc = tiny
    with pytest.raises(ValueError, match=r"prompts\[0\] has <image> but images\[0\] is None"):
        generate_batch(model, tok, proc, ["<image>\nhi"], [None])
