"""EveForCausalLM on the tiny preset: splice, losses, stages, save/load, checkpointing, errors."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from support.eve_model_testutils import make_batch, make_image, tiny_batch, tiny_config, tiny_model, tiny_proc  # noqa: F401 (fixtures are used by name)

from eve_contract.names import STAGES
from eve_model import IGNORE_INDEX, IMAGE_TOKEN_INDEX, EveForCausalLM, EveImageProcessor, get_preset, set_trainable


def test_forward_splice_shapes(tiny_model, tiny_proc, tiny_batch):
    out = tiny_model(**tiny_batch)
    n0 = tiny_proc.num_image_tokens(300, 200)
    n1 = tiny_proc.num_image_tokens(90, 220)
    lengths = [1 + n0 + 4, 1 + n1 + 2, 1 + 6]
    assert out.logits.shape == (3, max(lengths), 1024)
    assert out.attention_mask.sum(1).tolist() == lengths
    assert (out.labels[0, 1:1 + n0] == IGNORE_INDEX).all() and out.labels[0, 1 + n0:].tolist() == [10, 11, 12, 13]
    assert out.labels[2, :7].tolist() == [IGNORE_INDEX, 30, 31, 32, 33, 34, 35]
    for t in (out.loss, out.lm_loss, out.align_loss):
        assert t.dim() == 0 and torch.isfinite(t)
    torch.testing.assert_close(out.loss, out.lm_loss + out.align_loss)


def test_padding_does_not_change_a_sample(tiny_model, tiny_proc, tiny_batch):
    """A sample's logits are the same alone and inside a right-padded mixed batch."""
    tiny_model.eval()
    full = tiny_model(**tiny_batch)
    for i in range(3):
        one = {k: v[i:i + 1] for k, v in tiny_batch.items()}
        n = int(one["attention_mask"].sum())
        one = {k: v[:, :n] if v.dim() == 2 else v for k, v in one.items()}
        alone = tiny_model(**one)
        t = alone.logits.shape[1]
        torch.testing.assert_close(full.logits[i, :t], alone.logits[0], rtol=1e-4, atol=1e-4)


def test_align_loss_zero_without_teacher_input(tiny_model, tiny_batch):
    batch = dict(tiny_batch, images_clip=None)
    out = tiny_model.eval()(**batch)
    assert float(out.align_loss) == 0.0
    torch.testing.assert_close(out.loss, out.lm_loss)


def _reference_align_loss(model, batch):
    """The reference's per-sample VisionCompressor loop on stacked hidden states [B, T, L+1, D]."""
    cfg = model.config
    mm = model.prepare_multimodal_inputs(batch["input_ids"], batch["attention_mask"], batch["labels"], batch["images"])
    hs = model.model(inputs_embeds=mm.inputs_embeds, attention_mask=mm.attention_mask,
                     output_hidden_states=True).hidden_states
    allf = torch.stack(hs, dim=2)
    pal, teacher = model.model.vision_tower_compressor, model.model.vision_clip
    clip_feats = teacher(batch["images_clip"][:, :3])
    clip_masks = F.avg_pool2d(batch["images_clip"][:, 3:], cfg.patch_stride_clip)
    spans = {b: (s, h, w) for b, s, h, w in mm.image_spans}
    total, count = 0.0, 0
    for i in range(allf.shape[0]):
        if i in spans:
            s, h, w = spans[i]
            f = allf[i, s:s + 1 + h * (w + 1)].permute(1, 2, 0)[:, :, 1:]
            f = f.reshape(allf.shape[2], -1, h, w + 1)[:, :, :, :-1]
            if pal.patch_ratio > 1:
                f = F.avg_pool2d(f, pal.patch_ratio, pal.patch_ratio)
            f = f.flatten(2).permute(2, 0, 1)  # [N, L+1, D]
        else:
            f = allf[i, :73]
        feats = [f[:, j] for j in pal.layer_idx]
        pred = pal.fuse(feats)
        if i in spans:
            target = clip_feats[i][clip_masks[i, 0].flatten().bool()]
            total = total + 1 - F.cosine_similarity(pred, target, dim=-1).mean()
            count += 1
        else:
            total = total + 1 - F.cosine_similarity(pred, pred.detach(), dim=-1).mean()
    return total / max(count, 1)


