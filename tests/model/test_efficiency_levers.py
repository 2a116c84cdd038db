"""The FLOP and memory levers change nothing numerically (fp32, CPU): the fused linear +
cross-entropy over labelled positions and the selective activation checkpointing give the plain
path's loss and gradients; compiled decoder layers trace through the mask-free attention."""

from __future__ import annotations

import pytest
import torch
from support.eve_model_testutils import make_batch, make_image, tiny_config, tiny_proc  # noqa: F401
from test_packed_forward import pack

from eve_model import EveForCausalLM, set_activation_checkpointing, set_trainable
from eve_model.fused_loss import fused_linear_cross_entropy


@pytest.fixture(scope="module")
def samples(tiny_proc):
    return make_batch(tiny_proc, [
        (make_image(300, 200, seed=1), [10, 11, 12, 13, 14, 15]),
        (None, [30, 31, 32, 33, 34, 35, 36]),
        (make_image(90, 220, seed=2), [20, 21]),
        (make_image(224, 224, seed=3), [40, 41, 42, 43, 44, 45]),
    ])


def step(model, batch):
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_grads_equal(got, want, atol=1e-5):
    assert got.keys() == want.keys() and want
    for name, g in want.items():
        torch.testing.assert_close(got[name], g, rtol=0, atol=atol, msg=name)


@pytest.mark.parametrize("stage,fused,chunk", [("sft", True, 3), ("sft", True, 1000), ("prealign", True, 4),
                                               ("sft", False, 3)])
def test_labelled_positions_loss_equals_full_logits(tiny_config, samples, stage, fused, chunk):
    torch.manual_seed(0)
    model = EveForCausalLM(tiny_config).float().train()
    set_trainable(model, stage)
    batch = pack(samples, [[0, 1], [2, 3]])
    full, g_full = step(model, batch)
    model.loss_chunk_tokens, model.loss_fused = chunk, fused
    out, g_out = step(model, batch)
    assert out.logits is None and full.logits is not None
    torch.testing.assert_close(out.lm_loss, full.lm_loss, rtol=0, atol=1e-5)
    assert_grads_equal(g_out, g_full)


def test_fused_linear_cross_entropy_against_autograd():
    torch.manual_seed(0)
    h = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 50, (37,))
    torch.autograd.gradcheck(lambda a, b: fused_linear_cross_entropy(a, b, y, 8), (h, w), fast_mode=True)
    ref = torch.nn.functional.cross_entropy(h @ w.t(), y, reduction="sum")
    torch.testing.assert_close(fused_linear_cross_entropy(h, w, y, 5), ref)
    with pytest.raises(ValueError, match="chunk=0"):
        fused_linear_cross_entropy(h, w, y, 0)


@pytest.mark.parametrize("every,part,expect", [(1, "layer", [0, 1, 2, 3]), (2, "layer", [0, 2]), (3, "mlp", [0, 3]),
                                               (1, "mlp", [0, 1, 2, 3])])
def test_selective_checkpointing_keeps_gradients(tiny_config, samples, every, part, expect):
    torch.manual_seed(0)
    model = EveForCausalLM(tiny_config).float().train()
    set_trainable(model, "sft")
    batch = pack(samples, [[0, 1], [2, 3]])
    _, g_plain = step(model, batch)
    assert set_activation_checkpointing(model, every=every, part=part) == expect
    layers = model.model.layers
    assert [i for i, lay in enumerate(layers) if lay.gradient_checkpointing] == (expect if part == "layer" else [])
    assert [i for i, lay in enumerate(layers) if "forward" in lay.mlp.__dict__] == (expect if part == "mlp" else [])
    _, g_ckpt = step(model, batch)
    assert_grads_equal(g_ckpt, g_plain)
    assert set_activation_checkpointing(model, every=0) == []
    assert not any(lay.gradient_checkpointing or "forward" in lay.mlp.__dict__ for lay in layers)
    with pytest.raises(ValueError, match="allowed: layer, mlp"):
        set_activation_checkpointing(model, every=1, part="attention")


def test_compiled_layers_with_varlen_attention_and_mlp_checkpointing(tiny_config, samples):
    """model.compile + model.attention=varlen + MLP checkpointing + fused loss, all at once
    (aot_eager: dynamo traces the path; inductor's code generation is the GPU run's business)."""
    torch.manual_seed(0)
    model = EveForCausalLM(tiny_config).float().train()
    set_trainable(model, "sft")
    batch = pack(samples, [[0, 1], [2, 3]])
    ref, g_ref = step(model, batch)
    for layer in model.model.layers:
        layer.compile(backend="aot_eager")
    model.attention, model.loss_chunk_tokens = "varlen", 4
    set_activation_checkpointing(model, every=2, part="mlp")
    out, g_out = step(model, batch)
    torch.testing.assert_close(out.loss, ref.loss, rtol=0, atol=1e-5)
    assert_grads_equal(g_out, g_ref)


def test_checkpointing_with_offload_keeps_gradients(tiny_config, samples):
    torch.manual_seed(0)
    model = EveForCausalLM(tiny_config).float().train()
    set_trainable(model, "sft")
    batch = pack(samples, [[0, 1], [2, 3]])
    _, g_plain = step(model, batch)
    assert set_activation_checkpointing(model, every=2, part="layer", offload=True) == [0, 2]
    _, g_ckpt = step(model, batch)
    assert_grads_equal(g_ckpt, g_plain)
    with pytest.raises(ValueError, match="offload only with part='layer'"):
        set_activation_checkpointing(model, every=2, part="mlp", offload=True)
