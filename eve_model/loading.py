"""Loaders for local HF-format folders (never downloads).

* ``load_eve_checkpoint``: a published-style EVE folder (``config.json`` + sharded ``.bin`` with
  ``pytorch_model.bin.index.json``, or ``.safetensors`` with/without index).  The reference
  registers the CLIP teacher twice (``model.vision_clip`` and
  ``model.vision_tower_compressor.clip_layer``); either prefix is accepted.
* ``from_llama_pretrained``: Stage 1 starts from a plain Llama/Vicuna folder - LLM weights load,
  the vision parts stay freshly initialised.
* ``load_clip_teacher``: teacher weights from a local ``CLIPVisionModel`` (or full ``CLIPModel``) folder.

Every loader returns a ``LoadReport`` with the missing / unexpected keys instead of failing, so a
caller can decide what is acceptable (e.g. an inference-only checkpoint without PAL and teacher).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .config import EveConfig
from .modeling import EveForCausalLM

TEACHER_PREFIX = "model.vision_clip.backbone."
TEACHER_ALIAS = "model.vision_tower_compressor.clip_layer.backbone."
# Buffers some Llama checkpoints (transformers < 4.31) carry; recomputed by the model.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass
class LoadReport:
    missing: list[str] = field(default_factory=list)  # model keys not found in the checkpoint
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys the model does not have
    ignored: list[str] = field(default_factory=list)  # known-harmless keys that were skipped
    aliased: int = 0  # teacher keys read from the clip_layer alias

    def __str__(self) -> str:
        return (f"missing={len(self.missing)} unexpected={len(self.unexpected)} ignored={len(self.ignored)} "
                f"aliased={self.aliased}")


# ----------------------------------------------------------------------------------------------
def _weight_files(folder: Path) -> list[Path]:
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            weight_map = json.loads((folder / index).read_text())["weight_map"]
            return [folder / name for name in sorted(set(weight_map.values()))]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (folder / single).is_file():
            return [folder / single]
    raise FileNotFoundError(
        f"{folder}: no weights (expected model.safetensors[.index.json] or pytorch_model.bin[.index.json])")


def iter_state_dict(folder: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) over all shards of a local HF folder, one shard in memory at a time."""
    for path in _weight_files(Path(folder)):
        if path.suffix == ".safetensors":
            shard = load_file(str(path))
        else:
            shard = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        yield from shard.items()
        del shard


def read_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    return dict(iter_state_dict(folder))


