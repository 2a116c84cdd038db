"""Test material for the evaluation tests: a tiny export (as a stage writes it) and small bench
folders in the reference formats. (A uniquely named module: several test folders have a conftest.py.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PIPELINE, STAGE = "evalp", "sft"


def make_tiny_export(folder: Path, *, seed: int = 0, run_id: str | None = None) -> Path:
    """What `export_stage` writes for the tiny preset: model, tokenizer, processor, manifest last."""
    import torch

    from eve_contract import layout
    from eve_model import EveForCausalLM, EveImageProcessor, get_preset
    from eve_model.inference import PROCESSOR_FILE, processor_config
    from eve_trainer.data import load_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = get_preset("tiny")
    EveForCausalLM(config).save_pretrained(folder)
    load_tokenizer("builtin:tiny").save_pretrained(folder)
    (folder / PROCESSOR_FILE).write_text(json.dumps(processor_config(EveImageProcessor.from_config(config))))
    manifest = layout.Manifest(kind="stage-complete", pipeline=PIPELINE, stage=STAGE, step=7,
                               files=layout.entries_for_dir(folder), mlflow_run_id=run_id)
    (folder / layout.STAGE_COMPLETE).write_bytes(manifest.to_json())
    return folder


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def make_pope_bench(root: Path, n: int = 6, *, inline_labels: bool = False) -> list[dict[str, Any]]:
    """A POPE-format bench folder: questions.jsonl, images/, annotations/coco_pope_<category>.json."""
    from PIL import Image

    (root / "images").mkdir(parents=True, exist_ok=True)
    questions, labels = [], {}
    names = list(COLOURS)
    for i in range(n):
        colour = names[i % 3]
        asked = names[(i // 3 + i) % 3]
        image = f"img_{i}.png"
        Image.new("RGB", (32 + 8 * i, 24 + 5 * (i % 4)), COLOURS[colour]).save(root / "images" / image)
        category = ("adversarial", "popular", "random")[i % 3]
        label = "yes" if asked == colour else "no"
        q = {"question_id": 100 + i, "image": image, "text": f"Is there a {asked} square in the image?",
             "category": category}
        if inline_labels:
            q["label"] = label
        questions.append(q)
        labels.setdefault(category, []).append({"question_id": 100 + i, "label": label})
    (root / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    if not inline_labels:
        (root / "annotations").mkdir(exist_ok=True)
        for category, rows in labels.items():
            (root / "annotations" / f"coco_pope_{category}.json").write_text(
                "".join(json.dumps(r) + "\n" for r in rows))
    return questions


def upload_folder(folder: Path, url: str, endpoint: str) -> None:
    """A bench folder or an export on this machine, copied to an S3 prefix (the server's credentials
    in this process's env)."""
    from eve_contract.storage import open_store

    store = open_store(url, endpoint_url=endpoint)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            store.upload_file(path, str(path.relative_to(folder)))
