"""Object storage and the checkpoint layout against a real S3 server and a directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from eve_contract import layout
from eve_contract.storage import LocalStore, StorageError, open_store


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "local":
        return open_store(str(tmp_path / "store"))
    bucket = request.getfixturevalue("bucket")
    return open_store(f"s3://{bucket}/root")


def test_round_trip_list_and_delete(store) -> None:
    store.check()
    store.put_bytes("a/b.txt", b"hello")
    store.put_bytes("a/c/d.bin", b"\x00" * 10)
    assert store.get_bytes("a/b.txt") == b"hello"
    assert store.exists("a/b.txt") and not store.exists("a/zzz")
    assert store.list("a") == ["a/b.txt", "a/c/d.bin"]
    assert store.size("a/c/d.bin") == 10
    with store.open_read("a/b.txt", start=2) as stream:
        assert stream.read() == b"llo"
    assert store.child("a").get_bytes("b.txt") == b"hello"
    assert store.delete_prefix("a/c") == 1
    assert store.list("a") == ["a/b.txt"]
    with pytest.raises(FileNotFoundError, match="a/missing"):
        store.get_bytes("a/missing")


def test_upload_download_large_file_multipart(store, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(bytes(range(256)) * (20 * 2**20 // 256))  # 20 MiB > multipart threshold
    store.upload_file(src, "ckpt/big.bin")
    out = tmp_path / "out.bin"
    store.download_file("ckpt/big.bin", out)
    assert out.read_bytes() == src.read_bytes()


def _write_checkpoint(store, tmp_path: Path, step: int) -> None:
    shard = tmp_path / f"s{step}"
    shard.mkdir()
    (shard / "model.pt").write_bytes(b"m" * (100 + step))
    (shard / "optim" ).mkdir()
    (shard / "optim" / "rank0.pt").write_bytes(b"o" * 50)
    prefix = layout.checkpoint_prefix("pipe", "prealign", step)
    for entry in layout.entries_for_dir(shard):
        store.upload_file(shard / entry.path, f"{prefix}/{entry.path}")
    manifest = layout.Manifest("checkpoint", "pipe", "prealign", step, layout.entries_for_dir(shard))
    store.put_bytes(f"{prefix}/{layout.MANIFEST}", manifest.to_json())


def test_latest_complete_checkpoint_skips_corrupt_and_unfinished(store, tmp_path: Path) -> None:
    assert layout.latest_complete_checkpoint(store, "pipe", "prealign") is None
    _write_checkpoint(store, tmp_path, 3)
    _write_checkpoint(store, tmp_path, 6)
    # step 9 was cut off before its manifest: it must never be picked
    store.put_bytes(layout.checkpoint_prefix("pipe", "prealign", 9) + "/model.pt", b"partial")
    step, manifest = layout.latest_complete_checkpoint(store, "pipe", "prealign")
    assert (step, manifest.step) == (6, 6)
    # a truncated file in step 6 (same name, other bytes) fails the sha check -> step 3
    store.put_bytes(layout.checkpoint_prefix("pipe", "prealign", 6) + "/model.pt", b"m" * 10)
    assert layout.latest_complete_checkpoint(store, "pipe", "prealign")[0] == 3
    assert layout.list_checkpoint_steps(store, "pipe", "prealign") == [6, 3]


def test_stage_complete_requires_every_listed_file(store, tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text("{}")
    (export / "model.safetensors").write_bytes(b"w" * 64)
    prefix = layout.export_prefix("pipe", "sft")
    manifest = layout.Manifest("stage-complete", "pipe", "sft", 10, layout.entries_for_dir(export),
                               mlflow_run_id="run123")
    store.upload_file(export / "config.json", f"{prefix}/config.json")
    store.put_bytes(f"{prefix}/{layout.STAGE_COMPLETE}", manifest.to_json())
    assert layout.stage_complete(store, "pipe", "sft") is None  # weights missing
    store.upload_file(export / "model.safetensors", f"{prefix}/model.safetensors")
    found = layout.stage_complete(store, "pipe", "sft")
    assert found is not None and found.mlflow_run_id == "run123"


def test_missing_bucket_and_unreachable_endpoint_name_the_url(s3_env) -> None:
    with pytest.raises(StorageError, match=r"s3://no-such-bucket-here.*does not exist"):
        open_store("s3://no-such-bucket-here/x").check()
    with pytest.raises(StorageError, match="cannot reach s3://bkt"):
        open_store("s3://bkt/x", endpoint_url="http://127.0.0.1:9").check()


def test_bad_urls() -> None:
    with pytest.raises(StorageError, match="unsupported storage URL"):
        open_store("gs://bucket/x")
    with pytest.raises(StorageError, match="no bucket"):
        open_store("s3:///x")
    assert isinstance(open_store("file:///tmp/x"), LocalStore)
