"""One raw tar sample -> tensors: json + image decode, template tokenisation, processor.

Failures raise SampleError with a reason that the loader counts (`loader.stats`) and logs
with shard and key; they never stop training unless data.max_skip_fraction is exceeded.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

from eve_trainer.data.shards import IMAGE_EXTS, RawSample
from eve_trainer.data.templates import IGNORE_INDEX, SampleError, build


@dataclass
class Prepared:
    """The cheap part of a sample (json + tokens), done before the expensive image decode."""
    input_ids: list[int]
    labels: list[int]
    image_bytes: bytes | None


class SampleBuilder:
    def __init__(self, tokenizer: Any, processor: Any, template: str, max_length: int):
        self.tokenizer, self.processor = tokenizer, processor
        self.template, self.max_length = template, max_length

    def prepare(self, raw: RawSample) -> Prepared:
        data = raw.parts.get("json")
        if data is None:
            raise SampleError("missing_json", "no .json part")
        try:
            meta = json.loads(data)
        except ValueError as err:
            raise SampleError("bad_json", str(err)) from None
        if not isinstance(meta, dict):
            raise SampleError("bad_json", "json is not an object")
        image = next((raw.parts[e] for e in IMAGE_EXTS if e in raw.parts), None)
        ids, labels = build(self.template, meta, image is not None, self.tokenizer, self.max_length)
        if all(x == IGNORE_INDEX for x in labels):
            raise SampleError("no_target_tokens", "every label is masked (empty caption/answer?)")
        return Prepared(ids, labels, image)

    def length(self, prep: Prepared) -> int:
        """Sequence length after splicing: text tokens + visual tokens (header-only decode)."""
        n = len(prep.input_ids)
        if prep.image_bytes is not None and hasattr(self.processor, "num_image_tokens"):
            from PIL import Image

            try:
                w, h = Image.open(io.BytesIO(prep.image_bytes)).size
                n += int(self.processor.num_image_tokens(w, h)) - 1
            except Exception:  # noqa: BLE001 - a corrupt image is counted when it is decoded
                pass
        return n

    def finish(self, prep: Prepared) -> dict[str, Any]:
        import torch
        from PIL import Image

        pil = None
        if prep.image_bytes is not None:
            try:
                pil = Image.open(io.BytesIO(prep.image_bytes))
                size = getattr(self.processor, "image_size", None)
                if pil.format == "JPEG" and size:
                    # DCT-domain downscale by 2/4/8 while both sides stay >= image_size: large
                    # photos decode several times faster; the processor resizes anyway
                    pil.draft("RGB", (size, size))
                pil = pil.convert("RGB")
            except Exception as err:  # noqa: BLE001 - PIL raises many types for bad data
                raise SampleError("corrupt_image", f"{type(err).__name__}: {err}") from None
        image, image_clip = self.processor(pil)
        return {"input_ids": torch.tensor(prep.input_ids, dtype=torch.long),
                "labels": torch.tensor(prep.labels, dtype=torch.long),
                "image": image, "image_clip": image_clip}


def collate(samples: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Right-pad to the longest sequence of the batch; labels padded with -100."""
    import torch

    n, longest = len(samples), max(len(s["input_ids"]) for s in samples)
    input_ids = torch.full((n, longest), pad_id, dtype=torch.long)
    labels = torch.full((n, longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((n, longest), dtype=torch.long)
    for i, s in enumerate(samples):
        k = len(s["input_ids"])
        input_ids[i, :k], labels[i, :k], attention_mask[i, :k] = s["input_ids"], s["labels"], 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "images": _stack([s["image"] for s in samples]),
            "images_clip": _stack([s["image_clip"] for s in samples])}


def _stack(tensors: list[Any]) -> Any:
    """torch.stack; inside a DataLoader worker straight into shared memory (as
    default_collate does), saving the copy the worker->trainer queue would make."""
    import torch
    import torch.utils.data as tud

    out = None
    if tud.get_worker_info() is not None:
        first = tensors[0]
        storage = first._typed_storage()._new_shared(len(tensors) * first.numel(), device=first.device)
        out = first.new(storage).resize_(len(tensors), *first.shape)
    return torch.stack(tensors, 0, out=out)
