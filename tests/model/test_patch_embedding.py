"""PEL: batched == per-sample reference, token layout, the pitfalls of eve-v1.md 9.1-9.4."""

from __future__ import annotations

import pytest
import torch
from support.eve_model_testutils import make_image

from eve_model import EveImageProcessor, get_preset
from eve_model.patch_embedding import GlobalAttention, LocalAttention, VisionTokenizer


def _mixed_batch(proc, sizes):
    return torch.stack([proc(make_image(w, h, i) if w else None)[0] for i, (w, h) in enumerate(sizes)])


@pytest.fixture(scope="module")
def tokenizer64():
    torch.manual_seed(0)
    return VisionTokenizer(64, 14, 2, 8).double()


def test_batched_equals_per_sample(tokenizer64):
    proc = EveImageProcessor.from_config(get_preset("tiny"))
    images = _mixed_batch(proc, [(300, 200), (90, 220), (0, 0), (224, 224), (500, 60)]).double()
    fast, ref = tokenizer64(images), tokenizer64.forward_reference(images)
    assert fast.lengths == ref.lengths == [1 + h * (w + 1) for h, w in fast.grid_hw]
    assert fast.grid_hw[2] == (8, 8)  # text-only: the reference's dummy 16x16-patch crop
    torch.testing.assert_close(fast.tokens, ref.tokens, rtol=0, atol=1e-12)
    params = list(tokenizer64.parameters())
    g_fast = torch.autograd.grad(fast.tokens.pow(2).sum(), params)
    g_ref = torch.autograd.grad(ref.tokens.pow(2).sum(), params)
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_batched_equals_per_sample_fp32_odd_offsets():
    """Crops starting on odd patches (not produced by the processor) still match in fp32."""
    torch.manual_seed(1)
    vt = VisionTokenizer(32, 14, 2, 8)
    images = torch.randn(3, 4, 224, 224)
    images[:, 3] = 0
    images[0, 3, 14:210, 28:168] = 1
    images[1, 3, 42:98, 14:224] = 1
    images[2, 3, 0:28, 0:28] = 1
    torch.testing.assert_close(vt(images).tokens, vt.forward_reference(images).tokens, rtol=1e-5, atol=1e-5)


def test_token_order_cls_first_spl_after_every_row(tokenizer64):
    proc = EveImageProcessor.from_config(get_preset("tiny"))
    images = _mixed_batch(proc, [(300, 200)]).double()
    out = tokenizer64(images)
    (h, w), seq = out.grid_hw[0], out.tokens
    spl = tokenizer64.split_embedding.double()
    for row in range(h):
        torch.testing.assert_close(seq[1 + row * (w + 1) + w], spl)  # SPL ends every row incl. the last
    assert seq.shape[0] == 1 + h * (w + 1)
    assert not torch.allclose(seq[0], spl)


def _naive_local(att: LocalAttention, feats: torch.Tensor) -> torch.Tensor:
    """Loop oracle written from the spec: scale width**-0.5, LN on q/kv inputs, residual un-normalised."""
    c, hh, ww = feats.shape
    s, nh = att.conv_stride, att.num_heads
    out = []
    for y in range(hh // s):
        for x in range(ww // s):
            win = feats[:, y * s:(y + 1) * s, x * s:(x + 1) * s].reshape(c, -1).t()  # [s*s, C]
            pooled = win.mean(0)
            q = att.q[1].weight @ torch.nn.functional.layer_norm(pooled, (c,), att.q[0].weight, att.q[0].bias)
            kv = torch.nn.functional.layer_norm(win, (c,), att.kv[0].weight, att.kv[0].bias) @ att.kv[1].weight.t()
            k, v = kv[:, :c], kv[:, c:]
            heads = []
            for hd in range(nh):
                sl = slice(hd * c // nh, (hd + 1) * c // nh)
                a = torch.softmax((k[:, sl] @ q[sl]) * c**-0.5, 0)
                heads.append(a @ v[:, sl])
            out.append(pooled + att.proj(torch.cat(heads)))
    return torch.stack(out)


def test_ca1_matches_spec_oracle():
    torch.manual_seed(2)
    att = LocalAttention(16, 2, 8).double()
    feats = torch.randn(16, 4, 6, dtype=torch.double)
    fast = att(feats.unfold(1, 2, 2).unfold(2, 2, 2).reshape(16, 6, 4).permute(1, 2, 0))
    torch.testing.assert_close(fast, _naive_local(att, feats))
    torch.testing.assert_close(att.forward_grid(feats[None])[0], fast)


def test_module_structure_pitfalls():
    vt = VisionTokenizer(64, 14, 2, 8)
    assert vt.patch_embedding.bias is None  # 9.3 conv without bias
    for att in (vt.local_attention, vt.global_attention):
        assert att.q[1].bias is None and att.kv[1].bias is None and att.proj.bias is not None
        assert isinstance(att.q[0], torch.nn.LayerNorm) and isinstance(att.kv[0], torch.nn.LayerNorm)
        assert att.scale == 64**-0.5  # 9.1 full width, not head dim
    assert not any("pos" in n for n, _ in vt.named_parameters())  # no positional embedding


def test_global_attention_padding_is_ignored():
    torch.manual_seed(3)
    att = GlobalAttention(16, 8).double()
    cls, tokens = torch.randn(16, dtype=torch.double), torch.randn(2, 5, 16, dtype=torch.double)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    out = att(cls, tokens, mask)
    torch.testing.assert_close(out[0], att.forward_reference(cls, tokens[:1, :3])[0])
    torch.testing.assert_close(out[1], att.forward_reference(cls, tokens[1:])[0])


def test_bad_masks():
    vt = VisionTokenizer(16, 14, 2, 8)
    with pytest.raises(ValueError, match="mask channel must be constant"):
        images = torch.zeros(1, 4, 56, 56)
        images[0, 3, :7, :] = 1
        vt(images)
    with pytest.raises(ValueError, match=r"\[B, 4, S, S\]"):
        vt(torch.zeros(1, 3, 56, 56))


def test_explicit_batched_path_equals_reference(tokenizer64, monkeypatch):
    """The non-absorbed batched path (used under ZeRO-3, where weights are gathered per module)."""
    from eve_model.patch_embedding import _PooledCrossAttention

    monkeypatch.setattr(_PooledCrossAttention, "absorb", False)
    proc = EveImageProcessor.from_config(get_preset("tiny"))
    images = _mixed_batch(proc, [(300, 200), (0, 0), (500, 60)]).double()
    torch.testing.assert_close(tokenizer64(images).tokens, tokenizer64.forward_reference(images).tokens)


def test_zero3_partitioned_weights_switch_to_explicit_path():
    att = LocalAttention(16, 2, 8)
    assert att._use_absorbed()
    att.kv[1].weight.ds_id = 0  # what DeepSpeed ZeRO-3 puts on its partitioned parameters
    assert not att._use_absorbed()


def test_conv_module_path_equals_matmul_path(tokenizer64):
    proc = EveImageProcessor.from_config(get_preset("tiny"))
    images = _mixed_batch(proc, [(300, 200), (90, 220)]).double()
    expected = tokenizer64(images).tokens
    tokenizer64.patch_embedding.weight.ds_id = 0  # ZeRO-3 marker -> conv module call
    try:
        torch.testing.assert_close(tokenizer64(images).tokens, expected)
    finally:
        del tokenizer64.patch_embedding.weight.ds_id
