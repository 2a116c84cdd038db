"""Checkpoints in object storage: save, verify, resume, prune.

Layout (eve_contract.layout is the one definition of the paths):

    <output>/<pipeline>/<stage>/checkpoints/step-<n>/
        ds/...                        DeepSpeed model, optimizer and LR scheduler state (all ranks)
        trainer-state/rank-<r>.pt     per rank: RNG states (python, numpy, torch), data loader position
        config.json                   the resolved TrainConfig
        manifest.json                 written last by rank 0: size + sha256 of every file

Every rank saves into its own local temp dir, uploads its own files and reports their
sha256; rank 0 writes the manifest once all ranks are done, so a checkpoint exists only
when it is complete. Resume picks the newest checkpoint whose files match the manifest
and falls back to older ones otherwise.

Asynchronous saves (`async_save=True`): `save` blocks only while DeepSpeed's state dicts are
copied to host memory (a checkpoint engine that keeps copies instead of writing); a background
thread per rank then serialises them to the temp dir, uploads and hashes, and the ranks' file
lists meet on a gloo group of their own (the training collectives keep the default group), so
rank 0 writes the manifest last, as in the synchronous save. At most one save is in flight: the
next `save` (and `wait`) first waits for it. `poll()` returns the manifests committed since.

The public save/load check `enable` and the collective bookkeeping, then call the
`_save`/`_load` hooks; subclasses override the hooks, never the public methods.
"""

from __future__ import annotations

import copy
import datetime
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from eve_contract import layout
from eve_contract.layout import FileEntry, Manifest
from eve_contract.storage import ObjectStore, join
from eve_trainer import distributed as D

log = logging.getLogger("eve_trainer.checkpoint")

DS_TAG = "ds"
STATE_DIR = "trainer-state"
#: a DeepSpeed universal checkpoint converted from step-<n>/ds (written on the first resume on
#: another world size, reused by later ones)
UNIVERSAL_DIR = "universal"
CONVERT_TIMEOUT_S = 4 * 3600.0
#: DeepSpeed's per-rank partition files (optimizer states; model states under ZeRO-3). Without
#: elastic checkpoints a rank reads only its own, so it downloads only its own: at 7B on 32 ranks
#: that is 1/32 of the optimizer bytes per rank instead of all of them.
_DS_PARTITION = re.compile(r"zero_pp_rank_(\d+)_")


def needed_by_rank(path: str, rank: int) -> bool:
    """Whether a checkpoint file must be downloaded for `rank` to resume (same world size)."""
    if path.startswith(STATE_DIR + "/"):
        return path == state_file(rank)
    partition = _DS_PARTITION.search(path.rsplit("/", 1)[-1])
    return partition is None or int(partition.group(1)) == rank
CONFIG_FILE = "config.json"


def state_file(rank: int) -> str:
    return f"{STATE_DIR}/rank-{rank:05d}.pt"


class Engine(Protocol):
    """The part of a DeepSpeed engine the checkpointer uses."""

    def save_checkpoint(self, save_dir: str, tag: str, client_state: dict[str, Any]) -> Any: ...
    def load_checkpoint(self, load_dir: str, tag: str) -> tuple[str | None, dict[str, Any]]: ...


@dataclass
class Restored:
    step: int
    trainer_state: dict[str, Any]
    manifest: Manifest
    #: on another world size: every old rank's trainer state (the loader re-splits what is left)
    all_states: list[dict[str, Any]] | None = None
    written_by: int | None = None


