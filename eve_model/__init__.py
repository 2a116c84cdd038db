"""eve_model: a PyTorch re-implementation of EVE v1 (encoder-free VLM, arXiv 2406.11832).

See docs/model.md for the mapping to the paper and the published checkpoints.
"""

from .checkpointing import set_activation_checkpointing
from .config import EveConfig
from .constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX
from .loading import LoadReport, from_llama_pretrained, load_clip_teacher, load_eve_checkpoint
from .modeling import EveCausalLMOutput, EveForCausalLM, EveModel
from .presets import PRESETS, get_preset
from .processing import EveImageProcessor
from .stages import set_trainable

__all__ = [
    "DEFAULT_IMAGE_TOKEN",
    "IGNORE_INDEX",
    "IMAGE_TOKEN_INDEX",
    "PRESETS",
    "EveCausalLMOutput",
    "LoadReport",
    "from_llama_pretrained",
    "load_clip_teacher",
    "load_eve_checkpoint",
    "EveConfig",
    "EveForCausalLM",
    "EveImageProcessor",
    "EveModel",
    "get_preset",
    "set_activation_checkpointing",
    "set_trainable",
]
