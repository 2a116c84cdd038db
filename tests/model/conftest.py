"""Fixtures of the eve_model tests: tiny preset, random teacher, a mixed batch."""

from __future__ import annotations

import pytest
import torch
from eve_model_testutils import make_batch, make_image

from eve_model import EveForCausalLM, EveImageProcessor, get_preset


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
