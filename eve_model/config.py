"""EveConfig: a LlamaConfig plus the EVE v1 vision fields.

The published EVE-7B ``config.json`` (eve-v1.md section 4.1) is a Llama config with a handful of
``mm_*`` keys; the vision geometry itself (image_size, patch_stride, conv_stride, ...) lived in a
separate processor config under ``mm_vision_tower`` that was never released.  We therefore store
the geometry explicitly (``image_size``, ``image_size_clip``, ``patch_stride``, ``conv_stride``,
``patch_stride_clip``) and, when a published config lacks them, derive ``image_size`` from the
tower name (``openai/eve-patch14-anypixel-672`` -> 672, ``...-1344`` -> 1344).

The frozen CLIP teacher is described by ``clip_vision_config`` (a plain dict of
``CLIPVisionConfig`` kwargs, so the JSON round-trips without a nested config class); its weights
may be loaded from the local folder ``clip_teacher_path`` (never downloaded).
"""

from __future__ import annotations

import re
from typing import Any

from transformers import CLIPVisionConfig, LlamaConfig

# CLIP (OpenAI) normalisation constants, used by the reference processor (CLIPImageProcessor).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# openai/clip-vit-large-patch14-336 vision tower: the teacher of every released EVE v1 model.
CLIP_L14_336 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "projection_dim": 768,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}

_TOWER_SIZE = re.compile(r"-(\d+)$")


class EveConfig(LlamaConfig):
    """Llama config + EVE v1 vision fields (names of the published config.json where they exist)."""

    model_type = "eve"

    # --- keys of the published config.json -------------------------------------------------
    mm_hidden_size: int = 1024
    mm_projector_type: str = "mlp2x_gelu"
    mm_vision_tower: str = "openai/eve-patch14-anypixel-672"
    mm_vision_tower_clip: str = "openai/clip-vit-large-patch14-336"
    mm_vision_select_layer: int = -2
    mm_vision_select_feature: str = "patch"
    mm_use_im_patch_token: bool = False
    mm_use_im_start_end: bool = False
    use_mm_proj: bool = True
    requires_cliploss: bool = True
    image_aspect_ratio: str = "square"
    tune_mm_mlp_adapter: bool = False
    mm_projector_lr: float | None = None
    vision_tower_lr: float | None = None

    # --- explicit vision geometry (the unreleased processor config) -------------------------
    image_size: int | None = None  # EVE canvas side; None -> derived from mm_vision_tower
    image_size_clip: int = 336  # teacher canvas side
    patch_stride: int = 14  # conv patch size (= stride)
    conv_stride: int = 2  # CA1 window: conv_stride x conv_stride patches per visual token
    patch_stride_clip: int = 14  # teacher patch size
    vision_num_heads: int = 8  # heads of CA1 / CA2 / CA3 (reference: 8)
    align_layer_stride: int = 4  # PAL uses LLM hidden states [L, L-4, ..., 0]
    image_mean: list[float] | None = None
    image_std: list[float] | None = None

    # --- teacher ---------------------------------------------------------------------------
    clip_vision_config: dict | None = None  # CLIPVisionConfig kwargs; None -> CLIP-L/14-336
    clip_teacher_path: str | None = None  # local CLIPVisionModel folder to load teacher weights

    def __post_init__(self, **kwargs: Any) -> None:
        if self.image_size is None:
            match = _TOWER_SIZE.search(self.mm_vision_tower or "")
            self.image_size = int(match.group(1)) if match else 672
        if self.image_mean is None:
            self.image_mean = list(CLIP_MEAN)
        if self.image_std is None:
            self.image_std = list(CLIP_STD)
        if self.clip_vision_config is None:
            self.clip_vision_config = dict(CLIP_L14_336)
        # Older transformers / published configs carry rope_scaling=None: harmless, drop it.
        if kwargs.get("rope_scaling", "absent") is None:
            kwargs.pop("rope_scaling")
        super().__post_init__(**kwargs)

    # ----------------------------------------------------------------------------------------
    def teacher_config(self) -> CLIPVisionConfig:
        return CLIPVisionConfig(**self.clip_vision_config)

    @property
    def max_grid(self) -> int:
        """Visual tokens per canvas side: image_size / patch_stride / conv_stride (24 at 672)."""
        return self.image_size // self.patch_stride // self.conv_stride

    @property
    def max_grid_clip(self) -> int:
        """Teacher patches per canvas side (24 for CLIP-L/14-336)."""
        return self.image_size_clip // self.patch_stride_clip

    @property
    def patch_ratio(self) -> int:
        """PAL pooling factor: EVE grid / teacher grid (1 at 672, 2 at 1344)."""
        return self.max_grid // self.max_grid_clip

    def validate_vision(self) -> None:
        """Raise ValueError for a vision geometry the PEL/PAL cannot represent exactly."""
        unit = self.patch_stride * self.conv_stride
        if self.image_size <= 0 or self.image_size % unit:
            raise ValueError(
                f"image_size={self.image_size} must be a positive multiple of "
                f"patch_stride*conv_stride={unit}"
            )
        if self.image_size_clip <= 0 or self.image_size_clip % self.patch_stride_clip:
            raise ValueError(
                f"image_size_clip={self.image_size_clip} must be a positive multiple of "
                f"patch_stride_clip={self.patch_stride_clip}"
            )
        if self.max_grid % self.max_grid_clip:
            raise ValueError(
                f"image_size={self.image_size}: its grid image_size/patch_stride/conv_stride="
                f"{self.max_grid} must be a multiple of the teacher grid "
                f"image_size_clip/patch_stride_clip={self.max_grid_clip} (allowed image_size: "
                f"multiples of {unit * self.max_grid_clip})"
            )
        if self.image_size % self.image_size_clip:
            raise ValueError(
                f"image_size={self.image_size} must be a multiple of image_size_clip="
                f"{self.image_size_clip} (the processor scales the teacher layout by their ratio)"
            )
        if self.mm_projector_type != "mlp2x_gelu":
            raise ValueError(
                f"mm_projector_type={self.mm_projector_type!r} not supported; allowed: 'mlp2x_gelu'"
            )
        for name, width in (("mm_hidden_size", self.mm_hidden_size),
                            ("clip_vision_config.hidden_size", self.clip_vision_config["hidden_size"])):
            if width % self.vision_num_heads:
                raise ValueError(
                    f"{name}={width} must be divisible by vision_num_heads={self.vision_num_heads}"
                )
        if self.requires_cliploss:
            clip = self.clip_vision_config
            if clip.get("image_size") != self.image_size_clip or clip.get("patch_size") != self.patch_stride_clip:
                raise ValueError(
                    f"clip_vision_config image_size/patch_size ({clip.get('image_size')}/"
                    f"{clip.get('patch_size')}) must equal image_size_clip/patch_stride_clip "
                    f"({self.image_size_clip}/{self.patch_stride_clip})"
                )
