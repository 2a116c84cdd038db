"""Which parameters each training stage updates (``train.py`` l.998-1005; eve-v1.md section 5).

* ``prealign`` (Stage 1, ``--tune_vision_tower``): names containing ``vision_tower`` or
  ``mm_projector`` - the PEL, the projector and the PAL (``vision_tower_compressor`` matches
  ``vision_tower``); the LLM is frozen.
* ``pretrain``, ``sft``, ``sft-hd``: everything except names containing ``clip``.

The CLIP teacher (``vision_clip``) is frozen in every stage.
"""

from __future__ import annotations

from torch import nn

from eve_contract.names import STAGES


def is_trainable(name: str, stage: str) -> bool:
    if "clip" in name:
        return False
    if stage == "prealign":
        return "vision_tower" in name or "mm_projector" in name
    return True


def set_trainable(model: nn.Module, stage: str) -> list[str]:
    """Set requires_grad per ``stage``; return the sorted names of the trainable parameters."""
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r} unknown; allowed: {', '.join(STAGES)}")
    names = []
    for name, param in model.named_parameters():
        flag = is_trainable(name, stage)
        param.requires_grad_(flag)
        if flag:
            names.append(name)
    return sorted(names)
