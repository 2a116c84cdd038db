"""Length grouping on the spliced length and packing in the collate: less padding, the same
samples in the same order, exact resume."""

from __future__ import annotations

import json

import pytest
import torch
from support.data_helpers import data_cfg  # type: ignore[import-not-found]

from eve_trainer.data import build_loader
from eve_trainer.data.samples import pack_rows


def _take(loader, n: int) -> list[dict]:  # noqa: ANN001
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def _samples(batch: dict) -> list[list[int]]:
    """The token ids of each sample of a (padded or packed) batch, in sample order."""
    index = batch.get("sample_index")
    if index is None:
        return [ids[m.bool()].tolist() for ids, m in zip(batch["input_ids"], batch["attention_mask"])]
    n = int(index.max()) + 1
    return [batch["input_ids"][index == k].tolist() for k in range(n)]


def test_pack_rows_first_fit_decreasing():
    assert pack_rows([5, 3, 8, 2], 10) == [[2, 3], [0, 1]]
    assert pack_rows([12, 3], 10) == [[0], [1]]  # too long for a row: a row of its own
    assert pack_rows([4, 4, 4], 10) == [[0], [1], [2]]  # 3 rows of 4 run fewer positions than 2 of 8
    assert pack_rows([3, 3, 6], 10) == [[2], [0, 1]]  # rows as long as the longest sample


@pytest.fixture(scope="module")
def eve_ds(tmp_path_factory):  # noqa: ANN001, ANN201
    from eve_trainer.data import write_synthetic_dataset

    root = tmp_path_factory.mktemp("eve-ds")
    write_synthetic_dataset(str(root), num_samples=96, kind="caption", seed=5, image_size=(40, 120),
                            samples_per_shard=32, profile="eve")
    return root


def _padding(batches: list[dict], proc) -> float:  # noqa: ANN001
    """Padding fraction after the splice (what the decoder runs)."""
    real = total = 0
    for b in batches:
        ids = b["input_ids"]
        n_img = (ids == -200).sum().item()
        rows, width = ids.shape
        spliced = b["attention_mask"].sum().item()
        for img in b["images"]:
            if img[3].any():
                h, w = (img[3] > 0).any(1).sum().item(), (img[3] > 0).any(0).sum().item()
                spliced += proc.num_image_tokens(w, h) - 1
        real += spliced
        # row width after the splice: the longest row's spliced length (recomputed per row)
        index = b.get("sample_index")
        lens = []
        for r in range(rows):
            n = b["attention_mask"][r].sum().item()
            ks = [r] if index is None else sorted(set(index[r][index[r] >= 0].tolist()))
            for k in ks:
                img = b["images"][k]
                if img[3].any():
                    h, w = (img[3] > 0).any(1).sum().item(), (img[3] > 0).any(0).sum().item()
                    n += proc.num_image_tokens(w, h) - 1
            lens.append(n)
        total += rows * max(lens)
        assert n_img <= len(b["images"])
    return 1 - real / total


def test_grouping_and_packing_cut_padding_and_keep_samples(eve_ds, tok, proc) -> None:  # noqa: ANN001
    make = lambda **kw: build_loader(data_cfg([str(eve_ds)], shuffle_buffer=48, max_length=256, **kw),  # noqa: E731
                                     tokenizer=tok, processor=proc, micro_batch_size=8, seed=1)
    plain = _take(make(), 12)
    grouped = _take(make(group_by_length=True), 12)
    packed = _take(make(group_by_length=True, pack=True), 12)
    # packing changes the layout only: the same samples, in the same order, batch by batch
    assert [_samples(b) for b in packed] == [_samples(b) for b in grouped]
    assert all(torch.equal(p["images"], g["images"]) for p, g in zip(packed, grouped))
    assert any(p["input_ids"].shape[0] < 8 for p in packed)
    pads = [_padding(b, proc) for b in (plain, grouped, packed)]
    assert pads[0] > pads[1] >= pads[2], pads
    print("padding fraction: plain %.3f grouped %.3f grouped+packed %.3f" % tuple(pads))


def test_resume_grouped_and_packed(eve_ds, tok, proc) -> None:  # noqa: ANN001
    cfg = data_cfg([str(eve_ds)], shuffle_buffer=20, group_by_length=True, pack=True)
    make = lambda: build_loader(cfg, tokenizer=tok, processor=proc, micro_batch_size=4, seed=7)  # noqa: E731
    full = _take(make(), 30)  # 96 samples: 24 steps an epoch, so this crosses an epoch boundary
    first = make()
    head = _take(first, 11)
    resumed = make()
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    tail = _take(resumed, 19)
    for i, (x, y) in enumerate(zip(full, head + tail)):
        for key in ("input_ids", "attention_mask", "labels", "sample_index", "images", "images_clip"):
            assert torch.equal(x[key], y[key]), f"batch {i}: {key} differs"


def test_synth_eve_profile_lengths(tmp_path) -> None:  # noqa: ANN001
    """`data synth --profile eve`: EVE-like caption lengths and photo aspect ratios, via the CLI."""
    import subprocess
    import sys

    from PIL import Image

    from eve_trainer.data.shards import iter_tar

    out = tmp_path / "eve"
    run = subprocess.run([sys.executable, "-m", "eve_operator.cli.main", "data", "synth", str(out), "--profile", "eve",
                          "--num-samples", "60", "-o", "json"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["samples"] == 60
    words, aspects = [], set()
    for shard in sorted(out.glob("*.tar")):
        for s in iter_tar(shard.open("rb")):
            words.append(len(json.loads(s.parts["json"])["caption"].split()))
            if "jpg" in s.parts:
                w, h = Image.open(__import__("io").BytesIO(s.parts["jpg"])).size
                aspects.add(round(w / h, 1))
    assert 10 <= min(words) and max(words) <= 60 and len(set(words)) > 10
    assert len(aspects) >= 4  # landscape, square and portrait photos
    bad = subprocess.run([sys.executable, "-m", "eve_operator.cli.main", "data", "synth", str(tmp_path / "x"),
                          "--profile", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "nope" in bad.stderr
