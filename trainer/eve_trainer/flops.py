"""Model FLOPs of a training step and device peaks, for an honest MFU (formula: docs/trainer.md).

MFU = model FLOPs of the step / step time / (peak FLOP/s x devices). The FLOPs count only the
work that a step needs, over the real (non-padding) positions, with what actually trains:

- LLM decoder layers (N_llm parameters, embedding table excluded) over the T real spliced
  tokens: 2 N_llm T forward; the backward adds 2 N_llm T for the activation gradients (always
  needed while anything before the LLM trains: the PEL) and 2 N_llm T for the weight gradients
  only when the LLM trains. So 6 N_llm T, and 4 N_llm T in prealign (frozen LLM).
- LM head (D V parameters) over the Y positions that have a target (text; image tokens and
  prompts have none): 6 D V Y (4 D V Y frozen). Logits of the other positions are not needed.
  That is what the fused linear + cross-entropy (model.loss_chunk_tokens) spends; work that is
  done twice (activation checkpointing, a recomputed loss chunk) is never counted: this is MFU,
  not hardware FLOPs utilisation, so a lever that recomputes shows up as a lower MFU.
- Attention scores and values (PaLM appendix B, no causal discount): 12 L H n^2 per sample of
  spliced length n, forward + backward; summed per sample, so packing does not count the
  masked cross-sample blocks and padding counts nothing.
- PEL (vision_tower + mm_projector, trained in every stage), per image with an h x w grid,
  C = mm_hidden_size, s = conv_stride, p = patch_stride, D = hidden_size:
  forward 2 h w (3 p^2 C s^2 + 2 C^2 s^2 + 2 C^2 + 2 C^2) + 2 (1 + h (w + 1)) (C D + D^2); x3.
- PAL (trained in every stage): forward 2 (h w / r^2) ((k + 1) D Cc + Cc^2) with k aligned
  layers, Cc the teacher width; x3.
- CLIP teacher (frozen, forward only): 2 P_clip (Gc^2 + 1) + 4 Lc Hc (Gc^2 + 1)^2 per image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: Dense bf16 peak FLOP/s per device, by substring of the CUDA device name.
PEAK_FLOPS: dict[str, float] = {
    "H200": 989e12, "H100": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12,
    "L40S": 362e12, "A10G": 70e12, "L4": 121e12,
}


@dataclass(frozen=True)
class StepFlops:
    """Coefficients of the step FLOPs: per real token, per squared sample length, per image."""
    per_token: float  # 6 N_llm (4 N_llm with a frozen LLM)
    per_target: float  # 6 D V (4 D V frozen): the LM head on a position with a label
    per_len_sq: float  # 12 L H
    per_patch: float  # PEL + PAL, per grid cell (h w), fwd + bwd
    per_visual_token: float  # projector, per spliced visual token (1 + h (w + 1)), fwd + bwd
    per_image: float  # teacher forward (when the alignment loss runs)

    def nominal_per_token(self, seq_len: int, grid: tuple[int, int] = (0, 0)) -> float:
        """FLOPs per token of one sample of `seq_len` positions with an h x w image."""
        h, w = grid
        image = (self.per_patch * h * w + self.per_visual_token * (1 + h * (w + 1)) + self.per_image) if h else 0
        return self.per_token + self.per_target + self.per_len_sq * seq_len + image / max(1, seq_len)

    def of_output(self, out: Any) -> Any:
        """Model FLOPs of one micro-batch from EveForCausalLM's output (0.0 if it lacks the counts)."""
        lengths = getattr(out, "sample_lengths", None)
        if lengths is None:
            return 0.0
        labels = getattr(out, "labels", None)
        targets = (labels[:, 1:] != -100).sum() if labels is not None else 0
        return self.of_batch(lengths, getattr(out, "image_grids", None), targets)

    def of_batch(self, sample_lengths: torch.Tensor, image_grids: torch.Tensor | None,
                 targets: Any = 0) -> torch.Tensor:
        """Model FLOPs of one micro-batch (a float64 tensor on the lengths' device, no host sync)."""
        import torch

        n = sample_lengths.to(torch.float64)
        total = self.per_token * n.sum() + self.per_len_sq * (n * n).sum() + self.per_target * targets
        if image_grids is not None and image_grids.numel():
            g = image_grids.to(torch.float64)
            hw = g[:, 0] * g[:, 1]
            total = total + self.per_patch * hw.sum() + self.per_visual_token * (1 + g[:, 0] * (g[:, 1] + 1)).sum() \
                + self.per_image * g.shape[0]
        return total


def step_flops(config: Any, *, llm_trains: bool, teacher: bool = True) -> StepFlops:
    """Coefficients for an EveConfig (see the module docstring for each term)."""
    d, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    per_layer = d * heads * head_dim * 2 + d * kv * head_dim * 2 + 3 * d * inter
    n_llm = layers * per_layer  # norms are negligible
    c, s, p = config.mm_hidden_size, config.conv_stride, config.patch_stride
    pel = 2 * (3 * p * p * c * s * s + 2 * c * c * s * s + 4 * c * c)  # per grid cell, forward
    proj = 2 * (c * d + d * d)  # per spliced visual token, forward
    pal = teacher_fwd = 0.0
    if getattr(config, "requires_cliploss", False) and teacher:
        t = config.teacher_config()
        cc, lc, ic = t.hidden_size, t.num_hidden_layers, t.intermediate_size
        k = len(range(0, layers + 1, getattr(config, "align_layer_stride", 4)))
        r = max(1, getattr(config, "patch_ratio", 1))
        pal = 2 * ((k + 1) * d * cc + cc * cc) / (r * r)
        tokens = (t.image_size // t.patch_size) ** 2 + 1
        teacher_fwd = 2 * lc * (4 * cc * cc + 2 * cc * ic) * tokens + 4 * lc * cc * tokens * tokens
    mult = 6.0 if llm_trains else 4.0
    return StepFlops(per_token=mult * n_llm, per_target=mult * d * config.vocab_size, per_len_sq=12.0 * layers * d,
                     per_patch=3.0 * (pel + pal), per_visual_token=3.0 * proj, per_image=teacher_fwd)


def llm_trains(model: Any) -> bool:
    """Whether any decoder parameter (model.layers.*) gets a gradient."""
    return any(p.requires_grad for n, p in model.named_parameters() if ".layers." in n)


def peak_flops(device: str) -> float | None:
    """Peak FLOP/s of this device; EVE_PEAK_TFLOPS overrides. None on CPU (MFU is not logged)."""
    if raw := os.environ.get("EVE_PEAK_TFLOPS"):
        return float(raw) * 1e12
    if not device.startswith("cuda"):
        return None
    import torch

    name = torch.cuda.get_device_name(torch.device(device))
    for key, value in PEAK_FLOPS.items():
        if key in name:
            return value
    return None
