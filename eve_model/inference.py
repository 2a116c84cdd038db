"""Inference from a stage export: load the model, tokenizer and image processor, then generate.

    model, tokenizer, processor = load_export("/path/to/export")      # a local export folder
    text = generate_text(model, tokenizer, processor, "<image>\\nDescribe the image.", image,
                         max_new_tokens=32)

An export (eve_trainer's `<pipeline>/<stage>/export/`) holds config.json + safetensors, the
tokenizer files and `preprocessor_config.json` (the image processor's settings). Fetch a
registered version first with `mlflow.artifacts.download_artifacts("models:/<name>@<alias>")`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from .loading import load_eve_checkpoint
from .processing import EveImageProcessor

PROCESSOR_FILE = "preprocessor_config.json"
PROCESSOR_KEYS = ("image_size", "image_size_clip", "patch_stride", "conv_stride", "patch_stride_clip",
                  "image_mean", "image_std")


def processor_config(processor: EveImageProcessor) -> dict[str, Any]:
    """What `preprocessor_config.json` holds: the processor's arguments plus the image token."""
    values = {k: getattr(processor, k) for k in PROCESSOR_KEYS}
    values["image_mean"] = [float(x) for x in values["image_mean"]]
    values["image_std"] = [float(x) for x in values["image_std"]]
    return {"processor_class": "EveImageProcessor", **values, "image_token": DEFAULT_IMAGE_TOKEN,
            "image_token_index": IMAGE_TOKEN_INDEX}


def load_processor(folder: str | Path, config: Any = None) -> EveImageProcessor:
    path = Path(folder) / PROCESSOR_FILE
    if path.is_file():
        data = json.loads(path.read_text())
        return EveImageProcessor(**{k: tuple(v) if isinstance(v, list) else v
                                    for k, v in data.items() if k in PROCESSOR_KEYS})
    if config is None:
        raise FileNotFoundError(f"{path} not found and no model config to derive the processor from")
    return EveImageProcessor.from_config(config)


def load_export(folder: str | Path, dtype: torch.dtype | None = None) -> tuple[Any, Any, EveImageProcessor]:
    """(EveForCausalLM in eval mode, tokenizer, EveImageProcessor) from a local export folder."""
    from transformers import AutoTokenizer

    model, _ = load_eve_checkpoint(folder, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return model.eval(), tokenizer, load_processor(folder, model.config)


def tokenize_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """[BOS] + text chunks with one IMAGE_TOKEN_INDEX per `<image>` (LLaVA's tokenizer_image_token)."""
    ids = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    for i, chunk in enumerate(prompt.split(DEFAULT_IMAGE_TOKEN)):
        if i:
            ids.append(IMAGE_TOKEN_INDEX)
        if chunk:
            ids.extend(tokenizer(chunk, add_special_tokens=False)["input_ids"])
    return ids


@torch.no_grad()
def generate_text(model: Any, tokenizer: Any, processor: EveImageProcessor, prompt: str, image: Any = None,
                  max_new_tokens: int = 32, **kwargs: Any) -> str:
    """Greedy decoding (unless kwargs say otherwise) of one prompt with at most one image."""
    ids = torch.tensor([tokenize_prompt(tokenizer, prompt)], device=model.device)
    images = None
    if (ids == IMAGE_TOKEN_INDEX).any():
        images = processor(image)[0].unsqueeze(0).to(model.device, model.dtype)
    kwargs.setdefault("do_sample", False)
    kwargs.setdefault("pad_token_id", tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    out = model.generate(input_ids=ids, images=images, attention_mask=torch.ones_like(ids),
                         max_new_tokens=max_new_tokens, **kwargs)
    return tokenizer.decode(out[0], skip_special_tokens=True)
