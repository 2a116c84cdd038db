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

GPU (--gpu; single process, world 1, no S3; < 3 minutes on one H100):

    python benchmarks/bench_trainer.py --gpu [--micro 4] [--seq 2048] [--steps 10]

preset small (1.1B-class LLM + 672 px vision tower + CLIP-L teacher), bf16, ZeRO-2 (world 1),
random token batches of --seq positions (text + the image's 601 visual tokens), through
Trainer.train_step. Prints tokens/s and MFU = model FLOPs per token (6N + 12 L H S, PaLM
appendix B) x tokens/s / peak (989 TFLOP/s dense bf16 for an H100 SXM; EVE_PEAK_TFLOPS overrides).
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
sys.path.insert(0, str(ROOT / "tests"))  # fixtures.services (SeaweedFS)
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
    from fixtures.services import start_seaweedfs, stop

    from eve_trainer.checkpoint import DS_TAG, CheckpointManager
    from eve_trainer.storage import S3Store

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


def synthetic_batches(trainer, micro: int, seq: int):
    """Full-length random batches: one image (601 visual tokens at 672 px) + text up to `seq`."""
    import torch
    from eve_model import IGNORE_INDEX, IMAGE_TOKEN_INDEX, EveImageProcessor

    cfg = trainer.model_config
    proc = EveImageProcessor.from_config(cfg)
    n_image = proc.num_image_tokens(cfg.image_size, cfg.image_size)
    n_text = seq - n_image + 1
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, cfg.vocab_size, (micro, n_text), generator=g)
    ids[:, 1] = IMAGE_TOKEN_INDEX
    labels = ids.clone()
    labels[:, :2] = IGNORE_INDEX
    images = torch.randn(micro, 4, cfg.image_size, cfg.image_size, generator=g)
    images[:, 3] = 1.0
    clip = torch.randn(micro, 4, cfg.image_size_clip, cfg.image_size_clip, generator=g)
    clip[:, 3] = 1.0
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
             "images": images, "images_clip": clip}
    while True:
        yield batch


def bench_gpu(tmp: Path, micro: int, seq: int, steps: int, checkpointing: bool, compile_: bool = False) -> dict:
    import torch

    t0 = time.perf_counter()
    trainer = build_trainer(tmp, ["max_steps=1000", f"micro_batch_size={micro}", f"global_batch_size={micro}",
                                  f"data.max_length={seq}", "deepspeed.zero_stage=2",
                                  f"model.gradient_checkpointing={str(checkpointing).lower()}",
                                  f"model.compile={str(compile_).lower()}"], preset="small")
    build_s = time.perf_counter() - t0
    batches = synthetic_batches(trainer, micro, seq)
    for _ in range(3):
        trainer_step(trainer, batches)
    torch.cuda.synchronize()
    bare, full, results = [], [], []
    for i in range(steps):  # alternate, order swapped each time, wall time of each call
        pair = [(bare, lambda: (bare_step(trainer, batches), torch.cuda.synchronize())),
                (full, lambda: results.append(trainer_step(trainer, batches)))]
        for times, fn in pair if i % 2 else pair[::-1]:
            times += timed(fn, 1)
    step_s = statistics.median(full)
    tokens = results[-1].tokens
    tps = tokens / step_s
    peak = trainer.peak_flops or 989e12
    return {"device": torch.cuda.get_device_name(), "preset": "small",
            "params": sum(p.numel() for p in trainer.model.parameters()),
            "micro_batch": micro, "seq_positions": tokens / micro, "gradient_checkpointing": checkpointing,
            "compile": compile_,
            "build_s": round(build_s, 1), "trainer_step_s": step_s, "bare_step_s": statistics.median(bare),
            "overhead_pct": 100 * (step_s / statistics.median(bare) - 1), "tokens_per_s": tps,
            "flops_per_token": trainer.flops_per_token, "peak_tflops": peak / 1e12,
            "mfu": trainer.flops_per_token * tps / peak,
            "max_memory_gib": torch.cuda.max_memory_allocated() / 2**30}


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
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as d:
        tmp = Path(d)
        if args.gpu:
            print(json.dumps(bench_gpu(tmp, args.micro, args.seq, args.steps, args.checkpointing, args.compile), indent=2))
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
