"""Converters and the `eve-platform data` verbs, on disk and on the real S3 (SeaweedFS)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eve_operator.cli.cmd_data import data_app


def _images(root: Path) -> None:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(root / "a.jpg")
    Image.new("RGB", (20, 50), (10, 200, 10)).save(root / "b.png")
    Image.new("RGB", (33, 33), (10, 10, 200)).save(root / "c.gif")  # re-encoded to PNG
    good = (root / "a.jpg").read_bytes()
    (root / "corrupt.jpg").write_bytes(good[: len(good) // 3])


def _llava(root: Path) -> Path:
    conv = lambda q: [{"from": "human", "value": q}, {"from": "gpt", "value": "A red box."}]  # noqa: E731
    records = [
        {"id": "ok1", "image": "a.jpg", "conversations": conv("<image>\nWhat is it?")},
        {"id": "ok2", "image": "b.png", "conversations": conv("Describe.\n<image>")},
        {"id": "ok3", "image": "c.gif", "conversations": conv("<image>\nColor?")},
        {"id": "text", "conversations": conv("Tell me a fact.")},
        {"id": "corrupt", "image": "corrupt.jpg", "conversations": conv("<image>\nWhat?")},
        {"id": "missing", "image": "nope.jpg", "conversations": conv("<image>\nWhat?")},
        {"id": "no-token", "image": "a.jpg", "conversations": conv("What is it?")},
        {"id": "stray-token", "conversations": conv("<image>\nWhat is it?")},
        {"id": "no-keys", "image": "a.jpg"},
    ]
    path = root / "mix.json"
    path.write_text(json.dumps(records))
    return path


def test_convert_llava_to_s3_and_load(s3_env, bucket, tmp_path, tok, proc) -> None:  # noqa: ANN001
    from support.data_helpers import data_cfg  # type: ignore[import-not-found]

    from eve_trainer.data import build_loader

    _images(tmp_path / "img")
    src = _llava(tmp_path)
    result = CliRunner().invoke(data_app, ["convert", str(src), f"s3://{bucket}/sft", "--images",
                                           str(tmp_path / "img"), "--workers", "2", "-o", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["samples"] == 4 and report["shards"] == 1  # worker 2 got only bad records
    assert report["skipped"] == {"corrupt_image": 1, "missing_image": 1, "image_token_mismatch": 2,
                                 "missing_keys": 1}
    cfg = data_cfg([f"s3://{bucket}/sft"], template="vicuna_v1")
    loader = build_loader(cfg, tokenizer=tok, processor=proc, micro_batch_size=2, world_size=1)
    batch = next(iter(loader))
    assert batch["images"].shape == (2, 4, 224, 224) and batch["images_clip"].shape == (2, 4, 112, 112)
    assert loader.samples_per_epoch == 4


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_convert_captions_local(tmp_path, fmt: str) -> None:  # noqa: ANN001
    from eve_contract.storage import open_store
    from eve_trainer.data.index import DatasetIndex

    _images(tmp_path / "img")
    rows = [("a.jpg", "a red box"), ("b.png", "a green box"), ("corrupt.jpg", "broken"),
            ("a.jpg", "")] * 5
    src = tmp_path / f"caps.{fmt}"
    if fmt == "csv":
        with src.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "caption"])
            w.writerows(rows)
    else:
        src.write_text("\n".join([json.dumps({"image": i, "caption": c}) for i, c in rows] + ["{not json"]))
    out = tmp_path / "out"
    result = CliRunner().invoke(data_app, ["convert", str(src), str(out), "--images", str(tmp_path / "img"),
                                           "--shard-size", "4KB", "--workers", "1", "-o", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["samples"] == 10
    expected = {"corrupt_image": 5, "missing_keys": 5} | ({"bad_json": 1} if fmt == "jsonl" else {})
    assert report["skipped"] == expected
    index = DatasetIndex.read(open_store(str(out)))
    assert index.num_samples == 10 and len(index.shards) >= 3  # 4 KB shards roll over
    assert sorted(p.name for p in out.iterdir()) == sorted([s.name for s in index.shards] + ["index.json"])


def test_cli_errors_are_one_line(s3_env, tmp_path) -> None:  # noqa: ANN001
    runner = CliRunner()
    result = runner.invoke(data_app, ["synth", "s3://no-such-bucket-xyz/ds", "--num-samples", "5"])
    assert result.exit_code == 2
    assert "s3://no-such-bucket-xyz/ds" in result.output and "does not exist" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(data_app, ["convert", str(tmp_path / "none.json"), str(tmp_path / "o")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_synth_cli_s3(s3_env, bucket) -> None:  # noqa: ANN001
    result = CliRunner().invoke(data_app, ["synth", f"s3://{bucket}/demo", "--num-samples", "60", "--kind",
                                           "conversation", "--seed", "3", "-o", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["samples"] == 60
    result = CliRunner().invoke(data_app, ["info", f"s3://{bucket}/demo", "-o", "json"])
    assert json.loads(result.stdout)["num_samples"] == 60
