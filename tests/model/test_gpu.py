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


@pytest.mark.parametrize("attention", ["varlen", "flex"])
def test_mask_free_attention_matches_masked_sdpa_in_bf16(attention):
    """Packed batch, bf16 on CUDA: the FlashAttention varlen kernel / compiled FlexAttention
    against masked SDPA, loss and gradients within bf16 tolerance."""
    from test_packed_forward import pack

    from eve_model.attention import varlen_kernel_available

    cfg = get_preset("tiny", hidden_size=256, num_attention_heads=4, num_key_value_heads=4, intermediate_size=512)
    if attention == "varlen" and not varlen_kernel_available("cuda", torch.bfloat16):
        pytest.skip("no FlashAttention varlen kernel on this GPU")
    torch.manual_seed(0)
    model = EveForCausalLM(cfg).to("cuda", torch.bfloat16).train()
    set_trainable(model, "sft")
    proc = EveImageProcessor.from_config(cfg)
    batch = make_batch(proc, [(make_image(300, 200, 1), list(range(10, 40))), (None, list(range(5, 60))),
                              (make_image(90, 220, 2), [7, 8, 9]), (None, [3, 4, 5, 6])])
    batch = {k: v.cuda() for k, v in pack(batch, [[0, 1], [2, 3]]).items()}
    results = []
    for kind in ("sdpa", attention):
        model.attention = kind
        model.zero_grad(set_to_none=True)
        out = model(**batch)
        out.loss.backward()
        results.append((out.loss.float(), {n: p.grad.float().clone() for n, p in model.named_parameters()
                                           if p.grad is not None}))
    (ref, g_ref), (got, g_got) = results
    assert model.attention_kind(torch.device("cuda"), torch.bfloat16) == attention
    torch.testing.assert_close(got, ref, rtol=2e-2, atol=2e-2)
    for name, g in g_ref.items():
        scale = g.abs().max().clamp_min(1e-6)
        assert ((g_got[name] - g).abs().max() / scale).item() < 0.1, name