class CheckpointManager:
    def __init__(self, store: ObjectStore, *, pipeline: str, stage: str, rank: int, world_size: int,
                 every_steps: int, keep_last: int, config_json: str, config_hash: str,
                 enable: bool = True, max_upload_workers: int = 4, async_save: bool = False):
        self.store, self.pipeline, self.stage = store, pipeline, stage
        self.rank, self.world_size = rank, world_size
        self.every_steps, self.keep_last = every_steps, keep_last
        self.config_json, self.config_hash = config_json, config_hash
        self.enable = enable
        self.max_upload_workers = max_upload_workers
        self.last_saved_step: int | None = None
        #: steps whose files did not match their manifest during the last load
        self.skipped: list[int] = []
        self.async_save = enable and async_save
        #: seconds the last save blocked its caller, and the last save from start to manifest
        self.last_blocking_s = 0.0
        self.last_save_s = 0.0
        self._inflight: _Inflight | None = None
        self._collected: list[Manifest] = []  # committed, collected by a save's wait, not yet returned
        #: the background thread's collectives: a gloo group of their own (every rank creates it
        #: here, in the same order), so they never interleave with the training collectives
        self._group: Any = _side_group() if self.async_save and world_size > 1 else None

    def url(self, step: int) -> str:
        return f"{self.store.url}/{layout.checkpoint_prefix(self.pipeline, self.stage, step)}"

    def due(self, step: int, *, last_step: bool = False) -> bool:
        return self.enable and (last_step or step % self.every_steps == 0)

    # -- public, collective: every rank calls these ----------------------------------------

    def save(self, step: int, engine: Engine, trainer_state: dict[str, Any],
             mlflow_run_id: str | None = None) -> Manifest | None:
        """Write checkpoint `step`; rank 0 returns the committed manifest (synchronous saves).

        Asynchronous: waits for the save in flight (its errors raise here), copies the state to
        host memory and returns None; the manifest comes from `poll` / `wait` once committed."""
        if not self.enable or self.last_saved_step == step:
            return None
        t0 = time.perf_counter()
        if self.async_save:
            self._start_async(step, engine, trainer_state, mlflow_run_id)
            manifest = None
        else:
            manifest = self._save(step, engine, trainer_state, mlflow_run_id)
            self.last_save_s = time.perf_counter() - t0
        self.last_blocking_s = time.perf_counter() - t0
        self.last_saved_step = step
        return manifest

    @property
    def in_flight(self) -> int | None:
        """The step of the asynchronous save still running, if any."""
        return self._inflight.step if self._inflight is not None and self._inflight.thread.is_alive() else None

    @property
    def pending(self) -> bool:
        """An asynchronous save is in flight, or finished but not yet collected by `poll` / `wait`."""
        return self._inflight is not None or bool(self._collected)

    def poll(self) -> list[Manifest]:
        """The manifests (rank 0) of asynchronous saves committed since the last call; never
        blocks. A failed background save raises here, on the training thread."""
        if self._inflight is None or self._inflight.thread.is_alive():
            out, self._collected = self._collected, []
            return out
        return self.wait()

    def wait(self, timeout_s: float | None = None) -> list[Manifest]:
        """Block until the save in flight has committed (or failed: raises); the manifests
        committed since the last `poll` / `wait`."""
        collected, self._collected = self._collected, []
        inflight, self._inflight = self._inflight, None
        if inflight is None:
            return collected
        inflight.thread.join(timeout_s)
        if inflight.thread.is_alive():
            self._inflight, self._collected = inflight, collected
            raise TimeoutError(f"checkpoint {self.url(inflight.step)} still uploading after {timeout_s:.0f} s")
        if inflight.error is not None:
            raise RuntimeError(f"asynchronous checkpoint {self.url(inflight.step)} failed: {inflight.error}")
        self.last_save_s = inflight.seconds
        return collected + ([inflight.manifest] if inflight.manifest is not None else [])

    def load(self, engine: Engine) -> Restored | None:
        """Restore the newest complete checkpoint into `engine`; None when there is none."""
        if not self.enable:
            return None
        return self._load(engine)

    # -- hooks -----------------------------------------------------------------------------

    def _save(self, step: int, engine: Engine, trainer_state: dict[str, Any],
              mlflow_run_id: str | None) -> Manifest | None:
        import torch

        prefix = layout.checkpoint_prefix(self.pipeline, self.stage, step)
        if self.rank == 0:
            # a stale attempt at this step (from a timeline we resumed before) must not mix in
            self.store.delete_prefix(prefix)
        D.barrier()
        tmp = Path(tempfile.mkdtemp(prefix=f"eve-ckpt-r{self.rank}-"))
        try:
            engine.save_checkpoint(str(tmp), tag=DS_TAG, client_state={"step": step})
            (tmp / "latest").unlink(missing_ok=True)  # we always load by explicit tag
            (tmp / STATE_DIR).mkdir(exist_ok=True)
            torch.save(trainer_state, tmp / state_file(self.rank))
            if self.rank == 0:
                (tmp / CONFIG_FILE).write_text(self.config_json)
            entries = self._upload_and_hash(tmp, prefix)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        # the gather doubles as the barrier: each rank reports only after its uploads finished
        gathered: list[list[FileEntry]] = D.all_gather_object(entries)
        manifest = None
        if self.rank == 0:
            files = _merge_entries(gathered)
            manifest = Manifest(kind="checkpoint", pipeline=self.pipeline, stage=self.stage, step=step,
                                files=files, config_hash=self.config_hash, mlflow_run_id=mlflow_run_id,
                                extra={"world_size": self.world_size})
            self.store.put_bytes(join(prefix, layout.MANIFEST), manifest.to_json())
            self._prune(keep_from=step)
        D.barrier()
        return manifest

    def _start_async(self, step: int, engine: Engine, trainer_state: dict[str, Any],
                     mlflow_run_id: str | None) -> None:
        """Blocking part of an asynchronous save: copy the state off the device, start the rest."""
        import torch

        self._collected = self.wait()  # at most one in flight; its manifest goes to the next poll
        t0 = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f"eve-ckpt-r{self.rank}-"))
        try:
            snapshot = _HostSnapshot(getattr(engine, "checkpoint_engine", None))
            if snapshot.inner is not None:
                engine.checkpoint_engine = snapshot  # type: ignore[attr-defined]
            try:
                engine.save_checkpoint(str(tmp), tag=DS_TAG, client_state={"step": step})
            finally:
                if snapshot.inner is not None:
                    engine.checkpoint_engine = snapshot.inner  # type: ignore[attr-defined]
            snapshot.synchronize()
            state = _to_host(trainer_state, {})
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        inflight = _Inflight(step=step, started=t0)
        inflight.thread = threading.Thread(
            target=self._finish_async, args=(inflight, tmp, snapshot.saves, state, mlflow_run_id),
            name=f"eve-checkpoint-{step}", daemon=True)
        self._inflight = inflight
        inflight.thread.start()

    def _finish_async(self, inflight: _Inflight, tmp: Path, saves: list[tuple[str, Any]], state: dict[str, Any],
                      mlflow_run_id: str | None) -> None:
        """Background: serialise, upload + hash, then rank 0 commits the manifest (written last)."""
        import torch

        step, prefix = inflight.step, layout.checkpoint_prefix(self.pipeline, self.stage, inflight.step)
        try:
            error: str | None = None
            entries: list[FileEntry] = []
            try:
                for path, payload in saves:
                    torch.save(payload, path)
                saves.clear()  # the host copies go as soon as they are on disk
                (tmp / "latest").unlink(missing_ok=True)
                (tmp / STATE_DIR).mkdir(exist_ok=True)
                torch.save(state, tmp / state_file(self.rank))
                if self.rank == 0:
                    (tmp / CONFIG_FILE).write_text(self.config_json)
                    self.store.delete_prefix(prefix)  # a stale attempt at this step must not mix in
            except Exception as err:  # noqa: BLE001 - every rank must hear of it, not wait
                error = f"rank {self.rank}: {type(err).__name__}: {err}"
            # every rank reports: rank 0's delete precedes every upload
            errors = [e for e in _gather(error, self._group) if e]
            if not errors:
                try:
                    entries = self._upload_and_hash(tmp, prefix)
                except Exception as err:  # noqa: BLE001
                    error = f"rank {self.rank}: {type(err).__name__}: {err}"
                gathered = _gather((entries, error), self._group)
                errors = [e for _, e in gathered if e]
            if errors:
                raise RuntimeError("; ".join(errors))
            if self.rank == 0:
                files = _merge_entries([e for e, _ in gathered])
                manifest = Manifest(kind="checkpoint", pipeline=self.pipeline, stage=self.stage, step=step,
                                    files=files, config_hash=self.config_hash, mlflow_run_id=mlflow_run_id,
                                    extra={"world_size": self.world_size})
                self.store.put_bytes(join(prefix, layout.MANIFEST), manifest.to_json())
                inflight.manifest = manifest
                self._prune(keep_from=step)
        except BaseException as err:  # noqa: BLE001 - raised on the training thread by poll/wait
            inflight.error = str(err) or type(err).__name__
            log.warning("checkpoint %s failed in the background: %s", self.url(step), inflight.error)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            inflight.seconds = time.perf_counter() - inflight.started

    def _load(self, engine: Engine) -> Restored | None:
        import torch

        self.skipped = []
        candidates: list[int] = D.broadcast_object(
            layout.list_checkpoint_steps(self.store, self.pipeline, self.stage) if self.rank == 0 else None)
        for step in candidates:
            prefix = layout.checkpoint_prefix(self.pipeline, self.stage, step)
            # rank 0 checks that the manifest and all sizes are there; every rank then checks the
            # sha256 of what it downloaded, so each byte is read once
            manifest = D.broadcast_object(
                layout.verify(self.store, prefix, layout.MANIFEST, deep=False) if self.rank == 0 else None)
            world = manifest.extra.get("world_size", self.world_size) if manifest is not None else self.world_size
            tmp = Path(tempfile.mkdtemp(prefix=f"eve-restore-r{self.rank}-"))
            try:
                if manifest is not None and world != self.world_size:
                    restored = self._load_resharded(engine, step, prefix, manifest, world, tmp)
                    if restored is None:
                        continue
                    return restored
                ok = manifest is not None and self._download_verified(prefix, manifest, tmp)
                if not D.all_reduce_min(ok):
                    self.skipped.append(step)
                    log.warning("checkpoint %s is incomplete or corrupt (sha256 mismatch); trying an older one",
                                self.url(step))
                    continue
                _mmap_loads(engine)
                engine.load_checkpoint(str(tmp), tag=DS_TAG)
                state = torch.load(tmp / state_file(self.rank), map_location="cpu", weights_only=False)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            self.last_saved_step = step
            return Restored(step=step, trainer_state=state, manifest=manifest)
        return None

    def _load_resharded(self, engine: Any, step: int, prefix: str, manifest: Manifest, world: int,
                        tmp: Path) -> Restored | None:
        """Resume a checkpoint written by `world` ranks on this run's world size through a
        DeepSpeed universal checkpoint (one file per parameter and optimizer state, no
        partitioning): rank 0 converts the checkpoint once and stores the result next to it
        (`step-<n>/universal/`, with its own manifest), every rank downloads it and DeepSpeed
        slices out its own partition. Model, optimizer state and LR schedule carry over."""
        import torch

        log.warning("checkpoint %s was written by %d ranks; resuming on %d ranks through a DeepSpeed "
                    "universal checkpoint", self.url(step), world, self.world_size)
        uni_prefix = join(prefix, UNIVERSAL_DIR)
        error = None
        # the other ranks wait in a collective while rank 0 converts (minutes at 7B): not a hang
        timeout = D.collective_timeout_s()
        D.set_collective_timeout(max(timeout, CONVERT_TIMEOUT_S))
        if self.rank == 0:
            try:
                if layout.verify(self.store, uni_prefix, layout.MANIFEST, deep=False) is None:
                    self._write_universal(prefix, manifest, tmp / "convert")
            except Exception as err:  # noqa: BLE001 - every rank must learn of it, not wait forever
                error = f"{type(err).__name__}: {err}"
        error = D.broadcast_object(error)
        D.set_collective_timeout(timeout)
        if error is not None:
            raise RuntimeError(f"converting {self.url(step)} to a universal checkpoint failed: {error}")
        uni = D.broadcast_object(layout.verify(self.store, uni_prefix, layout.MANIFEST, deep=False)
                                 if self.rank == 0 else None)
        states = [e for e in manifest.files if e.path.startswith(STATE_DIR + "/")]
        ok = uni is not None and self._fetch_all(uni_prefix, uni.files, tmp / "universal") \
            and self._fetch_all(prefix, states, tmp / "old")
        if not D.all_reduce_min(ok):
            self.skipped.append(step)
            log.warning("checkpoint %s (universal) is incomplete or corrupt; trying an older one", self.url(step))
            return None
        _mmap_loads(engine)
        engine._config.load_universal_checkpoint = True
        try:
            engine.load_checkpoint(str(tmp / "universal"), tag=DS_TAG)
        finally:
            engine._config.load_universal_checkpoint = False
        all_states = [torch.load(tmp / "old" / state_file(r), map_location="cpu", weights_only=False)
                      for r in range(world)]
        self.last_saved_step = step
        return Restored(step=step, trainer_state=all_states[self.rank % world], manifest=manifest,
                        all_states=all_states, written_by=world)

    def _write_universal(self, prefix: str, manifest: Manifest, work: Path) -> None:
        """Rank 0: download the DeepSpeed files, convert them (deepspeed.checkpoint.ds_to_universal,
        in a subprocess so its worker pool never forks a process-group member), upload, manifest last."""
        import subprocess
        import sys

        ds_files = [e for e in manifest.files if e.path.startswith(DS_TAG + "/")]
        if not self._fetch_all(prefix, ds_files, work / "in"):
            raise RuntimeError("the checkpoint's DeepSpeed files do not match their manifest")
        out = work / "out" / DS_TAG
        workers = max(1, min(4, os.cpu_count() or 1))
        proc = subprocess.run(
            [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(work / "in" / DS_TAG),
             "--output_folder", str(out), "--num_extract_workers", str(workers), "--num_merge_workers",
             str(max(1, workers // 2)), "--inject_missing_state"],  # our model sets no Megatron-style info
            capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"ds_to_universal exited {proc.returncode}: {proc.stderr[-2000:]}")
        uni_prefix = join(prefix, UNIVERSAL_DIR)
        self.store.delete_prefix(uni_prefix)
        entries = [FileEntry(join(DS_TAG, e.path), e.size, e.sha256) for e in layout.entries_for_dir(out)]
        for entry in entries:
            self.store.upload_file(work / "out" / entry.path, join(uni_prefix, entry.path))
        uni = Manifest(kind="universal-checkpoint", pipeline=self.pipeline, stage=self.stage, step=manifest.step,
                       files=entries, config_hash=manifest.config_hash, mlflow_run_id=manifest.mlflow_run_id,
                       extra={"converted_from_world_size": manifest.extra.get("world_size")})
        self.store.put_bytes(join(uni_prefix, layout.MANIFEST), uni.to_json())
        shutil.rmtree(work, ignore_errors=True)

    def _fetch_all(self, prefix: str, entries: list[FileEntry], dest: Path) -> bool:
        """Download `entries` in parallel; True when every file matches its size and sha256."""
        return all(self._parallel(lambda entry: self._fetch_verified(prefix, entry, dest), entries))

    def _fetch_verified(self, prefix: str, entry: FileEntry, dest: Path) -> bool:
        path, key = dest / entry.path, join(prefix, entry.path)
        if hasattr(self.store, "download_and_hash"):
            sha = self.store.download_and_hash(key, path)
        else:
            self.store.download_file(key, path)
            sha = layout.sha256_file(path)
        return path.stat().st_size == entry.size and sha == entry.sha256

    # -- helpers ---------------------------------------------------------------------------

    def _upload_and_hash(self, root: Path, prefix: str) -> list[FileEntry]:
        """Upload every file under root (multipart-parallel inside upload_file) while hashing it
        in another thread (hashlib releases the GIL), largest first."""
        paths = sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: -p.stat().st_size)
        rel = [str(p.relative_to(root)) for p in paths]
        with ThreadPoolExecutor(max_workers=2 * self.max_upload_workers) as pool:
            uploads = [pool.submit(self.store.upload_file, p, join(prefix, r)) for p, r in zip(paths, rel)]
            hashes = [pool.submit(layout.sha256_file, p) for p in paths]
            entries = [FileEntry(r, p.stat().st_size, h.result()) for p, r, h in zip(paths, rel, hashes)]
            for u in uploads:
                u.result()
        return sorted(entries, key=lambda e: e.path)

    def _download_verified(self, prefix: str, manifest: Manifest, dest: Path) -> bool:
        mine = state_file(self.rank)
        wanted = [e for e in manifest.files if needed_by_rank(e.path, self.rank)]
        if not any(e.path == mine for e in wanted):
            return False

        # rank 0 saw every file with the right size: a failed download here is an outage
        # (raise: the job is retried), not a corrupt checkpoint (skip it)
        return self._fetch_all(prefix, wanted, dest)

    def _parallel(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        if len(items) <= 1:
            return [fn(i) for i in items]
        with ThreadPoolExecutor(max_workers=min(self.max_upload_workers, len(items))) as pool:
            return list(pool.map(fn, items))

    def _step_dirs(self) -> set[int]:
        prefix = layout.checkpoints_prefix(self.pipeline, self.stage)
        steps = set()
        for key in self.store.list(prefix):
            name = key[len(prefix):].strip("/").split("/")[0]
            if name.startswith("step-") and name[5:].isdigit():
                steps.add(int(name[5:]))
        return steps

    def _prune(self, keep_from: int) -> None:
        """Keep the newest `keep_last` complete checkpoints up to `keep_from`; delete older ones
        and half-written leftovers. A failed delete is logged, never fatal: it only costs space."""
        complete = [s for s in layout.list_checkpoint_steps(self.store, self.pipeline, self.stage) if s <= keep_from]
        keep = set(sorted(complete, reverse=True)[:self.keep_last])
        for step in sorted(self._step_dirs()):
            if step < keep_from and step not in keep:
                try:
                    self.store.delete_prefix(layout.checkpoint_prefix(self.pipeline, self.stage, step))
                except Exception as err:  # noqa: BLE001
                    log.warning("could not delete old checkpoint %s: %s", self.url(step), err)


def interval_advice(*, every_steps: int, mtbf_node_hours: float, world_size: int, steps: int, step_time_s: float,
                    save_blocking_s: float, env: dict[str, str] | None = None) -> Any:
    """Young/Daly's checkpoint interval for this job (eve_contract.goodput.advise) from the mean
    step time over `steps` steps (`step_time_s` in all), the time a save blocked the loop and the
    stated per-node MTBF times the nodes (PET_NNODES, else world / LOCAL_WORLD_SIZE); None
    without an MTBF or a step yet."""
    from eve_contract.goodput import advise

    if steps <= 0 or mtbf_node_hours <= 0:
        return None
    env = dict(os.environ) if env is None else env
    try:
        nodes = int(str(env.get("PET_NNODES", "")).split(":")[-1] or 0) \
            or world_size // max(1, int(env.get("LOCAL_WORLD_SIZE") or world_size))
    except ValueError:
        nodes = 1
    return advise(configured_steps=every_steps, save_s=save_blocking_s, step_s=step_time_s / steps,
                  mtbf_node_hours=mtbf_node_hours, nodes=max(1, nodes))


@dataclass
class _Inflight:
    step: int
    started: float
    thread: threading.Thread = None  # type: ignore[assignment]
    manifest: Manifest | None = None
    error: str | None = None
    seconds: float = 0.0


class _HostSnapshot:
    """A DeepSpeed checkpoint engine that keeps host copies of what it is asked to save
    instead of writing it; everything else (makedirs, create, commit, load) goes to the real one.
    The copies are independent of the live tensors, so training may go on while they are written."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.saves: list[tuple[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def save(self, state_dict: Any, path: str) -> None:
        # one memo per file, as torch.save shares storage within one file only (a memo kept across
        # files would also risk ids reused by tensors DeepSpeed made for the previous file and freed)
        self.saves.append((path, _to_host(state_dict, {})))

    def preserves_storage_sharing(self) -> bool:
        return False  # we copy every tensor ourselves: DeepSpeed need not clone them first

    def is_decoupled(self) -> bool:
        return False

    def synchronize(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()  # the non-blocking device-to-host copies have landed


def _to_host(obj: Any, memo: dict[int, Any]) -> Any:
    """A copy of `obj` whose tensors are host copies (pinned, non-blocking from a GPU; a tensor
    met twice in `obj` is copied once) and whose other leaves are deep copies. `memo` keeps each
    original alive beside its copy, so no id is reused while it is in use."""
    import torch

    if isinstance(obj, torch.Tensor):
        key = id(obj)
        if key not in memo:
            t = obj.detach()
            if t.is_cuda:
                host = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=True)
                host.copy_(t, non_blocking=True)
            else:
                host = t.clone(memory_format=torch.contiguous_format)
            memo[key] = (obj, host)
        return memo[key][1]
    if isinstance(obj, dict):
        out = copy.copy(obj)
        for k, v in obj.items():
            out[k] = _to_host(v, memo)
        return out
    if isinstance(obj, list):
        return [_to_host(v, memo) for v in obj]
    if isinstance(obj, tuple):
        items = [_to_host(v, memo) for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    try:
        return copy.deepcopy(obj)
    except Exception:  # noqa: BLE001 - an object that cannot be copied is saved as it is
        return obj


def _side_group() -> Any:
    """A gloo process group for the background saves' collectives (None without a process group)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return None
    # a slow rank's upload keeps the others waiting in the gather: allow more than a collective
    timeout = max(D.collective_timeout_s(), 1800.0)
    return dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout))


def _gather(obj: Any, group: Any) -> list[Any]:
    import torch.distributed as dist

    if group is None:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def _merge_entries(gathered: list[list[FileEntry]]) -> list[FileEntry]:
    by_path: dict[str, FileEntry] = {}
    for entries in gathered:
        for entry in entries:
            other = by_path.setdefault(entry.path, entry)
            # two ranks writing the same relative path must have written the same bytes
            assert other.sha256 == entry.sha256, f"ranks disagree on checkpoint file {entry.path}"
    return sorted(by_path.values(), key=lambda e: e.path)


def _mmap_loads(engine: Any) -> None:
    """Let DeepSpeed's torch checkpoint engine map the downloaded files instead of copying them
    out of the zip archive (4x faster restore of the optimizer state). MAP_PRIVATE: tensors the
    optimizer keeps are copy-on-write, so the temp files can go right after the load."""
    import torch

    ckpt = getattr(engine, "checkpoint_engine", None)
    if ckpt is None or not getattr(ckpt, "zipfile_serialization", False) or getattr(ckpt, "_eve_mmap", False):
        return

    def load(path: str, map_location: Any = None) -> Any:
        return torch.load(path, map_location=map_location, weights_only=False, mmap=True)

    ckpt.load, ckpt._eve_mmap = load, True

