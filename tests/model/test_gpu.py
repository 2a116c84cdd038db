"""bf16 on CUDA: the training step runs, gradients reach exactly the trainable set, PEL paths agree.

Skipped without a GPU (CI is CPU-only); run on a GPU machine with ``python -m pytest tests/model -m gpu``.
"""

from __future__ import annotations

import pytest
import torch
from support.eve_model_testutils import make_batch, make_image

from eve_model import EveForCausalLM, EveImageProcessor, get_preset, set_trainable

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("stage", ["prealign", "sft"])
def test_bf16_training_step_on_cuda(stage):
    cfg = get_preset("tiny")
    torch.manual_seed(0)
    model = EveForCausalLM(cfg).to("cuda", torch.bfloat16).train()
    model.gradient_checkpointing_enable()
    proc = EveImageProcessor.from_config(cfg)
    batch = make_batch(proc, [(make_image(300, 200, 1), [10, 11, 12]), (None, [5, 6]), (make_image(90, 220, 2), [7])])
    batch = {k: v.cuda() for k, v in batch.items()}
    trainable = set_trainable(model, stage)
    out = model(**batch)
    assert torch.isfinite(out.loss) and out.align_loss > 0
    out.loss.backward()
    assert sorted(n for n, p in model.named_parameters() if p.grad is not None) == trainable
    with torch.no_grad():
        fast = model.model.vision_tower(batch["images"]).tokens.float()
        ref = model.model.vision_tower.forward_reference(batch["images"]).tokens.float()
    assert ((fast - ref).abs().max() / ref.abs().max()).item() < 2e-2
