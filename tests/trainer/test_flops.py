"""Honest step FLOPs: real tokens only, a frozen LLM at 4N, attention per sample, images priced."""

from __future__ import annotations

import io

import pytest
import torch

from eve_model import get_preset
from eve_trainer.flops import step_flops
from eve_trainer.progress import Progress


def test_llm_term_is_6n_trained_and_4n_frozen():
    cfg = get_preset("eve-7b")
    trained, frozen = step_flops(cfg, llm_trains=True), step_flops(cfg, llm_trains=False)
    n_llm = trained.per_token / 6
    assert 6.4e9 < n_llm < 6.5e9  # LLaMA-7B: 6.48e9 in the decoder layers
    assert frozen.per_token == pytest.approx(4 * n_llm)
    assert trained.per_target == 6 * 4096 * 32000 and frozen.per_target == 4 * 4096 * 32000
    assert trained.per_len_sq == 12 * 32 * 4096
    # vision and teacher do not depend on the LLM being frozen
    assert (trained.per_patch, trained.per_image) == (frozen.per_patch, frozen.per_image)


def test_batch_flops_count_real_samples_only():
    f = step_flops(get_preset("tiny"), llm_trains=True)
    lengths, grids = torch.tensor([10, 3]), torch.tensor([[2, 3]])
    want = (f.per_token * 13 + f.per_len_sq * (100 + 9) + f.per_patch * 6 + f.per_visual_token * (1 + 2 * 4)
            + f.per_image + f.per_target * 5)
    assert float(f.of_batch(lengths, grids, 5)) == pytest.approx(want)
    # packing or padding the same samples changes nothing: only lengths and grids enter
    assert float(f.of_batch(lengths, torch.zeros(0, 2))) == pytest.approx(f.per_token * 13 + f.per_len_sq * 109)
    # the attention term is per sample: one sample of 13 costs more than 10 + 3
    assert float(f.of_batch(torch.tensor([13]), None)) > float(f.of_batch(lengths, None))


def test_nominal_per_token_7b_at_2048():
    f = step_flops(get_preset("eve-7b"), llm_trains=True)
    text = f.nominal_per_token(2048)
    assert text == pytest.approx(f.per_token + f.per_target + f.per_len_sq * 2048)
    assert f.nominal_per_token(2048, (24, 24)) > text  # an image adds PEL, PAL and teacher work


def test_progress_line_shows_real_tokens_padding_and_mfu():
    out = io.StringIO()
    p = Progress("line", total_steps=2, stream=out)
    p.start(0)
    p.step(1, {"loss": 1.0, "lr": 1e-4, "samples_per_s": 2.0, "tokens_per_s": 1234.0, "padding_fraction": 0.25,
               "mfu": 0.412})
    line = out.getvalue()
    assert "1234 tok/s" in line and "pad 25%" in line and "MFU 41.2%" in line
