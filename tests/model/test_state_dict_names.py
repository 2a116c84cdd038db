"""Parameter names/shapes of the eve-7b build vs the published table (eve-v1.md 4.3), on `meta`."""

from __future__ import annotations

import pytest
import torch

from eve_model import EveForCausalLM, get_preset

# eve-v1.md 4.3, vision parts (every key, exact shapes).
VISION_TABLE = {
    "model.vision_tower.patch_embedding.weight": (1024, 3, 14, 14),
    "model.vision_tower.class_embedding": (1024,),
    "model.vision_tower.split_embedding": (1024,),
    **{f"model.vision_tower.{att}.{k}": s for att in ("local_attention", "global_attention") for k, s in {
        "q.0.weight": (1024,), "q.0.bias": (1024,), "q.1.weight": (1024, 1024),
        "kv.0.weight": (1024,), "kv.0.bias": (1024,), "kv.1.weight": (2048, 1024),
        "proj.weight": (1024, 1024), "proj.bias": (1024,)}.items()},
    "model.mm_projector.0.weight": (4096, 1024),
    "model.mm_projector.0.bias": (4096,),
    "model.mm_projector.2.weight": (4096, 4096),
    "model.mm_projector.2.bias": (4096,),
    **{f"model.vision_tower_compressor.norm_layer.{i}.{k}": s for i in range(9) for k, s in {
        "0.weight": (4096,), "0.bias": (4096,), "1.weight": (1024, 4096)}.items()},
    "model.vision_tower_compressor.input_layer.weight": (1024, 4096),
    "model.vision_tower_compressor.input_layer.bias": (1024,),
    "model.vision_tower_compressor.output_layer.weight": (1024, 1024),
    "model.vision_tower_compressor.output_layer.bias": (1024,),
}

LLAMA_LAYER = {
    "self_attn.q_proj.weight": (4096, 4096), "self_attn.k_proj.weight": (4096, 4096),
    "self_attn.v_proj.weight": (4096, 4096), "self_attn.o_proj.weight": (4096, 4096),
    "mlp.gate_proj.weight": (11008, 4096), "mlp.up_proj.weight": (11008, 4096),
    "mlp.down_proj.weight": (4096, 11008),
    "input_layernorm.weight": (4096,), "post_attention_layernorm.weight": (4096,),
}
LLAMA_TABLE = {
    "model.embed_tokens.weight": (32000, 4096), "model.norm.weight": (4096,), "lm_head.weight": (32000, 4096),
    **{f"model.layers.{i}.{k}": s for i in range(32) for k, s in LLAMA_LAYER.items()},
}

# Sizes from eve-v1.md 4.3 ("size check").
PARAM_COUNTS = {"llm": 6_738_415_616, "vision_tower": 9_003_008, "mm_projector": 20_979_712,
                "vision_tower_compressor": 43_067_392, "vision_clip": 303_507_456}


@pytest.fixture(scope="module", params=["eve-7b", "eve-7b-hd"])
def meta_state(request):
    with torch.device("meta"):
        model = EveForCausalLM(get_preset(request.param))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}, model


def test_vision_and_llama_names_match_table(meta_state):
    shapes, _ = meta_state
    non_teacher = {k: v for k, v in shapes.items() if not k.startswith("model.vision_clip.")}
    assert non_teacher == {**VISION_TABLE, **LLAMA_TABLE}


def test_teacher_names(meta_state):
    shapes, _ = meta_state
    teacher = {k for k in shapes if k.startswith("model.vision_clip.")}
    assert all(k.startswith("model.vision_clip.backbone.vision_model.") for k in teacher)
    assert shapes["model.vision_clip.backbone.vision_model.embeddings.patch_embedding.weight"] == (1024, 3, 14, 14)
    assert shapes["model.vision_clip.backbone.vision_model.embeddings.position_embedding.weight"] == (577, 1024)
    assert "model.vision_clip.backbone.vision_model.encoder.layers.23.mlp.fc2.weight" in shapes
    assert not any("clip_layer" in k for k in shapes)  # teacher registered once


def test_parameter_counts(meta_state):
    _, model = meta_state
    counts = {k: 0 for k in PARAM_COUNTS}
    for name, p in model.named_parameters():
        part = next((k for k in PARAM_COUNTS if f"model.{k}." in name), "llm")
        counts[part] += p.numel()
    assert counts == PARAM_COUNTS


def test_published_config_keys_roundtrip(tmp_path):
    """A published-style config.json (section 4.1) loads; image_size derives from the tower name."""
    import json

    from eve_model import EveConfig

    published = {
        "architectures": ["EVELlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
        "hidden_size": 4096, "image_aspect_ratio": "square", "image_grid_pinpoints": None,
        "initializer_range": 0.02, "intermediate_size": 11008, "max_position_embeddings": 4096,
        "mm_hidden_size": 1024, "mm_projector_lr": 2e-05, "mm_projector_type": "mlp2x_gelu",
        "mm_use_im_patch_token": False, "mm_use_im_start_end": False, "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2, "mm_vision_tower": "openai/eve-patch14-anypixel-1344",
        "mm_vision_tower_clip": "openai/clip-vit-large-patch14-336", "model_type": "eve",
        "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32, "pad_token_id": 0,
        "pretraining_tp": 1, "requires_cliploss": True, "rms_norm_eps": 1e-05, "rope_scaling": None,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.31.0",
        "tune_mm_mlp_adapter": False, "use_cache": True, "use_mm_proj": True, "vision_tower_lr": 2e-05,
        "vocab_size": 32000,
    }
    (tmp_path / "config.json").write_text(json.dumps(published))
    cfg = EveConfig.from_pretrained(str(tmp_path))
    assert (cfg.image_size, cfg.image_size_clip, cfg.patch_ratio, cfg.max_grid) == (1344, 336, 2, 48)
    assert cfg.clip_vision_config["hidden_size"] == 1024 and cfg.requires_cliploss
    cfg.save_pretrained(str(tmp_path / "again"))
    again = EveConfig.from_pretrained(str(tmp_path / "again"))
    for key in ("image_size", "patch_stride", "conv_stride", "clip_vision_config", "mm_vision_tower",
                "mm_projector_type", "vision_num_heads", "hidden_size"):
        assert getattr(again, key) == getattr(cfg, key)


def test_small_preset_dims():
    cfg = get_preset("small")
    dims = (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size)
    assert dims == (2048, 22, 32, 5632)
    assert (cfg.mm_hidden_size, cfg.image_size, cfg.image_size_clip) == (1024, 672, 336)