@pytest.mark.parametrize("image_size", [224, 448])  # 448: HD-like, grid twice the teacher's -> 2x2 pool
def test_align_loss_matches_reference_loop(image_size):
    cfg = get_preset("tiny", image_size=image_size, mm_vision_tower=f"eve-tiny-{image_size}")
    assert cfg.patch_ratio == image_size // 224
    torch.manual_seed(0)
    model = EveForCausalLM(cfg).eval()
    proc = EveImageProcessor.from_config(cfg)
    batch = make_batch(proc, [(make_image(300, 200, 1), [10, 11]), (None, [5] * 80), (make_image(90, 220, 2), [7])])
    out = model(**batch)
    torch.testing.assert_close(out.align_loss, _reference_align_loss(model, batch), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stage", STAGES)
def test_gradients_reach_exactly_the_trainable_set(tiny_config, tiny_batch, stage):
    torch.manual_seed(0)
    model = EveForCausalLM(tiny_config).train()
    trainable = set_trainable(model, stage)
    assert trainable == sorted(trainable) and trainable
    if stage == "prealign":
        assert all(("vision_tower" in n or "mm_projector" in n) for n in trainable)
        assert any("vision_tower_compressor" in n for n in trainable)
    assert not any("clip" in n for n in trainable)
    model(**tiny_batch).loss.backward()
    with_grad = sorted(n for n, p in model.named_parameters() if p.grad is not None)
    assert with_grad == trainable
    assert not model.model.vision_clip.training


def test_text_only_batch_keeps_all_params_in_graph(tiny_config, tiny_proc):
    torch.manual_seed(0)
    model = EveForCausalLM(tiny_config).train()
    trainable = set_trainable(model, "pretrain")
    batch = make_batch(tiny_proc, [(None, [3, 4, 5]), (None, [6, 7])])
    out = model(**batch)
    assert out.align_loss.item() == 0.0
    out.loss.backward()
    assert sorted(n for n, p in model.named_parameters() if p.grad is not None) == trainable


def test_set_trainable_rejects_unknown_stage(tiny_model):
    with pytest.raises(ValueError, match="prealign, pretrain, sft, sft-hd"):
        set_trainable(tiny_model, "finetune")


def test_save_load_roundtrip_identical_logits(tiny_model, tiny_batch, tmp_path):
    tiny_model.eval()
    before = tiny_model(**tiny_batch)
    tiny_model.save_pretrained(tmp_path)
    loaded = EveForCausalLM.from_pretrained(tmp_path).eval()
    for (name, a), (name2, b) in zip(tiny_model.state_dict().items(), loaded.state_dict().items()):
        assert name == name2 and torch.equal(a, b), name
    after = loaded(**tiny_batch)
    # safetensors mmaps the weights; an unaligned buffer can pick another SIMD kernel (~1e-7 off).
    torch.testing.assert_close(after.logits, before.logits, rtol=0, atol=1e-5)
    for p in loaded.parameters():
        p.data = p.data.clone()  # aligned copies: now bit-identical
    assert torch.equal(loaded(**tiny_batch).logits, before.logits)
    assert loaded.config.to_dict()["image_size"] == 224


def test_gradient_checkpointing_same_loss_and_grads(tiny_config, tiny_batch):
    torch.manual_seed(0)
    model = EveForCausalLM(tiny_config).train()
    ref = model(**tiny_batch).loss
    ref.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    with warnings.catch_warnings():  # transformers 5 prefers activation_checkpointing_enable
        warnings.simplefilter("ignore", FutureWarning)
        model.gradient_checkpointing_enable()
    loss = model(**tiny_batch).loss
    loss.backward()
    torch.testing.assert_close(loss, ref)
    for n, g in grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[n].grad, g, rtol=1e-4, atol=1e-6)


