"""Named model configurations.

``tiny`` is for CPU tests and demos, ``small`` (1.1B-class LLM with the real vision widths) for GPU
benchmarks, ``eve-7b`` / ``eve-7b-hd`` are the published EVE-7B configurations (Vicuna-7B v1.5
dims; 672 px and 1344 px canvas).  The trainer and data helpers rely on these exact values.
"""

from __future__ import annotations

import copy
from typing import Any

from .config import CLIP_L14_336, EveConfig

#: What every preset's LLM shares with Llama/Vicuna (norm epsilon, untied head, special tokens).
_LLAMA: dict[str, Any] = dict(rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                              pad_token_id=0)
_VICUNA_7B: dict[str, Any] = dict(
    _LLAMA,
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    max_position_embeddings=4096,
    hidden_act="silu",
    initializer_range=0.02,
)
#: The published vision side at 672 px (EVE-7B's, and the ``small`` benchmark model's).
_VISION_672: dict[str, Any] = dict(
    mm_hidden_size=1024,
    mm_vision_tower="openai/eve-patch14-anypixel-672",
    image_size=672,
    image_size_clip=336,
    requires_cliploss=True,
    clip_vision_config=dict(CLIP_L14_336),
)

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        _LLAMA,
        vocab_size=1024,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        mm_hidden_size=64,
        mm_vision_tower="eve-tiny-224",
        mm_vision_tower_clip="clip-tiny-112",
        image_size=224,
        image_size_clip=112,
        patch_stride=14,
        conv_stride=2,
        patch_stride_clip=14,
        vision_num_heads=8,  # 64 % 8 == 0: the reference head count fits the tiny widths too
        requires_cliploss=True,
        clip_vision_config=dict(
            hidden_size=64,
            intermediate_size=128,
            projection_dim=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=112,
            patch_size=14,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
        ),
    ),
    # EVE-7B's vocabulary, heads and vision side; a 1.1B-class LLM body (TinyLlama widths)
    "small": dict(_VICUNA_7B, **_VISION_672, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22),
    "eve-7b": dict(_VICUNA_7B, **_VISION_672),
    "eve-7b-hd": {**_VICUNA_7B, **_VISION_672, "mm_vision_tower": "openai/eve-patch14-anypixel-1344",
                  "image_size": 1344},
}


def get_preset(name: str, **overrides: Any) -> EveConfig:
    """Return a fresh EveConfig for preset ``name`` (keyword overrides win)."""
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} unknown; allowed: {sorted(PRESETS)}")
    kwargs = copy.deepcopy(PRESETS[name])
    kwargs.update(overrides)
    config = EveConfig(**kwargs)
    config.validate_vision()
    return config