def _normalise_keys(state: dict[str, torch.Tensor], report: LoadReport) -> dict[str, torch.Tensor]:
    """Map published aliases onto our names; drop known-harmless buffers."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key.endswith(IGNORED_SUFFIXES):
            report.ignored.append(key)
            continue
        if key.startswith(TEACHER_ALIAS):
            key = TEACHER_PREFIX + key[len(TEACHER_ALIAS):]
            report.aliased += 1
            if key in state:  # both copies present: they are the same module; keep the primary
                continue
        out[key] = tensor
    return out


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor],
              only_prefixes: tuple[str, ...] | None = None) -> LoadReport:
    """Copy ``state`` into ``model`` (dtype cast by ``load_state_dict``); shape mismatches raise."""
    report = LoadReport()
    state = _normalise_keys(state, report)
    own = model.state_dict()
    wanted = [k for k in own if only_prefixes is None or k.startswith(only_prefixes)]
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError("shape mismatch between checkpoint and config: " + "; ".join(bad[:5]))
    result = model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    report.missing = sorted(k for k in result.missing_keys if k in wanted)
    report.unexpected = sorted(k for k in state if k not in own)
    return report


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype | None):
    """Build parameters directly in ``dtype`` (halves peak memory for a 7B bf16 load)."""
    if dtype is None:
        yield
        return
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


# ----------------------------------------------------------------------------------------------
def load_eve_checkpoint(folder: str | Path, config: EveConfig | None = None, dtype: torch.dtype | None = None,
                        clip_teacher_path: str | Path | None = None, **config_overrides: Any
                        ) -> tuple[EveForCausalLM, LoadReport]:
    """Build an EveForCausalLM from a local EVE checkpoint folder and report key differences.

    ``config``: defaults to the folder's config.json (published keys; ``image_size`` derived from
    ``mm_vision_tower`` when absent).  ``clip_teacher_path`` (or ``config.clip_teacher_path``) fills
    the teacher from a CLIP folder when the checkpoint has no teacher weights.
    """
    folder = Path(folder)
    if config is None:
        config = EveConfig.from_pretrained(str(folder), **config_overrides)
    with _default_dtype(dtype):
        model = EveForCausalLM(config)
    report = load_into(model, read_state_dict(folder))
    teacher_path = clip_teacher_path or config.clip_teacher_path
    if teacher_path and any(k.startswith(TEACHER_PREFIX) for k in report.missing):
        load_clip_teacher(model, teacher_path)
        report.missing = [k for k in report.missing if not k.startswith(TEACHER_PREFIX)]
    return model, report


def from_llama_pretrained(folder: str | Path, preset: str | None = None, dtype: torch.dtype | None = None,
                          clip_teacher_path: str | Path | None = None, **overrides: Any
                          ) -> tuple[EveForCausalLM, LoadReport]:
    """Stage-1 initialisation: LLM weights from a plain Llama/Vicuna folder, fresh vision parts.

    The LLM dims come from the folder's config.json; vision fields from ``preset`` (e.g. "eve-7b")
    and ``overrides``.  ``report.missing`` lists the (expected) freshly initialised vision keys.
    """
    from .presets import PRESETS

    folder = Path(folder)
    llama = json.loads((folder / "config.json").read_text())
    if llama.get("model_type") not in ("llama", "eve", None):
        raise ValueError(f"{folder}/config.json: model_type={llama.get('model_type')!r}; allowed: 'llama'")
    for key in ("model_type", "architectures", "transformers_version", "_name_or_path", "torch_dtype", "dtype"):
        llama.pop(key, None)
    vision = dict(PRESETS[preset]) if preset else {}
    llm_keys = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
                "bos_token_id", "eos_token_id", "pad_token_id"}
    vision = {k: v for k, v in vision.items() if k not in llm_keys}
    if clip_teacher_path is not None:
        overrides["clip_teacher_path"] = str(clip_teacher_path)
    config = EveConfig(**{**llama, **vision, **overrides})
    config.validate_vision()
    with _default_dtype(dtype):
        model = EveForCausalLM(config)
    report = load_into(model, read_state_dict(folder))
    if config.clip_teacher_path and model.model.has_aligner:
        load_clip_teacher(model, config.clip_teacher_path)
        report.missing = [k for k in report.missing if not k.startswith(TEACHER_PREFIX)]
    return model, report


def load_clip_teacher(model: EveForCausalLM, folder: str | Path) -> LoadReport:
    """Teacher weights from a local CLIPVisionModel / CLIPModel folder (``vision_model.*`` keys)."""
    if not model.model.has_aligner:
        raise ValueError("load_clip_teacher: the model has no teacher (requires_cliploss=False)")
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        cfg = cfg.get("vision_config", cfg)
        ours = model.config.clip_vision_config
        for key in ("hidden_size", "num_hidden_layers", "image_size", "patch_size"):
            if key in cfg and cfg[key] != ours.get(key):
                raise ValueError(f"{cfg_path}: {key}={cfg[key]} does not match clip_vision_config.{key}="
                                 f"{ours.get(key)}")
    state = {}
    for key, tensor in iter_state_dict(folder):
        if key.startswith("vision_model."):  # CLIPModel / transformers 4.x CLIPVisionModel
            state[TEACHER_PREFIX + key] = tensor
        elif key.startswith(("embeddings.", "pre_layrnorm.", "encoder.", "post_layernorm.")):  # 5.x layout
            state[TEACHER_PREFIX + "vision_model." + key] = tensor
    if not state:
        raise ValueError(f"{folder}: no CLIP vision weights (vision_model.*) found")
    report = load_into(model, state, only_prefixes=(TEACHER_PREFIX,))
    if report.missing:
        raise ValueError(f"{folder}: teacher weights incomplete, missing e.g. {report.missing[:3]}")
    return report
