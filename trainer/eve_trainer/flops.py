"""Model FLOPs per token and device peaks, for MFU.

MFU = model FLOPs per token x tokens/s / peak FLOP/s (PaLM, Chowdhery et al. 2022, appendix B):
FLOPs per token = 6 N + 12 L H S, with N the non-embedding parameters, L layers, H hidden
size and S the sequence length (the attention term). Frozen parameters (the LLM in prealign)
still cost the forward and the activation gradients, so N counts every parameter that runs;
the frozen CLIP teacher runs forward only on a small image and is left out.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: Dense bf16 peak FLOP/s per device, by substring of the CUDA device name.
PEAK_FLOPS: dict[str, float] = {
    "H200": 989e12, "H100": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12,
    "L40S": 362e12, "A10G": 70e12, "L4": 121e12,
}
TEACHER_KEYS: tuple[str, ...] = ("clip",)


def flops_per_token(*, num_params: int, num_layers: int, hidden_size: int, seq_len: int) -> float:
    return 6.0 * num_params + 12.0 * num_layers * hidden_size * seq_len


def count_params(model: torch.nn.Module) -> int:
    """Parameters that run per token: all but the embedding table and the teacher."""
    total = 0
    for name, param in model.named_parameters():
        if "embed_tokens" in name or any(k in name for k in TEACHER_KEYS):
            continue
        total += param.numel() or getattr(param, "ds_numel", 0)  # ZeRO-3 partitions have numel 0
    return total


def text_dims(config: object) -> tuple[int, int]:
    """(num_layers, hidden_size) of the decoder, wherever the config keeps them."""
    text = getattr(config, "text_config", None) or config
    layers = getattr(text, "num_hidden_layers", None) or getattr(config, "num_hidden_layers", 0)
    hidden = getattr(text, "hidden_size", None) or getattr(config, "hidden_size", 0)
    return int(layers), int(hidden)


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
