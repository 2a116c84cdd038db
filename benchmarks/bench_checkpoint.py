"""How long a checkpoint save stops the step loop: synchronous against asynchronous (CPU).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_checkpoint.py [--hidden 1024] [--layers 5] [--reps 3]

One DeepSpeed ZeRO-2 engine (a widened tiny EVE, fp32, one optimizer step so the Adam moments
exist: about 16 bytes per parameter; the default is 1.01 GiB of state) is saved through
`CheckpointManager` to SeaweedFS on loopback, alternately

- synchronously (`async_save=False`): DeepSpeed's save to a local temp dir, sha256 + parallel
  multipart upload, manifest; the loop blocks for all of it;
- asynchronously (`async_save=True`, the default): the loop blocks while the state dicts are
  copied to host memory; serialising, hashing, uploading and the manifest run in the background.
  After `save` returns, the live tensors are changed (as the next steps would) before the
  background is waited for; the committed checkpoint must still restore the saved values.

Reported per repetition and as the median: the blocking time of each, the asynchronous save's
time to its manifest, and the ratio blocking(async) / blocking(sync) (target <= 0.2).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    import torch
    from bench_trainer import build_engine
    from support.services import start_seaweedfs, stop

    from eve_contract.storage import S3Store
    from eve_trainer.checkpoint import CheckpointManager

    with tempfile.TemporaryDirectory() as tmp:
        server = start_seaweedfs(Path(tmp) / "seaweedfs")
        try:
            os.environ.update(server.env())
            bucket = server.make_bucket("bench-ckpt")
            engine = build_engine(args.hidden, args.layers)
            params = sum(p.numel() for p in engine.module.parameters())
            store = S3Store(bucket, "ckpt", endpoint_url=server.endpoint_url)

            def manager(name: str, async_save: bool) -> CheckpointManager:
                return CheckpointManager(store, pipeline=name, stage="pretrain", rank=0, world_size=1, every_steps=1,
                                         keep_last=1, config_json="{}", config_hash="bench", async_save=async_save)

            sync, asyn = manager("sync", False), manager("async", True)
            rows = []
            size = 0
            for rep in range(args.reps):
                step = rep + 1
                t0 = time.perf_counter()
                manifest = sync.save(step, engine, {"step": step, "loader": {}}, None)
                sync_s = time.perf_counter() - t0
                size = sum(f.size for f in manifest.files)

                first = next(p for p in engine.module.parameters() if p.requires_grad)
                saved = first.detach().clone()
                t0 = time.perf_counter()
                assert asyn.save(step, engine, {"step": step, "loader": {}}, None) is None
                async_block = time.perf_counter() - t0
                with torch.no_grad():  # the next steps change the live state while the upload runs
                    first.add_(1.0)
                (committed,) = asyn.wait()
                async_total = time.perf_counter() - t0
                with torch.no_grad():
                    first.sub_(1.0)
                assert committed.step == step
                async_size = sum(f.size for f in committed.files)  # a tensor met twice is stored once
                rows.append((sync_s, async_block, async_total))
                print(f"  rep {rep}: {size / 2**30:.2f} GiB ({async_size / 2**30:.2f} GiB async)  sync save blocks "
                      f"{sync_s:6.2f} s   async blocks "
                      f"{async_block:5.2f} s (manifest after {async_total:6.2f} s)   ratio {async_block / sync_s:.3f}",
                      flush=True)
            restored = manager("async", True).load(engine)
            assert restored is not None and restored.step == args.reps
            assert torch.equal(next(p for p in engine.module.parameters() if p.requires_grad).detach(), saved), \
                "the asynchronous checkpoint does not hold the state at its step"
        finally:
            stop(server.proc)
    sync_med = statistics.median(r[0] for r in rows)
    block_med = statistics.median(r[1] for r in rows)
    total_med = statistics.median(r[2] for r in rows)
    ratio = block_med / sync_med
    load = os.getloadavg()[0]
    print(f"checkpoint {size / 2**30:.2f} GiB ({params / 1e6:.0f} M parameters, ZeRO-2 fp32 + Adam), {args.reps} reps, "
          f"load average {load:.1f} on {os.cpu_count()} cores")
    print(f"blocking per save: synchronous {sync_med:.2f} s, asynchronous {block_med:.2f} s "
          f"(its manifest after {total_med:.2f} s): ratio {ratio:.3f} (target <= 0.2) "
          f"{'PASS' if ratio <= 0.2 else 'FAIL'}", flush=True)


if __name__ == "__main__":
    main()
