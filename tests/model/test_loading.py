"""Loaders for local HF folders: published-style sharded .bin, Llama-only (stage 1), CLIP teacher."""

from __future__ import annotations

import json

import pytest
import torch
from support.eve_model_testutils import tiny_batch, tiny_config, tiny_model, tiny_proc  # noqa: F401 (fixtures)
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from eve_model import from_llama_pretrained, load_clip_teacher, load_eve_checkpoint
from eve_model.loading import TEACHER_ALIAS, TEACHER_PREFIX


def _write_sharded_bin(folder, state, n_shards=2):
    keys = list(state)
    weight_map = {}
    for s in range(n_shards):
        name = f"pytorch_model-{s + 1:05d}-of-{n_shards:05d}.bin"
        part = {k: state[k].clone() for k in keys[s::n_shards]}
        torch.save(part, folder / name)
        weight_map.update({k: name for k in part})
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_published_style_sharded_bin_with_teacher_alias(tiny_model, tiny_batch, tmp_path):
    tiny_model.eval()
    tiny_model.config.save_pretrained(tmp_path)
    state = dict(tiny_model.state_dict())
    teacher = [k for k in state if k.startswith(TEACHER_PREFIX)]
    for k in teacher:  # the reference registers the teacher twice: write both copies, like its save
        state[TEACHER_ALIAS + k[len(TEACHER_PREFIX):]] = state[k]
    for k in teacher[: len(teacher) // 2]:  # and drop half of the primary copy
        del state[k]
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)  # pre-4.31 Llama buffer
    _write_sharded_bin(tmp_path, state)

    model, report = load_eve_checkpoint(tmp_path)
    assert report.missing == [] and report.unexpected == []
    assert report.ignored == ["model.layers.0.self_attn.rotary_emb.inv_freq"]
    assert report.aliased == len(teacher)
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    torch.testing.assert_close(model.eval()(**tiny_batch).logits, tiny_model(**tiny_batch).logits)


def test_inference_only_checkpoint_reports_missing_training_parts(tiny_model, tmp_path):
    tiny_model.config.save_pretrained(tmp_path)
    state = {k: v for k, v in tiny_model.state_dict().items()
             if "vision_tower_compressor" not in k and "vision_clip" not in k}
    state["model.extra.weight"] = torch.zeros(2)
    _write_sharded_bin(tmp_path, state)
    _, report = load_eve_checkpoint(tmp_path)
    assert report.missing and all("vision_tower_compressor" in k or "vision_clip" in k for k in report.missing)
    assert report.unexpected == ["model.extra.weight"]


def _tiny_clip_folder(path, tiny_config, seed=5):
    torch.manual_seed(seed)
    clip = CLIPVisionModel(CLIPVisionConfig(**tiny_config.clip_vision_config))
    clip.save_pretrained(path)
    return clip


def test_stage1_init_from_llama_folder(tiny_config, tmp_path):
    torch.manual_seed(3)
    llama_cfg = LlamaConfig(vocab_size=1024, hidden_size=64, intermediate_size=176, num_hidden_layers=4,
                            num_attention_heads=4, max_position_embeddings=1024, rms_norm_eps=1e-5)
    llama = LlamaForCausalLM(llama_cfg)
    llama.save_pretrained(tmp_path / "llama")
    clip = _tiny_clip_folder(tmp_path / "clip", tiny_config)

    model, report = from_llama_pretrained(tmp_path / "llama", preset="tiny", clip_teacher_path=tmp_path / "clip")
    assert (model.config.image_size, model.config.hidden_size) == (224, 64)
    for k, v in llama.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert report.unexpected == []
    assert report.missing and all(k.startswith(("model.vision_tower", "model.mm_projector")) for k in report.missing)
    clip_state = clip.state_dict()
    for k, v in model.model.vision_clip.clip.state_dict().items():
        assert torch.equal(v, clip_state[k]), k


def test_load_clip_teacher_checks_dims(tiny_model, tiny_config, tmp_path):
    clip = _tiny_clip_folder(tmp_path / "clip", tiny_config)
    load_clip_teacher(tiny_model, tmp_path / "clip")
    assert torch.equal(tiny_model.model.vision_clip.clip.embeddings.patch_embedding.weight,
                       clip.embeddings.patch_embedding.weight)
    other = dict(tiny_config.clip_vision_config, hidden_size=32, intermediate_size=64)
    CLIPVisionModel(CLIPVisionConfig(**other)).save_pretrained(tmp_path / "bad")
    with pytest.raises(ValueError, match="hidden_size"):
        load_clip_teacher(tiny_model, tmp_path / "bad")


def test_missing_weights_folder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no weights"):
        from eve_model.loading import read_state_dict

        read_state_dict(tmp_path)
