"""Bad input: skipped, counted, logged with shard and key; fatal only past max_skip_fraction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.data_helpers import data_cfg  # type: ignore[import-not-found]
from test_resume import _check_resume, _take  # type: ignore[import-not-found]

from eve_contract.storage import open_store
from eve_trainer.data import DataError, DatasetIndex, build_loader
from eve_trainer.data.shards import ShardReadError, ShardWriter, iter_tar
from eve_trainer.data.synth import synth_sample


def _bad_dataset(root: Path) -> None:
    """4 shards of 12: shard 1 holds bad samples, shard 2 is cut in half."""
    store = open_store(str(root))
    writer = ShardWriter(store, max_samples=12)
    for i in range(48):
        parts = synth_sample(i, 5, "caption", (24, 64), text_only_every=0)
        if i == 13:
            parts["jpg" if "jpg" in parts else next(iter(parts))] = b"\xff\xd8 not a jpeg"
        if i == 15:
            parts["json"] = json.dumps({"text": "no caption key"}).encode()
        if i == 17:
            parts["json"] = json.dumps({"caption": "<image> twice"}).encode()
        writer.write(f"{i:06d}", parts)
    index = DatasetIndex(shards=writer.close())
    index.write(store)
    shard = root / index.shards[2].name
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])


@pytest.fixture(scope="module")
def bad_ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad-ds")
    _bad_dataset(root)
    return root


def test_skips_are_counted_and_logged(bad_ds, tok, proc, caplog) -> None:  # noqa: ANN001
    cfg = data_cfg([str(bad_ds)], max_skip_fraction=0.5, shuffle_buffer=8)
    loader = build_loader(cfg, tokenizer=tok, processor=proc, micro_batch_size=4, world_size=1)
    with caplog.at_level("WARNING", logger="eve_trainer.data"):
        _take(loader, 9)  # 36 of the 39 good samples of the first epoch (48 positions)
    stats = loader.stats
    assert stats["epoch"] == 0 and stats["samples"] == 36 and stats["seen"] <= 48
    _take(loader, 1)  # 3 more of epoch 0 and one of epoch 1
    stats = loader.stats
    assert stats["epoch"] == 1 and stats["samples"] == 40 and stats["seen"] >= 49
    assert stats["skipped"]["corrupt_image"] >= 1 and stats["skipped"]["missing_keys"] >= 1
    assert stats["skipped"]["image_token_mismatch"] >= 1 and stats["skipped"]["truncated_shard"] >= 6
    assert stats["skipped_total"] == stats["seen"] - 40
    assert "shard-000001.tar:000013" in caplog.text  # shard and key of the bad sample
    assert "shard-000002.tar" in caplog.text


def test_resume_through_bad_data(bad_ds, tok, proc) -> None:  # noqa: ANN001
    cfg = data_cfg([str(bad_ds)], max_skip_fraction=0.5, shuffle_buffer=8)
    _check_resume(cfg, tok, proc, world=1, steps=12, cut=5)


@pytest.mark.parametrize("workers", [0, 2])
def test_too_many_skips_fail_naming_the_shard(bad_ds, tok, proc, workers) -> None:  # noqa: ANN001
    cfg = data_cfg([str(bad_ds)], max_skip_fraction=0.01, num_workers=workers)
    loader = build_loader(cfg, tokenizer=tok, processor=proc, micro_batch_size=4, world_size=1)
    with pytest.raises(DataError, match=r"max_skip_fraction=0.01; last: .*shard-00000[12]\.tar") as err:
        _take(loader, 40)
    assert "Traceback" not in str(err.value)


def test_early_errors_name_the_url(s3_env, tok, proc, caption_ds, tmp_path) -> None:  # noqa: ANN001
    from eve_contract.storage import StorageError

    with pytest.raises(StorageError, match="s3://no-such-bucket-abc/ds"):
        build_loader(data_cfg(["s3://no-such-bucket-abc/ds"]), tokenizer=tok, processor=proc, micro_batch_size=2)
    with pytest.raises(DataError, match=f"{tmp_path}/index.json not found"):
        build_loader(data_cfg([str(tmp_path)]), tokenizer=tok, processor=proc, micro_batch_size=2)
    loader = build_loader(data_cfg([str(caption_ds)]), tokenizer=tok, processor=proc, micro_batch_size=2)
    other = build_loader(data_cfg([str(caption_ds)]), tokenizer=tok, processor=proc, micro_batch_size=2,
                         world_size=2)
    with pytest.raises(DataError, match="world_size: checkpoint 1 != now 2"):
        other.load_state_dict(loader.state_dict())


def test_tar_reader_offsets_and_truncation(caption_ds) -> None:  # noqa: ANN001
    import webdataset as wds

    shard = caption_ds / "shard-000000.tar"
    ours = list(iter_tar(shard.open("rb")))
    theirs = list(wds.WebDataset(str(shard), shardshuffle=False))
    assert [s.key for s in ours] == [s["__key__"] for s in theirs]  # standard WebDataset layout
    with shard.open("rb") as f:  # resuming at a sample's offset yields the rest
        f.seek(ours[7].offset)
        assert [s.key for s in iter_tar(f, start=ours[7].offset)] == [s.key for s in ours[7:]]
    data = shard.read_bytes()
    import io

    got = []
    with pytest.raises(ShardReadError):
        for s in iter_tar(io.BytesIO(data[: ours[5].offset + 700])):
            got.append(s.key)
    assert got == [s.key for s in ours[:5]]  # complete samples only


def test_a_shard_cut_between_samples_fails_here_but_not_in_webdataset(caption_ds, tmp_path) -> None:  # noqa: ANN001
    """Why the reader stays ours (docs/data.md): webdataset takes a shard cut at a sample
    boundary for a complete one; iter_tar raises. It yields the samples before the last one
    (the last one might have had more members) and never a sample cut short."""
    import webdataset as wds

    shard = caption_ds / "shard-000000.tar"
    ours = list(iter_tar(shard.open("rb")))
    cut = tmp_path / "cut.tar"
    cut.write_bytes(shard.read_bytes()[: ours[5].offset])
    assert [s["__key__"] for s in wds.WebDataset(str(cut), shardshuffle=False)] == [s.key for s in ours[:5]]
    got = []
    with pytest.raises(ShardReadError, match="no end-of-archive marker"):
        for s in iter_tar(cut.open("rb")):
            got.append(s.key)
    assert got == [s.key for s in ours[:4]]
