"""Exact mid-epoch resumption: interrupted + resumed == uninterrupted, per rank."""

from __future__ import annotations

import json

import pytest
import torch
from data_helpers import data_cfg  # type: ignore[import-not-found]

from eve_trainer.data import build_loader


def _take(loader, n: int) -> list[dict]:  # noqa: ANN001
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        for key in ("input_ids", "attention_mask", "labels", "images", "images_clip"):
            assert torch.equal(x[key], y[key]), f"batch {i}: {key} differs"


def _check_resume(cfg, tok, proc, world: int, steps: int, cut: int) -> list[list[dict]]:  # noqa: ANN001
    per_rank = []
    for rank in range(world):
        make = lambda: build_loader(cfg, tokenizer=tok, processor=proc, micro_batch_size=4,  # noqa: E731
                                    rank=rank, world_size=world, seed=7)
        full = _take(make(), steps)
        first = make()
        head = _take(first, cut)
        state = json.loads(json.dumps(first.state_dict()))  # must survive a JSON checkpoint
        resumed = make()
        resumed.load_state_dict(state)
        tail = _take(resumed, steps - cut)
        _same(full, head + tail)
        assert resumed.stats["batches"] == steps
        per_rank.append(full)
    return per_rank


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_local(caption_ds, tok, proc, workers: int) -> None:  # noqa: ANN001
    # 130 samples, world 2 -> 65 per rank, 16 steps per epoch: 21 steps cross an epoch boundary
    cfg = data_cfg([str(caption_ds)], num_workers=workers, shuffle_buffer=12)
    _check_resume(cfg, tok, proc, world=2, steps=21, cut=9 if workers else 5)


def test_resume_s3_conversations_grouped(s3_env, bucket, conv_ds, tok, proc) -> None:  # noqa: ANN001
    from eve_contract.storage import open_store

    store = open_store(f"s3://{bucket}/conv")
    for name in sorted(p.name for p in conv_ds.iterdir()):
        store.upload_file(conv_ds / name, name)
    cfg = data_cfg([f"s3://{bucket}/conv"], num_workers=2, template="vicuna_v1", group_by_length=True,
                   shuffle_buffer=20)
    _check_resume(cfg, tok, proc, world=2, steps=14, cut=7)


def test_ranks_disjoint_and_equal(caption_ds, tok, proc) -> None:  # noqa: ANN001
    """One epoch of each rank: the same number of samples, no sample on two ranks."""
    cfg = data_cfg([str(caption_ds)], num_workers=0, shuffle_buffer=0)
    seen = []
    for rank in range(2):
        loader = build_loader(cfg, tokenizer=tok, processor=proc, micro_batch_size=5, rank=rank,
                              world_size=2, seed=1)
        assert loader.samples_per_epoch == 65
        rows = set()
        for batch in _take(loader, 13):  # 13 * 5 = 65 = exactly one epoch
            for ids, img in zip(batch["input_ids"], batch["images"]):
                rows.add((tuple(ids.tolist()), round(float(img.sum()), 2)))
        assert loader.stats["epoch"] == 1 and loader.stats["samples"] == 65
        seen.append(rows)
    assert len(seen[0]) == len(seen[1]) == 65
    assert not seen[0] & seen[1]


def test_mixed_datasets_are_concatenated(caption_ds, conv_ds, tok, proc) -> None:  # noqa: ANN001
    cfg = data_cfg([str(caption_ds), str(conv_ds)], template="plain")
    loader = build_loader(cfg, tokenizer=tok, processor=proc, micro_batch_size=8, world_size=1)
    assert loader.samples_per_epoch == 130 + 90
    _take(loader, 28)  # 224 samples: one epoch of both
    assert loader.stats["epoch"] == 1 and loader.stats["skipped_total"] == 0


def _ids(batches: list[dict]) -> list[tuple]:
    """One identity per delivered sample: its tokens and its image."""
    out = []
    for batch in batches:
        for ids, mask, img in zip(batch["input_ids"], batch["attention_mask"], batch["images"]):
            out.append((tuple(ids[mask.bool()].tolist()), round(float(img.double().sum()), 3)))
    return out


def test_resume_on_another_world_size_sees_every_sample_once(tmp_path, tok, proc) -> None:  # noqa: ANN001
    """2 -> 4 -> 1 ranks (global batch 8 throughout, micro 4 / 2 / 8, 2 / 1 / 1 workers): the
    samples delivered across both boundaries are exactly one epoch, each sample once; then the
    next epoch is whole again. (Each loader worker runs its own epochs: the last phase has one
    worker so that 5 steps end the epoch exactly.)"""
    from collections import Counter

    from eve_trainer.data import write_synthetic_dataset

    write_synthetic_dataset(str(tmp_path / "ds"), num_samples=96, kind="caption", seed=5, samples_per_shard=14)

    def loaders(world: int, micro: int, workers: int) -> list:  # noqa: ANN202
        cfg = data_cfg([str(tmp_path / "ds")], num_workers=workers, shuffle_buffer=5)
        return [build_loader(cfg, tokenizer=tok, processor=proc, micro_batch_size=micro, rank=r,
                             world_size=world, seed=11) for r in range(world)]

    def run(ls: list, steps: int) -> tuple[list[tuple], list[dict]]:  # noqa: ANN202
        seen = [s for loader in ls for s in _ids(_take(loader, steps))]
        return seen, [json.loads(json.dumps(loader.state_dict())) for loader in ls]

    whole, _ = run(loaders(1, 8, 0), 12)  # one uninterrupted epoch: 96 = 12 x 8
    first, states = run(loaders(2, 4, 2), 3)  # 24 samples
    four = loaders(4, 2, 1)
    facts = [loader.load_resharded(states) for loader in four]
    assert facts[0] == {"epoch": 0, "left_in_epoch": 72, "not_seen": 0, "delivered_before": 24}
    second, states = run(four, 4)  # 32 samples, mid-window on every rank
    one = loaders(1, 8, 1)
    assert one[0].load_resharded(states)["left_in_epoch"] == 40
    third, state = run(one, 5)  # the last 40 samples of the epoch
    assert Counter(first + second + third) == Counter(whole) and len(whole) == 96
    # the following epoch is whole again, and a same-size resume inside it stays exact
    again = loaders(1, 8, 1)
    again[0].load_state_dict(state[0])
    nxt, _ = run(again, 12)
    assert Counter(nxt) == Counter(whole)
