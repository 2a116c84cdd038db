"""Patch Aligning Layer (PAL, training only) and the frozen CLIP teacher.

Reference: ``VisionCompressor`` in ``EVEv1/eve/model/multimodal_encoder/vision_tokenizer.py`` and
``CLIPVisionTower`` in ``clip_encoder.py``; eve-v1.md section 2.3.  The PAL reads the LLM hidden
states at layers ``[L, L-4, ..., 0]`` over the image's patch tokens (CLS and SPL dropped), maps
each layer with LayerNorm + Linear(no bias) to the teacher width, fuses them with CA3 (the last
layer is the query, the others are keys = values), and is pulled towards the teacher's
``hidden_states[-2]`` patch features of the valid patches with ``1 - cos``.

Unlike the reference's per-sample loop this gathers the patch tokens of all images with one index
tensor and runs the norm layers / CA3 once on the packed tokens; the per-image mean is a segment
mean.  Same function, fewer kernel launches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel


class ClipTeacher(nn.Module):
    """Frozen CLIP vision tower; ``backbone`` keeps the published name ``vision_clip.backbone.*``."""

    def __init__(self, config: CLIPVisionConfig, select_layer: int = -2, select_feature: str = "patch") -> None:
        super().__init__()
        if select_feature not in ("patch", "cls_patch"):
            raise ValueError(f"mm_vision_select_feature={select_feature!r}; allowed: 'patch', 'cls_patch'")
        self.select_layer = select_layer
        self.select_feature = select_feature
        clip = CLIPVisionModel(config)
        if hasattr(clip, "vision_model"):  # transformers 4.x: names already start with vision_model.
            self.backbone = clip
        else:  # transformers 5.x flattened CLIPVisionModel; restore the published prefix
            self.backbone = nn.Module()
            self.backbone.vision_model = clip
        self.backbone.requires_grad_(False)
        self.backbone.eval()

    @property
    def clip(self) -> CLIPVisionModel:
        return self.backbone if isinstance(self.backbone, CLIPVisionModel) else self.backbone.vision_model

    def train(self, mode: bool = True) -> ClipTeacher:
        # The teacher is always in eval mode, whatever the surrounding model does.
        return super().train(False)

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, Sc, Sc] -> patch features [B, Gc*Gc, D] (CLS dropped for 'patch')."""
        clip = self.clip
        dtype = clip.get_input_embeddings().weight.dtype
        out = clip(pixel_values=pixels.to(dtype), output_hidden_states=True)
        feats = out.hidden_states[self.select_layer]
        return feats[:, 1:] if self.select_feature == "patch" else feats


