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


def _first_eos_cut(row: list[int], eos_ids: set[int]) -> list[int]:
    for i, token in enumerate(row):
        if token in eos_ids:
            return row[:i]
    return row


@torch.no_grad()
def generate_batch(model: Any, tokenizer: Any, processor: EveImageProcessor, prompts: list[str],
                   images: list[Any] | None = None, max_new_tokens: int = 128, **kwargs: Any) -> list[str]:
    """Greedy answers to several prompts at once, each the text `generate_text` gives it alone.

    The prompts are left-padded (the model splices each image and re-pads on the left, and
    `generate` derives positions from the mask, so padding changes no row's positions); each
    row is cut at its first EOS, decoded without special tokens and stripped. `images[i]` is
    the PIL image of prompt i (None for a text-only prompt, which has no `<image>`).
    """
    if not prompts:
        return []
    images = list(images) if images is not None else [None] * len(prompts)
    if len(images) != len(prompts):
        raise ValueError(f"images: {len(images)} entries for {len(prompts)} prompts; give one per prompt "
                         "(None for a text-only prompt)")
    rows = [tokenize_prompt(tokenizer, p) for p in prompts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row):] = 1
    with_image = [IMAGE_TOKEN_INDEX in r for r in rows]
    for i, (has, image) in enumerate(zip(with_image, images)):
        if has and image is None:
            raise ValueError(f"prompts[{i}] has <image> but images[{i}] is None")
    pixels = None
    if any(with_image):  # text-only rows get the blank canvas (mask 0), as in training
        pixels = torch.stack([processor(image if has else None)[0] for has, image in zip(with_image, images)])
        pixels = pixels.to(model.device, model.dtype)
    kwargs.setdefault("do_sample", False)
    kwargs.setdefault("num_beams", 1)
    kwargs.setdefault("pad_token_id", pad)
    if tokenizer.eos_token_id is not None:
        kwargs.setdefault("eos_token_id", tokenizer.eos_token_id)
    out = model.generate(input_ids=ids.to(model.device), images=pixels, attention_mask=mask.to(model.device),
                         max_new_tokens=max_new_tokens, **kwargs)
    if pixels is None and out.shape[1] >= width and torch.equal(out[:, :width].cpu(), ids):
        out = out[:, width:]  # the text-only path returns the prompt too
    eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    return [tokenizer.decode(_first_eos_cut(row, eos), skip_special_tokens=True).strip() for row in out.tolist()]
