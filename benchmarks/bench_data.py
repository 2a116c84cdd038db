"""Data-loader throughput: S3 (loopback SeaweedFS) vs local disk, per loader worker.

    .venv/bin/python benchmarks/bench_data.py [--samples 480] [--batch 8] [--preset eve-7b]

Writes the same photo-like JPEG shards (480-1024 px longest side, ~100-200 KB, noise
texture so they compress like photos) to a local directory and to a SeaweedFS bucket
started on loopback (tests/fixtures/services.start_seaweedfs), then times the full loader
path - tar streaming, JPEG decode, eve_model's EveImageProcessor at the preset's size
(eve-7b: 672 px + 336 px teacher view), plain-template tokenisation, collation, transfer
to the main process - with one DataLoader worker process (--workers). Local and S3 runs
are interleaved and repeated; the best of each is reported, since this machine is shared.
A baseline times JPEG decode + EveImageProcessor alone on the same images in memory:
the ceiling any loader worker can reach, so loader/baseline is the pipeline's efficiency.

It also prints the sample rate a 7B model on 8 A100s consumes:
6 * 7e9 * tokens_per_sample FLOPs per sample at 312 TFLOP/s bf16 and 40% MFU.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # fixtures.services


def photo_like(i: int, lo: int, hi: int) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(i)
    long_side = int(rng.integers(lo, hi + 1))
    aspect = float(rng.choice([1.0, 4 / 3, 3 / 4, 16 / 9, 1.5, 2 / 3]))
    w, h = (long_side, int(long_side / aspect)) if aspect >= 1 else (int(long_side * aspect), long_side)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(0, 255, 3)[None, None] * (x / w)[..., None] + rng.uniform(0, 255, 3)[None, None] * (y / h)[..., None]
    noise = rng.normal(0, 18, (h, w, 3))
    img = np.clip(base * 0.5 + noise + 40, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def write_dataset(root: Path, n: int, size: tuple[int, int]) -> tuple[int, float]:
    from eve_trainer.data.index import DatasetIndex
    from eve_trainer.data.shards import ShardWriter
    from eve_trainer.data.synth import caption
    from eve_trainer.storage import open_store

    import random

    store = open_store(str(root))
    writer = ShardWriter(store, shard_size=16 << 20)
    rng = random.Random(0)
    total = 0
    for i in range(n):
        jpg = photo_like(i, *size)
        total += len(jpg)
        writer.write(f"{i:08d}", {"jpg": jpg, "json": json.dumps({"caption": caption(rng, 3)}).encode()})
    DatasetIndex(shards=writer.close()).write(store)
    return len(writer.shards), total / n / 1024


def baseline(root: Path, proc, n: int) -> float:  # noqa: ANN001
    """Samples/s of JPEG decode + EveImageProcessor alone (no I/O, no tokenising, no batching)."""
    from PIL import Image

    from eve_trainer.data.shards import iter_tar

    jpgs = []
    for shard in sorted(root.glob("*.tar")):
        jpgs += [s.parts["jpg"] for s in iter_tar(shard.open("rb"))]
        if len(jpgs) >= n:
            break
    jpgs = jpgs[:n]
    t0 = time.perf_counter()
    for data in jpgs:
        img = Image.open(io.BytesIO(data))
        img.draft("RGB", (proc.image_size, proc.image_size))
        proc(img.convert("RGB"))
    return len(jpgs) / (time.perf_counter() - t0)


def measure(url: str, tok, proc, batch: int, warmup: int, batches: int, workers: int) -> tuple[float, float]:  # noqa: ANN001
    from eve_trainer.config import DataSection
    from eve_trainer.data import build_loader

    cfg = DataSection(urls=[url], num_workers=workers, shuffle_buffer=64, max_length=2048)
    loader = build_loader(cfg, tokenizer=tok, processor=proc, micro_batch_size=batch, world_size=1, seed=0)
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    text_tokens = 0
    for _ in range(batches):
        b = next(it)
        text_tokens += int(b["attention_mask"].sum())
    dt = time.perf_counter() - t0
    return batches * batch / dt, text_tokens / (batches * batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=480)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batches", type=int, default=40, help="timed batches per run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--preset", default="eve-7b")
    ap.add_argument("--image-size", default="480,1024", help="min,max longest side of the test images")
    ap.add_argument("--workers", type=int, default=1, help="loader worker processes (0 = in the main process)")
    ap.add_argument("--json", dest="json_out", default=None, help="also write the results here")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    try:
        from eve_model import EveImageProcessor, get_preset
    except ImportError:
        from eve_model.presets import get_preset
        from eve_model.processing import EveImageProcessor
    from fixtures.services import start_seaweedfs, stop

    from eve_trainer.data import load_tokenizer
    from eve_trainer.storage import open_store

    proc = EveImageProcessor.from_config(get_preset(args.preset))
    tok = load_tokenizer("builtin:tiny")
    lo, hi = (int(v) for v in args.image_size.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "ds"
        shards, kb = write_dataset(local, args.samples, (lo, hi))
        server = start_seaweedfs(Path(tmp) / "weed")
        try:
            for k, v in server.env().items():
                os.environ[k] = v
            bucket = server.make_bucket("bench")
            s3 = open_store(f"s3://{bucket}/ds")
            for p in sorted(local.iterdir()):
                s3.upload_file(p, p.name)
            rates: dict[str, list[float]] = {"local": [], "s3": [], "baseline": []}
            text = 0.0
            for _ in range(args.rounds):
                rates["baseline"].append(baseline(local, proc, 4 * args.batch))
                for name, url in (("local", str(local)), ("s3", f"s3://{bucket}/ds")):
                    rate, text = measure(url, tok, proc, args.batch, 2, args.batches, args.workers)
                    rates[name].append(rate)
        finally:
            stop(server.proc)
    best = {k: max(v) for k, v in rates.items()}
    per_worker = {k: v / max(1, args.workers) for k, v in best.items() if k != "baseline"}
    # consumption of a 7B model on 8 A100s: visual tokens of a square 672 image = 1 + 24*25 = 601
    visual = proc.num_image_tokens(proc.image_size, proc.image_size)
    tokens = visual + text
    flops_per_sample = 6 * 7e9 * tokens
    cluster = 8 * 312e12 * 0.40 / flops_per_sample
    per_gpu = cluster / 8
    workers_per_rank = 4  # data.num_workers of the eve-7b recipe
    result = {
        "preset": args.preset, "image_size": proc.image_size, "samples": args.samples, "shards": shards,
        "avg_jpeg_kb": round(kb, 1), "batch": args.batch, "workers": args.workers,
        "samples_per_s": {k: [round(x, 1) for x in v] for k, v in rates.items()},
        "best_per_worker": {k: round(v, 1) for k, v in per_worker.items()},
        "s3_over_local": round(best["s3"] / best["local"], 3),
        "baseline_decode_processor": round(best["baseline"], 1),
        "s3_over_baseline": round(per_worker["s3"] / best["baseline"], 3),
        "tokens_per_sample": round(tokens, 1),
        "a100x8_consumes_samples_per_s": round(cluster, 1),
        "per_gpu_samples_per_s": round(per_gpu, 2),
        "headroom_per_rank_4_workers": round(per_worker["s3"] * workers_per_rank / per_gpu, 1),
        "load_avg": os.getloadavg()[0], "cpus": os.cpu_count(),
    }
    print(f"preset {args.preset} ({proc.image_size} px), {args.samples} samples in {shards} shards, "
          f"avg JPEG {kb:.0f} KB, batch {args.batch}, load avg {result['load_avg']:.1f} on {result['cpus']} CPUs")
    for name in ("local", "s3"):
        print(f"  {name:5s}: {per_worker[name]:7.1f} samples/s per worker  (runs: {result['samples_per_s'][name]})")
    print(f"  S3 / local = {result['s3_over_local']:.2f}")
    print(f"  baseline (JPEG decode + EveImageProcessor only, in memory): {best['baseline']:.1f} samples/s; "
          f"S3 loader worker reaches {result['s3_over_baseline']:.0%} of it")
    print(f"7B on 8xA100 (312 TFLOP/s bf16, 40% MFU), {tokens:.0f} tokens/sample ({visual} visual): "
          f"{cluster:.1f} samples/s total, {per_gpu:.2f} per GPU; "
          f"one rank with 4 workers streams {per_worker['s3'] * 4:.0f}/s = {result['headroom_per_rank_4_workers']}x headroom")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
