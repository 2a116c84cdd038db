"""Data-loader throughput: S3 (loopback SeaweedFS) vs local disk, per loader worker.

    .venv/bin/python benchmarks/bench_data.py [--samples 480] [--batch 8] [--preset eve-7b]
    .venv/bin/python benchmarks/bench_data.py --megapixels 1,4 --local-only [--preset eve-7b-hd]

Writes the same photo-like JPEG shards (480-1024 px longest side, ~100-200 KB; or with
--megapixels 1,4 real camera sizes, 1-4 MP at EVE-like aspect ratios; noise texture so they
compress like photos) to a local directory and to a SeaweedFS bucket
started on loopback (tests/support/services.py: start_seaweedfs), then times the full loader
path - tar streaming, JPEG decode, eve_model's EveImageProcessor at the preset's size
(eve-7b: 672 px + 336 px teacher view), plain-template tokenisation, collation, transfer
to the main process - with one DataLoader worker process (--workers). Local and S3 runs
are interleaved and repeated; the best of each is reported, since this machine is shared.
A baseline times JPEG decode + EveImageProcessor alone on the same images in memory:
the ceiling any loader worker can reach, so loader/baseline is the pipeline's efficiency.

Headroom, one formula (docs/data.md): samples/s one rank's loader delivers (4 workers x the
per-worker rate over S3, or local with --local-only) / samples/s one GPU consumes, where a GPU
consumes peak x MFU / FLOPs per sample and the FLOPs per sample are eve_trainer.flops for the
7B recipe (LLM over the spliced tokens, LM head on the caption, PEL, PAL, teacher) on the
average sample of this run. Printed for A100 (312 TFLOP/s, 40% MFU) and H100 (989, 45%); the
number of GPUs cancels (one rank per GPU).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def photo_like(i: int, lo: int, hi: int, megapixels: tuple[float, float] | None = None) -> bytes:
    import random

    import numpy as np
    from PIL import Image

    from eve_trainer.data.synth import pick_aspect

    rng = np.random.default_rng(i)
    if megapixels:  # camera-sized photo: area in [lo, hi] MP, EVE-like aspect ratio
        aspect = pick_aspect(random.Random(i), "eve")
        area = float(rng.uniform(*megapixels)) * 1e6
        w, h = int((area * aspect) ** 0.5), int((area / aspect) ** 0.5)
    else:
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


def write_dataset(root: Path, n: int, size: tuple[int, int],
                  megapixels: tuple[float, float] | None = None) -> tuple[int, float]:
    import random

    from eve_contract.storage import open_store
    from eve_trainer.data.index import DatasetIndex
    from eve_trainer.data.shards import ShardWriter
    from eve_trainer.data.synth import caption

    store = open_store(str(root))
    writer = ShardWriter(store, shard_size=16 << 20)
    rng = random.Random(0)
    total = 0
    for i in range(n):
        jpg = photo_like(i, *size, megapixels=megapixels)
        total += len(jpg)
        writer.write(f"{i:08d}", {"jpg": jpg, "json": json.dumps({"caption": caption(rng, 3)}).encode()})
    DatasetIndex(shards=writer.close()).write(store)
    return len(writer.shards), total / n / 1024


def baseline(root: Path, proc, n: int, draft: str = "target") -> float:  # noqa: ANN001
    """Samples/s of JPEG decode + EveImageProcessor alone (no I/O, no tokenising, no batching).

    draft: "target" (as the loader: DCT downscale while >= the processor's resize target),
    "square" (the earlier rule: while both sides >= image_size), "none" (full decode)."""
    from PIL import Image

    from eve_trainer.data.samples import SampleBuilder
    from eve_trainer.data.shards import iter_tar

    builder = SampleBuilder(None, proc, "plain", 2048)

    jpgs = []
    for shard in sorted(root.glob("*.tar")):
        jpgs += [s.parts["jpg"] for s in iter_tar(shard.open("rb"))]
        if len(jpgs) >= n:
            break
    jpgs = jpgs[:n]
    import copy

    proc = copy.copy(proc)
    proc.parallel = False  # one thread: process CPU time = what a dedicated core needs
    t0, c0 = time.perf_counter(), time.process_time()
    for data in jpgs:
        img = Image.open(io.BytesIO(data))
        if draft == "target":
            img.draft("RGB", builder._resize_target(*img.size))
        elif draft == "square":
            img.draft("RGB", (proc.image_size, proc.image_size))
        proc(img.convert("RGB") if img.mode != "RGB" else img)
    CPU_RATES.setdefault(draft, []).append(len(jpgs) / (time.process_time() - c0))
    return len(jpgs) / (time.perf_counter() - t0)


#: samples per CPU-second of each baseline variant (one thread): the rate of an uncontended core
CPU_RATES: dict[str, list[float]] = {}


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
    ap.add_argument("--megapixels", default=None, help="min,max MP of camera-sized test photos (e.g. 1,4)")
    ap.add_argument("--local-only", action="store_true", help="no S3 (SeaweedFS) runs")
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
    from support.services import start_seaweedfs, stop

    from eve_contract.storage import open_store
    from eve_trainer.data import load_tokenizer

    proc = EveImageProcessor.from_config(get_preset(args.preset))
    tok = load_tokenizer("builtin:tiny")
    lo, hi = (int(v) for v in args.image_size.split(","))
    mp = tuple(float(v) for v in args.megapixels.split(",")) if args.megapixels else None
    names = ("local",) if args.local_only else ("local", "s3")
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "ds"
        shards, kb = write_dataset(local, args.samples, (lo, hi), mp)
        server = None if args.local_only else start_seaweedfs(Path(tmp) / "weed")
        try:
            urls = {"local": str(local)}
            if server is not None:
                for k, v in server.env().items():
                    os.environ[k] = v
                bucket = server.make_bucket("bench")
                s3 = open_store(f"s3://{bucket}/ds")
                for p in sorted(local.iterdir()):
                    s3.upload_file(p, p.name)
                urls["s3"] = f"s3://{bucket}/ds"
            rates: dict[str, list[float]] = {k: [] for k in (*names, "baseline", "baseline_square_draft",
                                                             "baseline_full_decode")}
            text = 0.0
            for _ in range(args.rounds):
                rates["baseline"].append(baseline(local, proc, 4 * args.batch))
                rates["baseline_square_draft"].append(baseline(local, proc, 4 * args.batch, "square"))
                rates["baseline_full_decode"].append(baseline(local, proc, 4 * args.batch, "none"))
                for name in names:
                    rate, text = measure(urls[name], tok, proc, args.batch, 2, args.batches, args.workers)
                    rates[name].append(rate)
        finally:
            if server is not None:
                stop(server.proc)
    best = {k: max(v) for k, v in rates.items()}
    per_worker = {k: best[k] / max(1, args.workers) for k in names}
    stream = per_worker[names[-1]]  # S3 unless --local-only
    consume = consumption(args.preset, proc, text)
    workers_per_rank = 4  # data.num_workers of the eve-7b recipe
    result = {
        "preset": args.preset, "image_size": proc.image_size, "samples": args.samples, "shards": shards,
        "megapixels": args.megapixels, "avg_jpeg_kb": round(kb, 1), "batch": args.batch, "workers": args.workers,
        "samples_per_s": {k: [round(x, 1) for x in v] for k, v in rates.items()},
        "best_per_worker": {k: round(v, 1) for k, v in per_worker.items()},
        "baseline_decode_processor": round(best["baseline"], 1),
        "baseline_square_draft": round(best["baseline_square_draft"], 1),
        "baseline_full_decode": round(best["baseline_full_decode"], 1),
        "baseline_per_cpu_second": {k: round(max(v), 1) for k, v in CPU_RATES.items()},
        "loader_over_baseline": round(stream / best["baseline"], 3),
        **consume,
        "headroom_a100": round(stream * workers_per_rank / consume["a100_gpu_samples_per_s"], 1),
        "headroom_h100": round(stream * workers_per_rank / consume["h100_gpu_samples_per_s"], 1),
        "load_avg": os.getloadavg()[0], "cpus": os.cpu_count(),
    }
    if "s3" in per_worker:
        result["s3_over_local"] = round(best["s3"] / best["local"], 3)
    print(f"preset {args.preset} ({proc.image_size} px), {args.samples} samples in {shards} shards, "
          f"avg JPEG {kb:.0f} KB, batch {args.batch}, load avg {result['load_avg']:.1f} on {result['cpus']} CPUs")
    for name in names:
        print(f"  {name:5s}: {per_worker[name]:7.1f} samples/s per worker  (runs: {result['samples_per_s'][name]})")
    if "s3_over_local" in result:
        print(f"  S3 / local = {result['s3_over_local']:.2f}")
    print(f"  baseline (JPEG decode + EveImageProcessor only, in memory): {best['baseline']:.1f} samples/s "
          f"(square-draft rule {best['baseline_square_draft']:.1f}, full decode {best['baseline_full_decode']:.1f}); "
          f"the loader worker reaches {result['loader_over_baseline']:.0%} of it")
    cpu = result["baseline_per_cpu_second"]
    print(f"  per CPU-second, one thread (an uncontended core): target draft {cpu['target']:.1f}, square draft "
          f"{cpu['square']:.1f}, full decode {cpu['none']:.1f} samples/s; headroom at that rate: "
          f"{cpu['target'] * workers_per_rank / consume['a100_gpu_samples_per_s']:.1f}x (A100) / "
          f"{cpu['target'] * workers_per_rank / consume['h100_gpu_samples_per_s']:.1f}x (H100)")
    print(f"7B step, {consume['tokens_per_sample']:.0f} tokens/sample, {consume['tflops_per_sample']:.1f} TFLOP/sample: "
          f"a GPU consumes {consume['a100_gpu_samples_per_s']:.2f}/s (A100, 40% MFU) or "
          f"{consume['h100_gpu_samples_per_s']:.2f}/s (H100, 45%); one rank with {workers_per_rank} workers "
          f"streams {stream * workers_per_rank:.0f}/s = {result['headroom_a100']}x (A100) / "
          f"{result['headroom_h100']}x (H100) headroom")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1))


def consumption(preset: str, proc, text_tokens: float) -> dict:  # noqa: ANN001
    """Samples/s one GPU consumes in a 7B step (eve_trainer.flops; the preset's image size, a
    square image: the most visual tokens) at A100 40% and H100 45% MFU."""
    try:
        from eve_model import get_preset
    except ImportError:
        from eve_model.presets import get_preset
    from eve_trainer.flops import step_flops

    cfg = get_preset("eve-7b-hd" if proc.image_size > 672 else "eve-7b")
    f = step_flops(cfg, llm_trains=True)
    grid = proc.grid(proc.image_size, proc.image_size)
    n = proc.num_image_tokens(proc.image_size, proc.image_size) - 1 + text_tokens
    per_sample = (f.per_token * n + f.per_target * text_tokens + f.per_len_sq * n * n
                  + f.per_patch * grid[0] * grid[1] + f.per_visual_token * (n - text_tokens + 1) + f.per_image)
    return {"tokens_per_sample": round(n, 1), "tflops_per_sample": round(per_sample / 1e12, 2),
            "a100_gpu_samples_per_s": round(312e12 * 0.40 / per_sample, 3),
            "h100_gpu_samples_per_s": round(989e12 * 0.45 / per_sample, 3)}


if __name__ == "__main__":
    main()
