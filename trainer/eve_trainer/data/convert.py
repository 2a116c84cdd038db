"""Converters: LLaVA-style JSON or a captions file (JSONL/CSV) + an image folder -> shards.

Each worker process takes a contiguous slice of the records and writes its own shards
(`shard-<worker>-<n>.tar`, ~shard_size bytes each) straight into the output store (S3 or
a directory); index.json is written last, so a dataset is complete only when it has one.
Bad records are skipped and counted by reason, never fatal: missing or corrupt image,
json without the expected keys, an `<image>` token without an image or the reverse.
Needs PIL, webdataset (its TarWriter writes the shards) and the storage layer; no eve_model.
webdataset imports torch where torch is installed, so the workers fork after that import.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import multiprocessing as mp
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eve_trainer.data.errors import DataError
from eve_trainer.data.index import DatasetIndex, ShardInfo
from eve_trainer.data.templates import IMAGE_TOKEN, SampleError, conversation_turns

log = logging.getLogger("eve_trainer.data")
_PIL_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
_IMAGE_COLUMNS = ("image", "image_path", "path", "file", "filename")
_CAPTION_COLUMNS = ("caption", "text", "title")


@dataclass
class ConvertReport:
    output: str
    samples: int = 0
    shards: int = 0
    bytes: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    """The first skipped records with their reason, for the summary."""
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__, skipped_total=sum(self.skipped.values()))


# -- reading the inputs ---------------------------------------------------------------------


def detect_kind(source: Path) -> str:
    return "conversation" if source.suffix.lower() == ".json" else "caption"


def read_records(source: Path, kind: str) -> list[dict[str, Any]]:
    """Input records as {"image": relative path or None, "meta": json to store}."""
    if not source.is_file():
        raise DataError(f"input file {source} does not exist")
    if kind == "conversation":
        try:
            items = json.loads(source.read_text())
        except ValueError as err:
            raise DataError(f"{source} is not valid JSON ({err}); expected a LLaVA-style list") from None
        if not isinstance(items, list):
            raise DataError(f"{source}: expected a JSON list of {{id, image, conversations}} records")
        out = []
        for item in items:
            if not isinstance(item, dict):
                out.append({"image": None, "meta": None})
                continue
            meta = {k: v for k, v in item.items() if k != "image"}
            out.append({"image": item.get("image"), "meta": meta})
        return out
    if source.suffix.lower() in (".csv", ".tsv"):
        with source.open(newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if source.suffix.lower() == ".tsv" else ",")
            cols = [c.lower() for c in reader.fieldnames or []]
            img = next((c for c in _IMAGE_COLUMNS if c in cols), None)
            cap = next((c for c in _CAPTION_COLUMNS if c in cols), None)
            if img is None or cap is None:
                raise DataError(f"{source}: need an image column ({'/'.join(_IMAGE_COLUMNS)}) and a caption "
                                f"column ({'/'.join(_CAPTION_COLUMNS)}); found {', '.join(cols)}")
            rows = [{k.lower(): v for k, v in r.items() if k} for r in reader]
        return [{"image": r.get(img) or None, "meta": {"caption": r.get(cap)}} for r in rows]
    out = []
    for n, line in enumerate(source.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            out.append({"image": None, "meta": None, "line": n})
            continue
        if not isinstance(row, dict):
            out.append({"image": None, "meta": None, "line": n})
            continue
        img = next((row[c] for c in _IMAGE_COLUMNS if c in row), None)
        cap = next((row[c] for c in _CAPTION_COLUMNS if c in row), None)
        out.append({"image": img, "meta": {"caption": cap}, "line": n})
    return out


# -- one record -> tar parts ----------------------------------------------------------------


def make_parts(record: dict[str, Any], image_root: Path, kind: str) -> dict[str, bytes]:
    """Validated tar parts of one record, or SampleError(reason)."""
    from PIL import Image, UnidentifiedImageError

    meta = record["meta"]
    if not isinstance(meta, dict):
        raise SampleError("bad_json", "record is not a JSON object")
    parts: dict[str, bytes] = {}
    if record["image"]:
        path = image_root / str(record["image"])
        try:
            data = path.read_bytes()
        except OSError:
            raise SampleError("missing_image", str(path)) from None
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                ext = _PIL_EXT.get(img.format or "")
                if ext is None:  # GIF/BMP/TIFF...: store as PNG, which every reader decodes
                    buf = io.BytesIO()
                    img.convert("RGB").save(buf, format="PNG")
                    data, ext = buf.getvalue(), "png"
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            raise SampleError("corrupt_image", f"{path}: {err}") from None
        parts[ext] = data
    has_image = bool(parts)
    if kind == "conversation":
        conversation_turns(meta, has_image)  # raises SampleError: missing keys, <image> mismatch
    else:
        if not isinstance(meta.get("caption"), str) or not meta["caption"].strip():
            raise SampleError("missing_keys", "no caption")
        if IMAGE_TOKEN in meta["caption"]:
            raise SampleError("image_token_mismatch", "caption contains <image>")
    parts["json"] = json.dumps(meta, ensure_ascii=False).encode()
    return parts


# -- parallel conversion --------------------------------------------------------------------


def _convert_slice(args: tuple) -> tuple[list[ShardInfo], dict[str, int], list[str]]:
    (worker, records, first, image_root, kind, out_url, endpoint_url, shard_size, queue) = args
    from eve_contract.storage import open_store
    from eve_trainer.data.shards import ShardWriter

    store = open_store(out_url, endpoint_url=endpoint_url)
    writer = ShardWriter(store, pattern=f"shard-{worker:03d}-{{:05d}}.tar", shard_size=shard_size)
    skipped: Counter[str] = Counter()
    examples: list[str] = []
    done = 0
    for i, record in enumerate(records):
        key = f"{first + i:09d}"
        try:
            writer.write(key, make_parts(record, image_root, kind))
        except SampleError as err:
            skipped[err.reason] += 1
            where = f"record {first + i}" + (f" (line {record['line']})" if "line" in record else "")
            if len(examples) < 20:
                examples.append(f"{where}: {err}")
            log.warning("skipped %s: %s", where, err)
        done += 1
        if queue is not None and done % 64 == 0:
            queue.put(64)
    if queue is not None and done % 64:
        queue.put(done % 64)
    return writer.close(), dict(skipped), examples


def convert(source: str | Path, output: str, *, images: str | Path | None = None, kind: str | None = None,
            shard_size: int = 256 << 20, workers: int = 4, endpoint_url: str | None = None,
            progress: Callable[[int, int], None] | None = None) -> ConvertReport:
    """Convert `source` (+ images) into shards and index.json under `output`.

    `progress(done, total)` is called as records are processed (from the parent process).
    """
    from eve_contract.storage import open_store

    start = time.monotonic()
    source = Path(source)
    kind = kind or detect_kind(source)
    if kind not in ("caption", "conversation"):
        raise DataError(f"kind={kind!r}: choose caption or conversation")
    image_root = Path(images) if images else source.parent
    if not image_root.is_dir():
        raise DataError(f"image folder {image_root} does not exist")
    records = read_records(source, kind)
    store = open_store(output, endpoint_url=endpoint_url)
    store.check()
    workers = max(1, min(workers, len(records) or 1))
    bounds = [(len(records) * w) // workers for w in range(workers + 1)]
    import webdataset  # noqa: F401 - imported once here (it pulls in torch), inherited by the forked workers

    ctx = mp.get_context("fork")
    manager_queue = ctx.Manager().Queue() if progress else None
    tasks = [(w, records[bounds[w]:bounds[w + 1]], bounds[w], image_root, kind, store.url, endpoint_url,
              shard_size, manager_queue) for w in range(workers)]
    if workers == 1:
        results = [_convert_slice(tasks[0][:-1] + (None,))]
        if progress:
            progress(len(records), len(records))
    else:
        with ctx.Pool(workers) as pool:
            pending = pool.map_async(_convert_slice, tasks)
            done = 0
            while not pending.ready() or (manager_queue is not None and not manager_queue.empty()):
                if manager_queue is not None:
                    try:
                        done += manager_queue.get(timeout=0.1)
                        progress(done, len(records))  # type: ignore[misc]
                    except Exception:  # noqa: BLE001 - queue.Empty
                        pass
                else:
                    pending.wait(0.1)
            results = pending.get()
    shards = sorted((s for r in results for s in r[0]), key=lambda s: s.name)
    skipped: Counter[str] = Counter()
    examples: list[str] = []
    for _, sk, ex in results:
        skipped.update(sk)
        examples.extend(ex)
    index = DatasetIndex(shards=shards, kind=kind, skipped=dict(skipped),
                         extra={"source": source.name, "records": len(records)})
    index.write(store)
    return ConvertReport(output=store.url, samples=index.num_samples, shards=len(shards),
                         bytes=index.total_bytes, skipped=dict(skipped), examples=examples[:20],
                         seconds=round(time.monotonic() - start, 2))
