"""Helpers and fixtures of the eve_model tests; test modules import the fixtures they use from here."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from eve_model import IGNORE_INDEX, IMAGE_TOKEN_INDEX, EveForCausalLM, EveImageProcessor, get_preset


def make_image(width: int, height: int, seed: int = 0) -> Image.Image:
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=gen, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def make_batch(proc: EveImageProcessor, samples: list[tuple[Image.Image | None, list[int]]], pad_to: int | None = None):
    """samples: (image or None, text token ids). Plain-stage layout: [BOS, <image>?, text...]."""
    rows, images, clips = [], [], []
    for image, text in samples:
        ids = [1] + ([IMAGE_TOKEN_INDEX] if image is not None else []) + text
        rows.append(ids)
        im, cl = proc(image)
        images.append(im)
        clips.append(cl)
    t = pad_to or max(len(r) for r in rows)
    input_ids = torch.zeros(len(rows), t, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), t, dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.tensor(r)
        attention_mask[i, : len(r)] = 1
    labels = torch.where((attention_mask == 1) & (input_ids > 1), input_ids, IGNORE_INDEX)
    return dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                images=torch.stack(images), images_clip=torch.stack(clips))


@pytest.fixture(scope="session")
def tiny_config():
    return get_preset("tiny")


@pytest.fixture(scope="session")
def tiny_proc(tiny_config):
    return EveImageProcessor.from_config(tiny_config)


@pytest.fixture
def tiny_model(tiny_config):
    torch.manual_seed(0)
    return EveForCausalLM(tiny_config)


@pytest.fixture(scope="session")
def tiny_batch(tiny_proc):
    """Mixed batch: wide image, tall image, text-only; different text lengths (right padding)."""
    return make_batch(tiny_proc, [
        (make_image(300, 200, 1), [10, 11, 12, 13]),
        (make_image(90, 220, 2), [20, 21]),
        (None, [30, 31, 32, 33, 34, 35]),
    ])
