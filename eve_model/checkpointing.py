"""Selective activation checkpointing of the decoder: every k-th layer, whole or only its MLP.

``set_activation_checkpointing(model, every=k, part="layer"|"mlp")``:

- ``part="layer"``: transformers' per-layer checkpointing (non-reentrant,
  ``activation_checkpointing_enable(every_n_layers=k)``), on for layers 0, k, 2k, ...: the
  others keep their activations. ``every=1`` is today's ``gradient_checkpointing_enable()``.
- ``part="mlp"``: only the MLP of those layers is recomputed in the backward. At 7B width the MLP
  holds most of a layer's activations (three [T, 11008] tensors against [T, 4096] ones), while
  attention, whose recompute is the costly part at long rows, keeps its outputs.

``every=0`` turns checkpointing off. Same loss and gradients in every setting (tested); only
memory and time change.
"""

from __future__ import annotations

import types

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

PARTS = ("layer", "mlp")


def _checkpointed_forward(self: nn.Module, *args, **kwargs):
    if self.training and torch.is_grad_enabled():
        return checkpoint(type(self).forward, self, *args, use_reentrant=False, **kwargs)
    return type(self).forward(self, *args, **kwargs)


def set_activation_checkpointing(model, every: int = 1, part: str = "layer", offload: bool = False) -> list[int]:
    """Checkpoint layers 0, every, 2*every, ... of ``model.model.layers`` (whole, or their MLP).
    ``offload`` (whole layers only): keep the saved layer inputs in pinned host memory
    (transformers' ``activation_checkpointing_enable(offload=True)``; ignored without CUDA). Returns the indices of the
    checkpointed layers."""
    if part not in PARTS:
        raise ValueError(f"part={part!r}; allowed: {', '.join(PARTS)}")
    if every < 0:
        raise ValueError(f"every={every}; allowed: 0 (off) or a positive layer stride")
    if offload and part != "layer":
        raise ValueError(f"offload=True with part={part!r}; allowed: offload only with part='layer'")
    layers = model.model.layers
    for layer in layers:  # start from a clean state
        layer.mlp.__dict__.pop("forward", None)
    if model.is_activation_checkpointing:
        model.activation_checkpointing_disable()
    chosen = [i for i in range(len(layers)) if every and i % every == 0]
    if not chosen:
        return []
    if part == "layer":
        offload = offload and torch.cuda.is_available()  # without CUDA activations live in host memory already
        model.activation_checkpointing_enable({"use_reentrant": False}, every_n_layers=every, offload=offload)
        model.config.use_cache = False
        for i, layer in enumerate(layers):  # transformers counts every GradientCheckpointingLayer (the
            layer.gradient_checkpointing = i in chosen  # teacher's too): the decoder's own indices decide
    else:
        for i in chosen:
            mlp = layers[i].mlp
            mlp.forward = types.MethodType(_checkpointed_forward, mlp)
    return chosen
