"""The mask-free attention paths (eve_model/attention.py) equal today's masked SDPA in fp32 on
CPU: varlen (its per-segment fallback here) in forward, per-sample losses and every gradient;
FlexAttention in no-grad forwards (torch has no CPU backward for it) and through its SDPA
fallback when gradients are needed. Generation with a KV cache still works after the switch."""

from __future__ import annotations

import logging

import pytest
import torch
from support.eve_model_testutils import make_batch, make_image, tiny_config, tiny_proc  # noqa: F401
from test_packed_forward import pack, per_sample_losses

from eve_model import EveForCausalLM, attention, set_trainable
from eve_model.attention import resolve_attention, segments_of

ROWS = [[0, 1], [2, 4, 3]]


@pytest.fixture(scope="module")
def samples(tiny_proc):
    return make_batch(tiny_proc, [
        (make_image(300, 200, seed=1), [10, 11, 12, 13]),
        (None, [30, 31, 32, 33, 34, 35, 36]),
        (make_image(90, 220, seed=2), [20, 21]),
        (make_image(224, 224, seed=3), [40, 41, 42, 43, 44, 45]),
        (None, [50, 51, 52]),
    ])


def run(model, batch, attention: str):
    model.attention = attention
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same(out, ref, rows, atol=1e-5):
    real = ref.attention_mask.bool()  # padding positions attend differently and feed no loss
    torch.testing.assert_close(out.logits[real], ref.logits[real], rtol=0, atol=atol)
    for name in ("loss", "lm_loss", "align_loss"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), rtol=0, atol=atol, msg=name)
    a, b = per_sample_losses(ref, rows), per_sample_losses(out, rows)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=atol * max(1.0, float(a[k].detach().abs())))


@pytest.mark.parametrize("stage", ["prealign", "sft"])
@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_varlen_equals_masked_sdpa(tiny_config, samples, stage, layout):
    torch.manual_seed(0)
    model = EveForCausalLM(tiny_config).float()
    set_trainable(model, stage)
    model.train()
    rows = ROWS if layout == "packed" else None
    batch = pack(samples, ROWS) if layout == "packed" else samples
    ref, g_ref = run(model, batch, "sdpa")
    out, g_out = run(model, batch, "varlen")
    assert model.attention_kind(out.logits.device, torch.float32) == "varlen"
    model.attention = "auto"  # on CPU: varlen for packed rows, masked SDPA for one sample per row
    assert model.attention_kind(out.logits.device, torch.float32, packed=layout == "packed") == \
        ("varlen" if layout == "packed" else "sdpa")
    assert float(ref.align_loss.detach()) > 0
    assert_same(out, ref, rows)
    assert g_out.keys() == g_ref.keys() and g_ref
    for name, g in g_ref.items():
        torch.testing.assert_close(g_out[name], g, rtol=0, atol=1e-5, msg=name)


def test_flex_forward_equals_masked_sdpa_and_falls_back_for_gradients(tiny_config, samples):
    torch.manual_seed(0)
    model = EveForCausalLM(tiny_config).float().eval()
    batch = pack(samples, ROWS)
    with torch.no_grad():
        model.attention = "sdpa"
        ref = model(**batch)
        model.attention = "flex"
        out = model(**batch)  # FlexAttention with a document BlockMask, eager on CPU
    assert_same(out, ref, ROWS)
    # With gradients, CPU FlexAttention cannot run: the forward falls back to masked SDPA.
    set_trainable(model, "sft")
    model.train()
    ref, g_ref = run(model, batch, "sdpa")
    out, g_out = run(model, batch, "flex")
    assert_same(out, ref, ROWS, atol=0)
    assert all(torch.equal(g_out[n], g) for n, g in g_ref.items())


def test_generation_with_kv_cache_unchanged_after_the_switch(tiny_config, tiny_proc, samples):
    torch.manual_seed(0)
    model = EveForCausalLM(tiny_config).float().eval()
    prompt = make_batch(tiny_proc, [(make_image(300, 200, seed=1), [10, 11]), (None, [30, 31, 32, 33])])
    kwargs = dict(input_ids=prompt["input_ids"], images=prompt["images"], attention_mask=prompt["attention_mask"],
                  max_new_tokens=5, do_sample=False, pad_token_id=0)
    before = model.generate(**kwargs)
    model.attention = "varlen"
    with torch.no_grad():
        model(**pack(samples, ROWS))  # switches the decoder to the "eve" attention implementation
    assert model.config._attn_implementation == "eve"
    torch.testing.assert_close(model.generate(**kwargs), before, rtol=0, atol=0)


def test_segments_cover_samples_and_padding():
    seg = segments_of([[3, 2], [4]], 6, "cpu")
    assert seg.bounds == [0, 3, 5, 6, 10, 12]
    assert seg.doc.tolist() == [[0, 0, 0, 1, 1, 2], [3, 3, 3, 3, 4, 4]]
    assert seg.max_seqlen == 4 and seg.cu_seqlens.dtype == torch.int32


def test_choice_by_device_and_dtype_logged_once(caplog, monkeypatch):
    monkeypatch.setattr(attention, "_LOGGED", set())
    with caplog.at_level(logging.INFO, logger="eve_model.attention"):
        auto = resolve_attention("auto", "cpu", torch.float32)
        assert auto.kind == "varlen" and auto.packed_only  # packed rows; one sample per row: masked SDPA
        assert resolve_attention("auto", "cpu", torch.float32) == auto
        assert resolve_attention("varlen", "cpu", torch.float32).kind == "varlen"
        assert resolve_attention("flex", "cpu", torch.float32).kind == "flex"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and lines[0].startswith("attention: auto: packed rows: per-segment causal SDPA")
    assert "per-segment causal SDPA" in lines[1] and "forward-only" in lines[2]
    # on GPU, auto keeps the path measured there until gpu_suite.sh has measured varlen and flex
    assert resolve_attention("auto", "cuda", torch.bfloat16).kind == "sdpa"
    with pytest.raises(ValueError, match="allowed: auto, sdpa, flex, varlen"):
        resolve_attention("flash", "cpu", torch.float32)