class PatchAligner(nn.Module):
    """``vision_tower_compressor``: LLM hidden states of image patches -> teacher-space features."""

    def __init__(self, llm_size: int, clip_size: int, num_llm_layers: int, layer_stride: int = 4,
                 num_heads: int = 8, patch_ratio: int = 1) -> None:
        super().__init__()
        if clip_size % num_heads:
            raise ValueError(f"teacher width {clip_size} must be divisible by vision_num_heads={num_heads}")
        # [L, L-4, ..., 0]: a plain attribute like the reference's tensor, not a state-dict entry.
        self.layer_idx = [num_llm_layers - i for i in range(0, num_llm_layers + 1, layer_stride)]
        self.num_heads = num_heads
        self.scale = clip_size**-0.5
        self.patch_ratio = patch_ratio
        self.norm_layer = nn.ModuleList(
            [nn.Sequential(nn.LayerNorm(llm_size), nn.Linear(llm_size, clip_size, bias=False))
             for _ in self.layer_idx]
        )
        self.input_layer = nn.Linear(llm_size, clip_size)
        self.output_layer = nn.Linear(clip_size, clip_size)

    def fuse(self, layer_feats: list[torch.Tensor]) -> torch.Tensor:
        """CA3. layer_feats[j] [N, D] for layer_idx[j] (j=0 is the last layer) -> [N, C_clip]."""
        proj = torch.stack([norm(x) for norm, x in zip(self.norm_layer, layer_feats)], dim=1)  # [N, nl, C]
        n = proj.shape[0]
        q = proj[:, 0].view(n, self.num_heads, -1)  # [N, h, d]
        kv = proj[:, 1:].reshape(n, proj.shape[1] - 1, self.num_heads, -1)  # [N, nl-1, h, d]
        attn = (torch.einsum("nhd,nlhd->nhl", q, kv) * self.scale).softmax(dim=-1)
        fused = torch.einsum("nhl,nlhd->nhd", attn, kv).reshape(n, -1)  # [N, C]
        return self.input_layer(layer_feats[0]) + self.output_layer(fused)

    def patch_positions(self, spans: list[tuple[int, int, int, int]], seq_len: int) -> torch.Tensor:
        """Flat positions into [B*T] of each image's patch tokens, pooled groups last.

        spans: (batch row, start of the spliced image sequence, h, w).  Returns [N_v, r*r] where
        N_v = sum over images of (h//r)*(w//r), row-major per image; r = patch_ratio.
        """
        r = self.patch_ratio
        dy = torch.arange(r).repeat_interleave(r)
        dx = torch.arange(r).repeat(r)
        out = []
        for b, start, h, w in spans:
            ys = torch.arange(h // r).repeat_interleave(w // r)[:, None] * r + dy  # [n, r*r]
            xs = torch.arange(w // r).repeat(h // r)[:, None] * r + dx
            out.append(b * seq_len + start + 1 + ys * (w + 1) + xs)  # +1 skips CLS, w+1 skips SPL
        return torch.cat(out)

    def forward(self, hidden_states: tuple[torch.Tensor, ...], spans: list[tuple[int, int, int, int]],
                teacher_feats: torch.Tensor, teacher_valid: torch.Tensor) -> torch.Tensor:
        """Alignment loss, mean over images of (1 - mean cos) on valid teacher patches.

        hidden_states: L+1 tensors [B, T, D] (index 0 = embeddings, L = final, after RMSNorm).
        teacher_feats [n_img, Gc*Gc, C], teacher_valid [n_img, Gc*Gc] bool, in ``spans`` order.
        """
        if not spans:
            return self.dummy_loss(hidden_states[0])
        b, t, d = hidden_states[0].shape
        pos = self.patch_positions(spans, t).to(hidden_states[0].device)  # [N_v, r*r]
        feats = [hidden_states[i].reshape(b * t, d)[pos].mean(dim=1) for i in self.layer_idx]  # [N_v, D]
        pred = self.fuse(feats)  # [N_v, C]

        counts = [(h // self.patch_ratio) * (w // self.patch_ratio) for _, _, h, w in spans]
        valid_counts = teacher_valid.sum(1).tolist()
        if counts != valid_counts:
            raise ValueError(
                f"images_clip: valid teacher patches per image {valid_counts} do not match the PEL "
                f"grids pooled by {self.patch_ratio} {counts}; images and images_clip must share one layout"
            )
        target = teacher_feats[teacher_valid]  # [N_v, C]
        cos = F.cosine_similarity(pred.float(), target.float(), dim=-1)  # [N_v]
        seg = torch.repeat_interleave(torch.arange(len(spans), device=cos.device),
                                      torch.tensor(counts, device=cos.device))
        per_image = torch.zeros(len(spans), device=cos.device).index_add(0, seg, cos)
        per_image = per_image / torch.tensor(counts, device=cos.device, dtype=cos.dtype)
        return (1.0 - per_image).mean()

    def dummy_loss(self, like: torch.Tensor) -> torch.Tensor:
        """A zero that runs every PAL module once (the reference's text-only term), so DDP / ZeRO-3
        see all parameters used; going through the modules keeps ZeRO-3's gathering hooks working."""
        x = like.new_zeros(1, self.input_layer.in_features)
        return self.fuse([x] * len(self.layer_idx)).sum() * 0.0
