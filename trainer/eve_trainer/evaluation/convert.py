"""A bench folder with its images as shards: `eve-platform data convert-bench`.

From a reference question file and its image folder (and the scorer's annotation files), write
to a local folder or S3 prefix::

    questions.jsonl | questions.json   the question file, unchanged
    annotations/...                    the annotation files, unchanged
    shard-00000.tar ...                one sample per question with an image: key = the question's
                                       index in the file (9 digits), the image bytes as they are
                                       (jpg/png/webp; others as PNG) and the question line as json
    index.json                         written last: the bench is complete only when it exists

`evaluate` reads such a folder like one with `images/` (it streams the shards for the questions
of its rank). MMBench's TSV carries its images inline: it is copied as questions.tsv.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eve_trainer.evaluation.questions import (
    ANNOTATIONS_DIR,
    QUESTIONS_JSON,
    QUESTIONS_JSONL,
    QUESTIONS_TSV,
    BenchDataError,
    parse_jsonl,
    science_questions,
    vqa_questions,
)

_PIL_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


@dataclass
class BenchConvertReport:
    output: str
    questions: int = 0
    images: int = 0
    shards: int = 0
    annotations: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def convert_bench(question_file: str | Path, output: str, *, images: str | Path | None = None,
                  annotations: str | Path | None = None, shard_size: int = 256 << 20,
                  endpoint_url: str | None = None, progress: Callable[[int, int], None] | None = None,
                  ) -> BenchConvertReport:
    from PIL import Image, UnidentifiedImageError

    from eve_contract.storage import open_store
    from eve_trainer.data.index import DatasetIndex
    from eve_trainer.data.shards import ShardWriter

    t0 = time.monotonic()
    source = Path(question_file)
    if not source.is_file():
        raise BenchDataError(f"question file {source} does not exist")
    blob = source.read_bytes()
    suffix = source.suffix.lower()
    if suffix == ".jsonl":
        name = QUESTIONS_JSONL
        questions = vqa_questions(parse_jsonl(blob, source.name), source.name)
    elif suffix == ".json":
        name = QUESTIONS_JSON
        try:
            questions = science_questions(json.loads(blob), source.name)
        except ValueError as err:
            raise BenchDataError(f"{source}: {err}") from None
    elif suffix == ".tsv":
        name, questions = QUESTIONS_TSV, []
    else:
        raise BenchDataError(f"{source}: expected a .jsonl question file (ScienceQA: .json, MMBench: .tsv)")
    image_root = Path(images) if images else source.parent
    if questions and any(q.image for q in questions) and not image_root.is_dir():
        raise BenchDataError(f"image folder {image_root} does not exist")
    store = open_store(output, endpoint_url=endpoint_url)
    store.check()
    report = BenchConvertReport(output=store.url, questions=len(questions))
    writer = ShardWriter(store, pattern="shard-{:05d}.tar", shard_size=shard_size)
    with_image = [q for q in questions if q.image]
    for done, q in enumerate(with_image, 1):
        path = image_root / str(q.image)
        try:
            data = path.read_bytes()
        except OSError:
            raise BenchDataError(f"question {q.question_id!r}: image {path} not found") from None
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                ext = _PIL_EXT.get(img.format or "")
                if ext is None:
                    buf = io.BytesIO()
                    img.convert("RGB").save(buf, format="PNG")
                    data, ext = buf.getvalue(), "png"
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            raise BenchDataError(f"question {q.question_id!r}: {path} is not a readable image ({err})") from None
        writer.write(f"{q.index:09d}", {ext: data, "json": json.dumps(q.record, ensure_ascii=False).encode()})
        if progress is not None:
            progress(done, len(with_image))
    shards = writer.close()
    report.images, report.shards = len(with_image), len(shards)
    if annotations:
        root = Path(annotations)
        if not root.is_dir():
            raise BenchDataError(f"annotation folder {root} does not exist")
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            key = f"{ANNOTATIONS_DIR}/{path.relative_to(root)}"
            store.upload_file(path, key)
            report.annotations.append(key)
    store.put_bytes(name, blob)
    DatasetIndex(shards=shards, kind="bench", extra={"source": source.name, "questions": len(questions)}).write(store)
    report.seconds = round(time.monotonic() - t0, 2)
    return report