def test_loss_falls_when_overfitting(tiny_config, tiny_proc):
    torch.manual_seed(0)
    model = EveForCausalLM(tiny_config).train()
    set_trainable(model, "pretrain")
    batch = make_batch(tiny_proc, [(make_image(200, 150, 3), [40, 41, 42, 43]), (make_image(100, 160, 4), [50, 51, 52]),
                                   (None, [60, 61, 62])])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(25):
        out = model(**batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append((out.lm_loss.item(), out.align_loss.item()))
    assert losses[-1][0] < 0.3 * losses[0][0], losses
    assert losses[-1][1] < losses[0][1]


# --- bad input ----------------------------------------------------------------------------------
def test_placeholder_image_count_mismatch(tiny_model, tiny_batch):
    batch = dict(tiny_batch, input_ids=tiny_batch["input_ids"].clone())
    batch["input_ids"][0, 1] = 7  # sample 0 has an image but no placeholder
    with pytest.raises(ValueError, match=r"1 IMAGE_TOKEN_INDEX placeholders but images has 2 samples"):
        tiny_model(**batch)


def test_placeholder_without_valid_mask(tiny_model, tiny_batch):
    batch = dict(tiny_batch, images=tiny_batch["images"].clone())
    batch["images"][1, 3] = 0
    with pytest.raises(ValueError, match="no valid patch"):
        tiny_model(**batch)


def test_two_placeholders_in_one_sample(tiny_model, tiny_batch):
    batch = dict(tiny_batch, input_ids=tiny_batch["input_ids"].clone())
    batch["input_ids"][0, 2] = IMAGE_TOKEN_INDEX
    with pytest.raises(ValueError, match="at most one"):
        tiny_model(**batch)


def test_placeholder_without_images(tiny_model, tiny_batch):
    with pytest.raises(ValueError, match="images is None"):
        tiny_model(**dict(tiny_batch, images=None))


def test_wrong_channels_and_oversized_canvas(tiny_model, tiny_batch):
    with pytest.raises(ValueError, match="channel count must be 4"):
        tiny_model(**dict(tiny_batch, images=tiny_batch["images"][:, :3]))
    big = F.pad(tiny_batch["images"], (0, 28, 0, 28))
    with pytest.raises(ValueError, match="larger than the configured canvas"):
        tiny_model(**dict(tiny_batch, images=big))
    with pytest.raises(ValueError, match="images_clip"):
        tiny_model(**dict(tiny_batch, images_clip=tiny_batch["images_clip"][:, :, :56, :56]))


def test_generate_with_image_matches_greedy_forward(tiny_model, tiny_proc):
    """generate (KV cache, left padding) == argmax decoding by repeated full forwards."""
    tiny_model.eval()
    batch = make_batch(tiny_proc, [(make_image(300, 200, 1), [10, 11]), (make_image(90, 220, 2), [20, 21, 22, 23])])
    new = tiny_model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              images=batch["images"], max_new_tokens=4, do_sample=False, pad_token_id=0,
                              eos_token_id=None)
    assert new.shape == (2, 4)
    for i in range(2):
        n = int(batch["attention_mask"][i].sum())
        ids, img = batch["input_ids"][i:i + 1, :n], batch["images"][i:i + 1]
        for step in range(4):
            nxt = tiny_model(input_ids=ids, images=img).logits[0, -1].argmax()
            assert int(nxt) == int(new[i, step])
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)


def test_unknown_forward_argument(tiny_model, tiny_batch):
    with pytest.raises(ValueError, match="unexpected arguments"):
        tiny_model(**tiny_batch, pixel_values=tiny_batch["images"])


def test_hidden_state_conventions_used_by_the_pal(tiny_model):
    """LLM: L+1 states, [0] = embeddings, [-1] = after the final RMSNorm (HF 4.31 behaviour).
    Teacher: hidden_states[-2] = output of the second-to-last encoder layer, CLS dropped."""
    tiny_model.eval()
    emb = tiny_model.model.embed_tokens(torch.tensor([[1, 5, 6, 7]]))
    out = tiny_model.model(inputs_embeds=emb, output_hidden_states=True)
    assert len(out.hidden_states) == tiny_model.config.num_hidden_layers + 1
    assert torch.equal(out.hidden_states[0], emb) and torch.equal(out.hidden_states[-1], out.last_hidden_state)
    assert tiny_model.model.vision_tower_compressor.layer_idx == [4, 0]
    clip = tiny_model.model.vision_clip.clip
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        h = clip.pre_layrnorm(clip.embeddings(x))
        for layer in clip.encoder.layers[:-1]:
            h = layer(h, None)
            h = h[0] if isinstance(h, tuple) else h
        torch.testing.assert_close(tiny_model.model.vision_clip(x), h[:, 1:])


def test_teacher_layout_mismatch(tiny_model, tiny_batch):
    clips = tiny_batch["images_clip"].clone()
    clips[0, 3] = 0  # the teacher view of sample 0 has no valid patch
    with pytest.raises(ValueError, match="images_clip: valid teacher patches"):
        tiny_model(**dict(tiny_batch, images_clip=clips))


def test_all_labels_ignored_gives_zero_lm_loss(tiny_model, tiny_batch):
    labels = torch.full_like(tiny_batch["labels"], IGNORE_INDEX)
    out = tiny_model(**dict(tiny_batch, labels=labels))
    assert out.lm_loss.item() == 0.0 and torch.isfinite(out.loss)
