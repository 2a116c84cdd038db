"""eve-train benchmarks.

CPU (default; what CI machines can run):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_trainer.py [--steps 20] [--reps 3]

1. Trainer overhead. One Trainer (tiny preset, world 1, DeepSpeed ZeRO-2, MLflow logging to a
   local sqlite store, JSON progress) against a bare loop over the same DeepSpeed engine and the
   same pre-collected batches (forward / backward / step only: no metrics, reduction, logging or
   checkpointing). Steps of both alternate one by one and the median step times are compared; the
   target is <= 5 % overhead.
2. Checkpoint save + restore through CheckpointManager to SeaweedFS on loopback (DeepSpeed
   save to local disk, sha256, parallel multipart upload, manifest; download, sha256 check,
   DeepSpeed load) against a plain boto3 upload + download of the same files
   (client.upload_file / download_file with default settings, one file after another).
   The target is >= 0.8x of boto3's throughput. The checkpointed model is a widened tiny
   preset (--ckpt-hidden, --ckpt-layers) so the files are a few hundred MB.

GPU (--gpu; single process, world 1, no S3):

    python benchmarks/bench_trainer.py --gpu [--micro 4] [--seq 2048] [--steps 10] [--preset small]
        [--width 7b --layers 4] [--zero 2|3] [--compile] [--checkpointing]
        [--dist full|caption|sft] [--pack] [--no-group] [--loss-chunk N] [--attn auto|sdpa|flex|varlen]
    python benchmarks/bench_trainer.py --gpu --suite FILE --out results.jsonl --budget-s 400

bf16, world 1, through Trainer.train_step, on synthetic micro-batches laid out by the data
pipeline's collate: `full` rows (one square image + text to --seq positions, no padding) or EVE
length distributions (`caption`, `sft`; see sample_lengths), padded (grouped by length unless
--no-group) or packed. Prints real tokens/s, the padding fraction and the useful-token MFU: the
trainer's step FLOPs (flops.py, docs/trainer.md) / step time / peak (989 TFLOP/s dense bf16 for
an H100 or H200; EVE_PEAK_TFLOPS overrides). --width 7b gives EVE-7B's decoder width with
--layers layers. A suite file lists one configuration per line (benchmarks/gpu_suite.sh).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from itertools import cycle
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("DS_ACCELERATOR", "cpu" if "--gpu" not in sys.argv else "cuda")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_trainer(tmp: Path, overrides: list[str], preset: str = "tiny"):
    from eve_trainer.config import resolve
    from eve_trainer.data import write_synthetic_dataset
    from eve_trainer.distributed import DistInfo
    from eve_trainer.progress import Progress
    from eve_trainer.trainer import Trainer

    data = tmp / "data"
    if not data.exists():
        write_synthetic_dataset(str(data), num_samples=64, kind="caption", seed=0)
    cfg = resolve("pretrain", preset, [f"data.urls=[{data}]", f"output={tmp / 'out'}", "progress=json",
                                       "data.num_workers=1", *overrides])
    trainer = Trainer(cfg, DistInfo())
    trainer.progress = Progress("json", total_steps=trainer.total_steps, stream=io.StringIO())
    return trainer


def bare_step(trainer, batches) -> None:
    """What a training step needs and nothing else."""
    engine = trainer.engine
    for _ in range(trainer.grad_accum):
        out = engine(**trainer._to_device(next(batches)))
        engine.backward(out.loss)
        engine.step()


def trainer_step(trainer, batches):
    result = trainer.train_step(batches)
    trainer.step += 1
    trainer.log_step(result)
    return result


def timed(fn, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


# -- 1. overhead ------------------------------------------------------------------------------


def bench_overhead(tmp: Path, steps: int, reps: int) -> dict:
    trainer = build_trainer(tmp, ["max_steps=100000", f"mlflow.tracking_uri=sqlite:///{tmp / 'mlflow.db'}",
                                  "mlflow.experiment=bench", "mlflow.system_metrics=false"])
    trainer._start_tracking(None)  # the MLflow run, params, and a background logger as in train()
    source = iter(trainer.loader)
    batches = cycle([next(source) for _ in range(4 * trainer.grad_accum)])  # the same batches for both
    for _ in range(3):  # warm-up (allocator, first-call paths)
        bare_step(trainer, batches)
        trainer_step(trainer, batches)
    bare, full = [], []
    for i in range(reps * steps):  # alternate step by step (order swapped each time): load from
        # other processes and first-after-switch effects hit both alike
        pair = [(bare, lambda: bare_step(trainer, batches)), (full, lambda: trainer_step(trainer, batches))]
        for times, fn in pair if i % 2 else pair[::-1]:
            times += timed(fn, 1)
    run_id = trainer.logger.wait_for_run(30)
    trainer.logger.close("FINISHED")
    b, f = statistics.median(bare), statistics.median(full)
    # the minimum is the uncontended cost: on a shared machine the least noisy estimate
    return {"bare_step_s": b, "trainer_step_s": f, "overhead_pct": 100 * (f / b - 1),
            "overhead_of_min_pct": 100 * (min(full) / min(bare) - 1), "steps": len(bare),
            "mlflow_run": run_id, "grad_accum": trainer.grad_accum}


# -- 2. checkpoint throughput ------------------------------------------------------------------


def build_engine(hidden: int, layers: int):
    import deepspeed
    import torch

    from eve_model import EveForCausalLM, get_preset, set_trainable
    from eve_trainer.config import resolve
    from eve_trainer.distributed import DistInfo, init_process_group
    from eve_trainer.optim import build_optimizer, build_scheduler, deepspeed_config
    from eve_trainer.trainer import skip_shm_comm_build

    skip_shm_comm_build()  # a CPU engine, as the trainer builds it
    init_process_group(DistInfo())
    torch.manual_seed(0)
    model = EveForCausalLM(get_preset("tiny", hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                                      num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=8))
    set_trainable(model, "pretrain")
    cfg = resolve("pretrain", "tiny", ["global_batch_size=4", "micro_batch_size=4"])
    opt = build_optimizer(model, cfg.optim)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=build_scheduler(opt, cfg.optim, 100),
                                      config=deepspeed_config(cfg, world_size=1, bf16=False, cuda=False))
    loss = sum(p.float().pow(2).mean() for p in engine.module.parameters() if p.requires_grad)
    engine.backward(loss)  # one step so the Adam moments exist and are checkpointed
    engine.step()
    return engine


def bench_checkpoint(tmp: Path, hidden: int, layers: int, reps: int) -> dict:
    from support.services import start_seaweedfs, stop

    from eve_contract.storage import S3Store
    from eve_trainer.checkpoint import DS_TAG, CheckpointManager

    server = start_seaweedfs(tmp / "seaweedfs")
    try:
        for key, value in server.env().items():
            os.environ[key] = value
        bucket = server.make_bucket("bench")
        client = server.client()
        engine = build_engine(hidden, layers)
        store = S3Store(bucket, "ckpt", endpoint_url=server.endpoint_url)
        manager = CheckpointManager(store, pipeline="bench", stage="pretrain", rank=0, world_size=1,
                                    every_steps=1, keep_last=1, config_json="{}", config_hash="bench")
        ours_save, ours_load, plain_up, plain_down = [], [], [], []
        size = 0
        for rep in range(reps):
            # ours: save (DeepSpeed -> local -> sha256 -> parallel upload -> manifest), then restore
            t0 = time.perf_counter()
            manifest = manager.save(rep + 1, engine, {"step": rep + 1, "loader": {}}, None)
            ours_save.append(time.perf_counter() - t0)
            size = sum(f.size for f in manifest.files)
            t0 = time.perf_counter()
            restored = manager.load(engine)
            ours_load.append(time.perf_counter() - t0)
            assert restored is not None and restored.step == rep + 1
            # plain boto3 on the same bytes: serialisation excluded, one file after another
            local = tmp / f"plain-{rep}"
            engine.save_checkpoint(str(local), tag=DS_TAG, client_state={})
            files = [p for p in local.rglob("*") if p.is_file()]
            t0 = time.perf_counter()
            for path in files:
                client.upload_file(str(path), bucket, f"plain/{rep}/{path.relative_to(local)}")
            plain_up.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for path in files:
                client.download_file(bucket, f"plain/{rep}/{path.relative_to(local)}", str(path) + ".down")
            plain_down.append(time.perf_counter() - t0)
            S3Store(bucket, "plain", endpoint_url=server.endpoint_url).delete_prefix("")
            shutil.rmtree(local)
            print(f"  rep {rep}: {size / 2**20:.0f} MiB save {ours_save[-1]:.2f}s restore {ours_load[-1]:.2f}s "
                  f"boto3 up {plain_up[-1]:.2f}s down {plain_down[-1]:.2f}s", flush=True)
        mb = size / 2**20
        best = min
        return {"checkpoint_mib": round(mb, 1),
                "save_mib_s": mb / best(ours_save), "boto3_upload_mib_s": mb / best(plain_up),
                "restore_mib_s": mb / best(ours_load), "boto3_download_mib_s": mb / best(plain_down),
                "save_ratio": best(plain_up) / best(ours_save), "restore_ratio": best(plain_down) / best(ours_load),
                "save_restore_ratio": (best(plain_up) + best(plain_down)) / (best(ours_save) + best(ours_load))}
    finally:
        stop(server.proc)


# -- GPU ---------------------------------------------------------------------------------------

#: --width 7b: EVE-7B's decoder width (hidden 4096, intermediate 11008, 32 heads) with --layers
#: layers, so that one GPU holds it; the vision tower, PAL and teacher are the real ones.
WIDTH_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32, "num_key_value_heads": 32}


def sample_lengths(dist: str, rng, proc, seq: int) -> tuple[tuple[int, int] | None, int]:
    """(image size or None, text tokens) of one sample of distribution `dist`:

    full     one square image (601 visual tokens at 672 px) and text up to `seq` positions (no padding)
    caption  EVE stage 1-2 captions: photo aspect ratios (126-601 visual tokens), 10-60 text tokens
    sft      EVE SFT: 1 in 10 text-only, conversations of 50-1500 tokens (log-normal, median ~200)
    """
    from eve_trainer.data.synth import pick_aspect

    if dist == "full":
        return (672, 672), seq - proc.num_image_tokens(672, 672) + 1
    aspect = pick_aspect(rng, "eve")
    size = (672, max(8, round(672 / aspect))) if aspect >= 1 else (max(8, round(672 * aspect)), 672)
    if dist == "caption":
        return size, 2 + round(rng.triangular(10, 60, 20))
    text = min(1500, max(50, round(rng.lognormvariate(5.3, 0.8))))
    image = None if rng.random() < 0.1 else size
    n_img = proc.num_image_tokens(*image) - 1 if image else 0
    return image, min(text, seq - n_img)  # text truncated before the splice, as the reference does


def synthetic_batches(trainer, micro: int, seq: int, dist: str = "full", *, pack: bool = False, group: bool = True,
                      n_batches: int = 8, seed: int = 0):
    """Endless cycle over `n_batches` micro-batches of `micro` samples drawn from `dist`, laid out
    by the data pipeline's own collate (padded rows, or packed rows of `seq` positions), sorted
    by spliced length within chunks of 16 micro-batches when `group` (data.group_by_length)."""
    import random

    import torch
    from PIL import Image

    from eve_model import IGNORE_INDEX, IMAGE_TOKEN_INDEX, EveImageProcessor
    from eve_trainer.data.plan import group_by_length
    from eve_trainer.data.samples import collate

    cfg = trainer.model_config
    proc = EveImageProcessor.from_config(cfg)
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    scale = cfg.image_size / 672
    samples = []
    for _ in range(micro * n_batches):
        image, n_text = sample_lengths(dist, rng, proc, seq)
        ids = torch.randint(3, cfg.vocab_size, (n_text + (1 if image else 0),), generator=g)
        labels = ids.clone()
        labels[:2] = IGNORE_INDEX
        pil = None
        if image:
            ids[1] = IMAGE_TOKEN_INDEX
            pil = Image.new("RGB", (max(8, round(image[0] * scale)), max(8, round(image[1] * scale))),
                            tuple(rng.randrange(256) for _ in range(3)))
        im, clip = proc(pil)
        n = len(ids) + (proc.num_image_tokens(*pil.size) - 1 if pil else 0)
        samples.append({"input_ids": ids, "labels": labels, "image": im, "image_clip": clip, "length": n})
    order = list(range(len(samples)))
    if group:
        order = group_by_length(order, [s["length"] for s in samples], micro * 16)
    batches = [collate([samples[k] for k in order[i:i + micro]], 0, seq if pack else 0)
               for i in range(0, len(order), micro)]
    while True:
        yield from batches


def bench_gpu(tmp: Path, micro: int = 8, seq: int = 2048, steps: int = 8, checkpointing: bool = False,
              compile_: bool = False, *,
              preset: str = "small", layers: int = 0, width: str = "", zero: int = 2, dist: str = "full",
              pack: bool = False, group: bool = True, loss_chunk: int | None = None, attn: str | None = None,
              fused: bool = True, bare: bool = True, overrides: tuple[str, ...] = (), n_batches: int = 0) -> dict:
    """One configuration: build, one warm-up step per distinct batch, `steps` timed steps (alternating with the bare
    loop when `bare`). MFU = the trainer's step FLOPs (flops.py: real tokens, frozen parts priced as
    such) / step time / peak. `attn` (auto|sdpa|flex|varlen; flex_attention = flex) and `loss_chunk`
    override the config's model.attention / model.loss_chunk_tokens; `fused=False` recomputes each
    loss chunk instead (the pre-fused path); `overrides` are more `key=value` config overrides."""
    import torch

    import eve_model

    original = eve_model.get_preset
    overrides = {**(WIDTH_7B if width == "7b" else {}), **({"num_hidden_layers": layers} if layers else {})}
    eve_model.get_preset = lambda name, **kw: original(name, **{**overrides, **kw})
    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:  # what an earlier configuration of this process left allocated is not this one's
        torch.cuda.reset_peak_memory_stats()
        start_bytes = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    try:
        trainer = build_trainer(tmp, ["max_steps=1000", f"micro_batch_size={micro}", f"global_batch_size={micro}",
                                      f"data.max_length={seq}", f"deepspeed.zero_stage={zero}",
                                      f"model.gradient_checkpointing={str(checkpointing).lower()}",
                                      f"model.compile={str(compile_).lower()}", *overrides], preset=preset)
    finally:
        eve_model.get_preset = original
    module = trainer.engine.module
    if loss_chunk is not None:
        module.loss_chunk_tokens = loss_chunk
    if attn is not None:
        module.attention = {"flex_attention": "flex"}.get(attn, attn)
    module.loss_fused = fused
    build_s = time.perf_counter() - t0
    n_batches = n_batches or max(2, min(8, 256 // micro))  # distinct batches (each warmed up once)
    batches = synthetic_batches(trainer, micro, seq, dist, pack=pack, group=group, n_batches=n_batches)
    t0 = time.perf_counter()
    for _ in range(n_batches):  # every distinct batch shape once: compilation stays out of the timing
        trainer_step(trainer, batches)
    sync()
    warmup_s = time.perf_counter() - t0
    plain, full, results = [], [], []
    for i in range(steps):  # alternate, order swapped each time, wall time of each call
        pair = [(full, lambda: results.append(trainer_step(trainer, batches)))]
        if bare:
            pair.append((plain, lambda: (bare_step(trainer, batches), sync())))
        for times, fn in pair if i % 2 else pair[::-1]:
            times += timed(fn, 1)
    step_s = statistics.median(full)
    total_s = sum(full)
    tokens = sum(r.tokens for r in results)
    positions = sum(r.positions for r in results)
    flops = sum(r.model_flops for r in results)
    peak = trainer.peak_flops or 989e12
    out = {"device": torch.cuda.get_device_name() if cuda else "cpu", "preset": preset, "width": width or preset,
           "layers": trainer.model_config.num_hidden_layers, "hidden": trainer.model_config.hidden_size,
           "params": sum(p.numel() or getattr(p, "ds_numel", 0) for p in trainer.model.parameters()),
           "zero": zero, "compile": compile_, "gradient_checkpointing": checkpointing, "dist": dist, "pack": pack,
           "group": group, "loss_chunk": module.loss_chunk_tokens, "fused": fused, "attn": module.attention,
           "attention_path": sorted({c.kind for c in module._attention_resolved.values()}), "overrides": list(overrides),
           "micro_batch": micro, "seq": seq,
           "build_s": round(build_s, 1), "warmup_s": round(warmup_s, 1), "trainer_step_s": step_s,
           "tokens_per_s": tokens / total_s, "positions_per_s": positions / total_s,
           "padding_fraction": 1 - tokens / positions, "samples_per_s": micro * steps / total_s,
           "model_tflops_per_s": flops / total_s / 1e12, "peak_tflops": peak / 1e12, "mfu": flops / total_s / peak,
           "max_memory_gib": (torch.cuda.max_memory_allocated() - start_bytes) / 2**30 if cuda else None,
           "left_by_earlier_gib": start_bytes / 2**30 if cuda else None}
    if bare:
        out["bare_step_s"] = statistics.median(plain)
        out["overhead_pct"] = 100 * (step_s / statistics.median(plain) - 1)
    del trainer, module, batches
    return out


def run_suite(path: Path, tmp: Path, out_path: Path | None, budget_s: float) -> None:
    """Each line of `path` is one configuration: `name key=value ...` (bench_gpu's keywords, and
    dotted trainer config keys such as model.attention=varlen passed on as overrides).
    Runs them in order in this process, each guarded (an OOM or error is recorded, the next one
    runs), until `budget_s` is spent; appends one JSON line per configuration to `out_path`."""
    import gc

    import torch

    t_start = time.perf_counter()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        name, *pairs = line.split()
        kw = {k: (v if "." in k else _parse(v)) for k, v in (p.split("=", 1) for p in pairs)}
        if time.perf_counter() - t_start > budget_s:
            row = {"name": name, "skipped": "time budget spent", **kw}
        else:
            try:
                args = {("compile_" if k == "compile" else k): v for k, v in kw.items() if "." not in k}
                args["overrides"] = tuple(f"{k}={v}" for k, v in kw.items() if "." in k)  # config keys
                row = {"name": name, **bench_gpu(tmp, **args)}
            except Exception as err:  # noqa: BLE001 - record and go on (OOM, compile failure, ...)
                row = {"name": name, "error": f"{type(err).__name__}: {str(err)[:400]}", **kw}
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        print(json.dumps(row), flush=True)
        if out_path:
            with out_path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")


def _parse(value: str):
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(value.lower(), value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--micro", type=int, default=4)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing (GPU mode)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the decoder layers (GPU mode)")
    parser.add_argument("--ckpt-hidden", type=int, default=512)
    parser.add_argument("--ckpt-layers", type=int, default=8)
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-checkpoint", action="store_true")
    parser.add_argument("--preset", default="small", help="GPU mode: model preset")
    parser.add_argument("--width", default="", choices=["", "7b"], help="GPU mode: 7b = EVE-7B decoder width")
    parser.add_argument("--layers", type=int, default=0, help="GPU mode: decoder layers (0: the preset's)")
    parser.add_argument("--zero", type=int, default=2, choices=[2, 3])
    parser.add_argument("--dist", default="full", choices=["full", "caption", "sft"],
                        help="GPU mode: sample length distribution (see sample_lengths)")
    parser.add_argument("--pack", action="store_true", help="GPU mode: packed rows (data.pack)")
    parser.add_argument("--no-group", action="store_true", help="GPU mode: no length grouping")
    parser.add_argument("--loss-chunk", type=int, default=0, help="GPU mode: loss_chunk_tokens of the model")
    parser.add_argument("--attn", default="sdpa", help="GPU mode: model.attention (auto, sdpa, flex, varlen)")
    parser.add_argument("--suite", type=Path, help="GPU mode: run the configurations listed in this file")
    parser.add_argument("--out", type=Path, help="GPU suite: append JSON lines here")
    parser.add_argument("--budget-s", type=float, default=1e9, help="GPU suite: start no configuration after this")
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    # ignore_cleanup_errors: a trainer's heartbeat thread may still write there when the suite ends
    with tempfile.TemporaryDirectory(prefix="bench-trainer-", ignore_cleanup_errors=True) as d:
        tmp = Path(d)
        if args.gpu and args.suite:
            run_suite(args.suite, tmp, args.out, args.budget_s)
            return
        if args.gpu:
            print(json.dumps(bench_gpu(tmp, args.micro, args.seq, args.steps, args.checkpointing, args.compile,
                                       preset=args.preset, width=args.width, layers=args.layers, zero=args.zero,
                                       dist=args.dist, pack=args.pack, group=not args.no_group,
                                       loss_chunk=args.loss_chunk, attn=args.attn), indent=2))
            return
        if not args.skip_overhead:
            r = bench_overhead(tmp, args.steps, args.reps)
            print(json.dumps({"overhead": r}, indent=2), flush=True)
            print(f"trainer overhead: {r['overhead_pct']:+.1f}% of the median step ({r['trainer_step_s'] * 1e3:.1f} ms "
                  f"vs bare {r['bare_step_s'] * 1e3:.1f} ms), {r['overhead_of_min_pct']:+.1f}% of the fastest; "
                  "target <= 5%", flush=True)
        if not args.skip_checkpoint:
            r = bench_checkpoint(tmp, args.ckpt_hidden, args.ckpt_layers, args.reps)
            print(json.dumps({"checkpoint": r}, indent=2))
            print(f"checkpoint {r['checkpoint_mib']} MiB: save {r['save_mib_s']:.0f} MiB/s vs boto3 upload "
                  f"{r['boto3_upload_mib_s']:.0f} MiB/s ({r['save_ratio']:.2f}x); "
                  f"restore {r['restore_mib_s']:.0f} MiB/s "
                  f"vs boto3 download {r['boto3_download_mib_s']:.0f} MiB/s ({r['restore_ratio']:.2f}x); "
                  f"save+restore {r['save_restore_ratio']:.2f}x, target >= 0.8x")


if __name__ == "__main__":
    main()
