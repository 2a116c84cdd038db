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
    def __init__(self, tokenizer: Any, processor: Any, template: str, max_length: int, pack: bool = False):
        self.tokenizer, self.processor = tokenizer, processor
        self.template, self.max_length = template, max_length
        #: positions per packed row (data.pack); 0 = one sample per row
        self.pack_length = max_length if pack else 0

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

    def _resize_target(self, width: int, height: int) -> tuple[int, int] | None:
        """(w, h) of the largest view the processor resizes this image to (the EVE view)."""
        layout = getattr(self.processor, "layout", None)
        if layout is None:
            size = getattr(self.processor, "image_size", None)
            return (size, size) if size else None
        lay = layout(width, height)
        ratio = getattr(self.processor, "ratio", 1)
        return lay.width * ratio, lay.height * ratio

    def finish(self, prep: Prepared) -> dict[str, Any]:
        import torch
        from PIL import Image

        pil = None
        if prep.image_bytes is not None:
            try:
                pil = Image.open(io.BytesIO(prep.image_bytes))
                if pil.format == "JPEG":
                    target = self._resize_target(*pil.size)
                    if target:
                        # DCT-domain downscale by 2/4/8 while both sides stay >= what the
                        # processor resizes to: 1-4 MP photos decode several times faster
                        pil.draft("RGB", target)
                pil = pil.convert("RGB") if pil.mode != "RGB" else _loaded(pil)  # no copy when already RGB
            except Exception as err:  # noqa: BLE001 - PIL raises many types for bad data
                raise SampleError("corrupt_image", f"{type(err).__name__}: {err}") from None
        image, image_clip = self.processor(pil)
        n = len(prep.input_ids)
        if pil is not None and hasattr(self.processor, "num_image_tokens"):
            n += int(self.processor.num_image_tokens(*pil.size)) - 1
        return {"input_ids": torch.tensor(prep.input_ids, dtype=torch.long),
                "labels": torch.tensor(prep.labels, dtype=torch.long),
                "image": image, "image_clip": image_clip, "length": n}


def _loaded(pil: Any) -> Any:
    pil.load()
    return pil


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Sample indices per row, for the fewest positions run (rows x longest row).

    First-fit decreasing at row capacities from ceil(total / R) up to `capacity` (a sample
    longer than `capacity` gets a row of its own); the layout with the fewest positions wins,
    so packing never pads more than one sample per row. Deterministic: ties keep the input order."""
    longest, total = max(lengths), sum(lengths)
    top = max(capacity, longest)
    caps = sorted({top} | {max(longest, -(-total // r)) for r in range(1, len(lengths) + 1)})
    best: tuple[int, list[list[int]]] | None = None
    for cap in (c for c in caps if c <= top):
        rows = _first_fit_decreasing(lengths, cap)
        cost = len(rows) * max(sum(lengths[k] for k in row) for row in rows)
        if best is None or cost < best[0]:
            best = (cost, rows)
    assert best is not None
    return best[1]


def _first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    rows: list[list[int]] = []
    room: list[int] = []
    for k in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        for r, free in enumerate(room):
            if lengths[k] <= free:
                rows[r].append(k)
                room[r] -= lengths[k]
                break
        else:
            rows.append([k])
            room.append(capacity - lengths[k])
    return rows


def collate(samples: list[dict[str, Any]], pad_id: int, pack_length: int = 0) -> dict[str, Any]:
    """Right-pad to the longest sequence of the batch; labels padded with -100.

    ``pack_length > 0``: several samples per row (``pack_rows`` on the spliced lengths, image
    tokens included), plus ``sample_index`` [R, T] (the sample of each position, -1 on padding);
    images stay one canvas per sample, in sample order. The micro-batch keeps its samples (and
    so its loss normalisation and its place in the data order): only the padding changes."""
    import torch

    n = len(samples)
    rows = (pack_rows([s.get("length", len(s["input_ids"])) for s in samples], pack_length) if pack_length
            else [[k] for k in range(n)])
    longest = max(sum(len(samples[k]["input_ids"]) for k in row) for row in rows)
    input_ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
    sample_index = torch.full((len(rows), longest), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for k in row:
            s, m = samples[k], len(samples[k]["input_ids"])
            input_ids[r, at:at + m], labels[r, at:at + m], attention_mask[r, at:at + m] = s["input_ids"], s["labels"], 1
            sample_index[r, at:at + m] = k
            at += m
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
             "images": _stack([s["image"] for s in samples]),
             "images_clip": _stack([s["image_clip"] for s in samples])}
    if pack_length:
        batch["sample_index"] = sample_index
    return batch


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
