"""The trainer: one instance per rank, built from a resolved TrainConfig.

    trainer = Trainer(cfg, dist_info, stop=StopFlag.install())
    exit_code = trainer.train()      # resume -> loop {step, log, checkpoint} -> export
    trainer.close()
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eve_contract import layout
from eve_contract import tracking_names as N
from eve_contract.exit_codes import EXIT_OK, EXIT_SIGTERM
from eve_contract.storage import open_store
from eve_trainer import distributed as D
from eve_trainer import flops, optim, stage_summary
from eve_trainer.checkpoint import CheckpointManager
from eve_trainer.config import ConfigError, TrainConfig
from eve_trainer.distributed import DistInfo
from eve_trainer.export import export_stage
from eve_trainer.heartbeat import HeartbeatWriter, attempt_from_env, hang_forever
from eve_trainer.metrics import BaseLogger, build_logger, dataset_refs
from eve_trainer.model_init import build_model, check_init_source, fetch_dir
from eve_trainer.progress import Progress
from eve_trainer.registry import ExportVersion
from eve_trainer.validation import Validator

log = logging.getLogger("eve_trainer")
#: the stage run's artifact with the "what will be trained" block (as `eve-platform submit` prints it)
WHAT_ARTIFACT = "what_will_be_trained.txt"


class StopFlag:
    """SIGTERM (Kubernetes preemption, eviction, cancel) once training runs: finish the step,
    checkpoint, exit 143.

    Until `arm()` the default disposition stays: a SIGTERM during start-up (imports, the
    rendezvous, loading weights) ends the process at once with 143 and nothing to save. A
    Python handler would not help there: it only runs between bytecodes, and a rank blocked
    in the C++ rendezvous never gets back to them, so it would ignore SIGTERM until SIGKILL.
    """

    def __init__(self) -> None:
        self.requested = False
        self.at: float | None = None
        self.armed = False

    @classmethod
    def install(cls) -> StopFlag:
        return cls().arm()

    def arm(self) -> StopFlag:
        def handler(signum: int, frame: Any) -> None:
            if not self.requested:
                self.requested, self.at = True, time.monotonic()

        signal.signal(signal.SIGTERM, handler)
        self.armed = True
        return self


@dataclass
class StepResult:
    loss: float
    lm_loss: float
    align_loss: float
    lr: float
    grad_norm: float
    tokens: float
    step_s: float
    data_wait_s: float
    stop: bool
    extra: dict[str, float] = field(default_factory=dict)
    positions: float = 0.0  # sequence positions run, padding included (tokens: real ones only)
    model_flops: float = 0.0  # flops.StepFlops over the real tokens, all ranks


class Trainer:
    def __init__(self, cfg: TrainConfig, dist: DistInfo, *, stop: StopFlag | None = None,
                 device: str | None = None):
        self.cfg, self.dist = cfg, dist
        self.stop = stop or StopFlag()
        self.step = 0
        self.started = False  # True once the first optimizer step ran: errors are no longer the user's
        self.logger: BaseLogger = BaseLogger()
        self.progress: Progress | None = None
        self.engine: Any = None
        self.resume_run_id: str | None = None
        #: counters that continue across stages (from init_from's stage-complete manifest)
        self.offsets = {"global_step": 0, "tokens_seen": 0.0, "samples_seen": 0}
        self.tokens_seen = 0.0  # in this stage
        self._checkpoint_blocked: dict[int, float] = {}  # step -> seconds the loop blocked saving it
        self._interval_advised = False
        self.device = device or D.init_process_group(dist, collective_timeout_s=cfg.distributed.timeout_s)
        self.cuda = self.device.startswith("cuda")
        self.bf16 = cfg.model.dtype == "bf16" or (cfg.model.dtype == "auto" and self.cuda)

        from eve_model import EveImageProcessor, get_preset

        self.store = open_store(cfg.output, endpoint_url=cfg.storage.endpoint_url, region=cfg.storage.region)
        self.heartbeat = HeartbeatWriter(self.store, pipeline=cfg.pipeline, stage=cfg.stage, rank=dist.rank,
                                         every_s=cfg.heartbeat.every_s)
        self.heartbeat.start()
        preset_kwargs: dict[str, Any] = {}
        if not cfg.model.align_loss:  # no PAL, no teacher: the patch-aligning loss is off
            preset_kwargs["requires_cliploss"] = False
        self.init_kind = check_init_source(cfg, get_preset(cfg.model.preset, **preset_kwargs))
        #: an EVE export carries its tokenizer and teacher; a Llama folder only its tokenizer
        self.chained = self.init_kind == "eve"
        self.teacher_source = stage_summary.teacher_source(cfg, chained=self.chained)  # ConfigError: exit 2
        if cfg.model.align_loss and cfg.model.teacher_path:  # the frozen CLIP teacher, as a local folder
            preset_kwargs["clip_teacher_path"] = str(fetch_dir(cfg.model.teacher_path, cfg))
        self.model_config = get_preset(cfg.model.preset, **preset_kwargs)
        for warning in stage_summary.check_model_meant(cfg, chained=self.chained):
            log.warning("%s", warning)
        self.grad_accum = cfg.gradient_accumulation(dist.world_size)

        self.processor = EveImageProcessor.from_config(self.model_config)
        self.loader = self._build_loader(self.processor)
        self.total_steps = self._total_steps()
        #: validation loss on the held-out set (validation.data); its time is evaluation time
        self.validator = Validator(cfg, rank=dist.rank, world_size=dist.world_size, tokenizer=self.tokenizer,
                                   processor=self.processor)
        self.eval_time_s = 0.0  # wall time spent in validation passes this process (not training time)
        self.last_validation: tuple[int, float] | None = None  # (step, val loss) of the newest pass
        if self.validator.enabled:
            self.validator.prepare()  # a bad validation.data URL fails here, before the first step
        self.checkpointer = CheckpointManager(
            self.store, pipeline=cfg.pipeline, stage=cfg.stage, rank=dist.rank, world_size=dist.world_size,
            every_steps=cfg.checkpoint.every_steps, keep_last=cfg.checkpoint.keep_last,
            config_json=cfg.model_dump_json(indent=2), config_hash=cfg.fingerprint(),
            async_save=cfg.checkpoint.async_save)
        # only rank 0 asks the store; every rank must agree on whether to load init weights
        has_checkpoint = D.broadcast_object(
            bool(layout.list_checkpoint_steps(self.store, cfg.pipeline, cfg.stage)) if dist.is_main else None)
        self._build_model_and_engine(load_weights=not has_checkpoint)
        self.step_flops = flops.step_flops(self.model_config, llm_trains=flops.llm_trains(self.model))
        self.flops_per_token = self.step_flops.nominal_per_token(cfg.data.max_length)  # a full text row
        self.peak_flops = flops.peak_flops(self.device)
        #: test-only: seconds to sleep after each step, so a test can signal a run mid-stage
        self._debug_step_delay_s = float(os.environ.get("EVE_DEBUG_STEP_DELAY_S", "0") or 0)

    # -- the story ---------------------------------------------------------------------------

    def train(self) -> int:
        self.progress = Progress(self.cfg.progress, total_steps=self.total_steps, enabled=self.dist.is_main)
        resumed = self.resume()
        self.stop.arm()  # from here on there is something to save: SIGTERM means checkpoint, exit 143
        self.offsets = self._previous_stage_counters()
        self._start_tracking(resumed)
        self._event("start", f"stage {self.cfg.stage}: step {self.step}/{self.total_steps}, world "
                    f"{self.dist.world_size}, grad accumulation {self.grad_accum}, device {self.device}",
                    step=self.step, total_steps=self.total_steps, resumed_from=resumed)
        self.progress.start(self.step)
        self.heartbeat.loop_started(self.step)  # goodput's timers (eve_contract.goodput) start here
        self.heartbeat.update(step=self.step, total_steps=self.total_steps, phase="train")
        debug = self.cfg.debug
        hang = debug.hang_at_step if debug.hang_rank == self.dist.rank and debug.hang_attempt in (
            0, attempt_from_env()) else None
        batches = iter(self.loader)
        while self.step < self.total_steps:
            if self.step == hang:
                hang_forever(self.step, self.dist.rank)
            t_step = time.perf_counter()
            result = self.train_step(batches)
            self.heartbeat.add_time("data", result.data_wait_s)
            self.heartbeat.add_time("step", time.perf_counter() - t_step - result.data_wait_s)
            self.step += 1
            self.tokens_seen += result.tokens
            self.started = True
            self.heartbeat.update(step=self.step, loss=result.loss, tokens_per_s=result.tokens / result.step_s)
            last = self.step == self.total_steps
            if self.step % self.cfg.mlflow.log_every == 0 or last or result.stop:
                self.log_step(result)
            if result.stop:
                return self.stop_with_checkpoint()
            if self.validator.due(self.step, last_step=last):
                self.validate()
            if self.checkpointer.due(self.step, last_step=last):
                self.save_checkpoint()
            for manifest in self.checkpointer.poll():  # asynchronous saves committed since
                self._checkpoint_committed(manifest)
            if self._debug_step_delay_s:
                time.sleep(self._debug_step_delay_s)
                self.heartbeat.add_time("step", self._debug_step_delay_s)  # it stands for a slower step
        self.finish_checkpoints()
        if self.cfg.checkpoint.export:
            t_export = time.perf_counter()
            self.export()
            self.heartbeat.add_time("checkpoint", time.perf_counter() - t_export)
        self._event("done", f"stage {self.cfg.stage} complete at step {self.step}", step=self.step)
        self.heartbeat.close("done")
        self.logger.close("FINISHED")
        return EXIT_OK

    def train_step(self, batches: Any) -> StepResult:
        """One optimizer step: grad_accum micro-batches, then the reduced metrics."""
        import torch

        t0 = time.perf_counter()
        wait = 0.0
        # loss, lm_loss, align_loss, real tokens, stop, positions, model FLOPs: summed on the
        # device, one host sync per step
        sums = torch.zeros(7, dtype=torch.float64, device=self.device)
        lrs = dict(zip((g.get("name", str(i)) for i, g in enumerate(self.optimizer.param_groups)),
                       self.scheduler.get_last_lr()))  # the LRs this step uses
        for _ in range(self.grad_accum):
            t_wait = time.perf_counter()
            batch = self._to_device(next(batches))
            wait += time.perf_counter() - t_wait
            out = self.engine(**batch)
            self.engine.backward(out.loss)
            self.engine.step()  # DeepSpeed steps the optimizer and the LR at the accumulation boundary
            sums[0] += out.loss.detach()
            sums[1] += _detached(getattr(out, "lm_loss", None), out.loss)
            sums[2] += _detached(getattr(out, "align_loss", None), 0.0)
            sums[3] += _num_tokens(out, batch)
            sums[5] += _num_positions(out, batch)
            sums[6] += self.step_flops.of_output(out)
        sums[4] = float(self.stop.requested)
        # one collective per step: the mean losses, the token count, and whether any rank got SIGTERM
        reduced = self._all_reduce(sums)
        n = self.grad_accum * self.dist.world_size
        grad_norm = self.engine.get_global_grad_norm()
        return StepResult(loss=reduced[0] / n, lm_loss=reduced[1] / n, align_loss=reduced[2] / n,
                          lr=lrs.get("base", lrs.get("vision", math.nan)),
                          grad_norm=float(grad_norm) if grad_norm is not None else math.nan,
                          tokens=reduced[3], step_s=time.perf_counter() - t0, data_wait_s=wait,
                          stop=reduced[4] > 0, extra={"vision_lr": lrs["vision"]} if "vision" in lrs else {},
                          positions=reduced[5], model_flops=reduced[6] or self.flops_per_token * reduced[3])

    def log_step(self, r: StepResult) -> None:
        metrics = {"loss": r.loss, "lm_loss": r.lm_loss, "align_loss": r.align_loss, "lr": r.lr,
                   "grad_norm": r.grad_norm, **r.extra,
                   "samples_per_s": self.cfg.global_batch_size / r.step_s,
                   "tokens_per_s": r.tokens / r.step_s, "padding_fraction": 1 - r.tokens / max(r.positions, 1),
                   "model_tflops_per_s": r.model_flops / r.step_s / 1e12,
                   "data_wait_fraction": r.data_wait_s / r.step_s, "step_time_s": r.step_s}
        if self.peak_flops:
            metrics["mfu"] = r.model_flops / r.step_s / (self.peak_flops * self.dist.world_size)
        if self.cuda:
            import torch

            metrics["gpu_memory_max_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
            metrics["gpu_memory_reserved_gib"] = torch.cuda.memory_reserved() / 2**30
        global_step = self.offsets["global_step"] + self.step
        tracked = {_MLFLOW_NAMES.get(k, k): v for k, v in metrics.items()}
        tracked.update({
            N.PROGRESS_GLOBAL_STEP: global_step, N.PROGRESS_STAGE_STEP: self.step,
            N.PROGRESS_TOKENS_SEEN: self.offsets["tokens_seen"] + self.tokens_seen,
            N.PROGRESS_SAMPLES_SEEN: self.offsets["samples_seen"] + self.step * self.cfg.global_batch_size,
            N.PROGRESS_FRACTION: self.step / self.total_steps})
        # the x axis is the global step, so the stages' curves continue one another
        self.logger.log_metrics(tracked, step=global_step)
        if self.progress is not None:
            self.progress.step(self.step, metrics)

    def validate(self) -> None:
        """Loss on the held-out set (every rank takes part); logged as val/*. Changes nothing in training."""
        self.heartbeat.update(phase="validation")
        result = self.validator.run(self.engine, all_reduce=self._all_reduce, to_device=self._to_device,
                                    device=self.device)
        self.heartbeat.update(phase="train")
        self.eval_time_s += result.seconds
        self.heartbeat.add_time("eval", result.seconds)  # goodput's eval part
        self.heartbeat.validated(step=self.step, loss=result.loss)  # status/describe/--local show it
        self.last_validation = (self.step, result.loss)  # the export's manifest carries the stage's last
        self.logger.log_metrics(result.metrics(), step=self.offsets["global_step"] + self.step)
        if self.progress is not None:
            self.progress.validation(self.step, result.short())

    def save_checkpoint(self) -> None:
        """Save at this step: synchronous, or (checkpoint.async_save) the copy to host memory
        here and the upload in the background; either way the time the loop blocked is timed."""
        t0 = time.perf_counter()
        self.heartbeat.update(phase="checkpoint")
        manifest = self.checkpointer.save(self.step, self.engine, self._trainer_state(), self.logger.run_id)
        self.heartbeat.update(phase="train")
        self.heartbeat.add_time("checkpoint", time.perf_counter() - t0)
        self._checkpoint_blocked[self.step] = self.checkpointer.last_blocking_s
        if manifest is not None:
            self._checkpoint_committed(manifest)

    def finish_checkpoints(self) -> None:
        """Wait for the asynchronous save in flight to commit (its manifest is written last)."""
        if not self.checkpointer.pending:
            return
        t0 = time.perf_counter()
        self.heartbeat.update(phase="checkpoint")
        for manifest in self.checkpointer.wait():
            self._checkpoint_committed(manifest)
        self.heartbeat.update(phase="train")
        self.heartbeat.add_time("checkpoint", time.perf_counter() - t0)

    def _checkpoint_committed(self, manifest: layout.Manifest) -> None:
        """A checkpoint's manifest is written: it counts from now on (rank 0 logs it)."""
        size = sum(f.size for f in manifest.files)
        url, took = self.checkpointer.url(manifest.step), self.checkpointer.last_save_s
        blocked = self._checkpoint_blocked.pop(manifest.step, took)
        self.logger.log_text(manifest.to_json().decode(), f"checkpoints/step-{manifest.step}/manifest.json")
        self._event("checkpoint", f"checkpoint {url} ({size / 2**20:.1f} MiB, {took:.1f} s, the loop blocked "
                    f"{blocked:.2f} s)", step=manifest.step, url=url, bytes=size, seconds=round(took, 3),
                    blocked_s=round(blocked, 3))
        if not self._interval_advised:
            self._advise_interval(blocked)

    def _advise_interval(self, blocked_s: float) -> None:
        """Once, after the first committed save: the interval that maximises expected goodput."""
        from eve_trainer.checkpoint import interval_advice

        ck = self.cfg.checkpoint
        beat = self.heartbeat
        advice = interval_advice(every_steps=ck.every_steps, mtbf_node_hours=ck.mtbf_node_hours,
                                 world_size=self.dist.world_size, steps=self.step - (beat.beat.start_step or 0),
                                 step_time_s=beat.timer("step") + beat.timer("data"), save_blocking_s=blocked_s)
        if advice is None:
            return
        self._interval_advised = True
        self._event("checkpoint_advice", advice.message(), optimal_every_steps=advice.optimal_steps,
                    every_steps=ck.every_steps, save_s=round(advice.save_s, 3), step_s=round(advice.step_s, 4),
                    mtbf_s=round(advice.mtbf_s), far=advice.far)
        if advice.far and self.dist.is_main:
            log.warning("%s", advice.message())
        self.logger.log_metrics({N.CHECKPOINT_OPTIMAL_EVERY_STEPS: advice.optimal_steps,
                                 N.CHECKPOINT_SAVE_BLOCKING_S: advice.save_s},
                                step=self.offsets["global_step"] + self.step)

    def stop_with_checkpoint(self) -> int:
        """SIGTERM: checkpoint this step within the grace period, then exit 143 (retryable)."""
        grace = self.cfg.checkpoint.grace_period_s
        self._event("stopping", f"SIGTERM: writing a final checkpoint at step {self.step} (grace {grace:.0f} s)",
                    step=self.step)
        # past the grace period the kubelet SIGKILLs us anyway; leave on our own terms instead.
        # The previous complete checkpoint stays valid: a manifest is only written at the very end.
        watchdog = threading.Timer(grace, lambda: os._exit(EXIT_SIGTERM))
        watchdog.daemon = True
        watchdog.start()
        self.save_checkpoint()  # waits for a save in flight first; both finish within the grace period
        self.finish_checkpoints()
        watchdog.cancel()
        self.logger.close("KILLED", timeout_s=min(10.0, grace / 4))
        return EXIT_SIGTERM

    def export(self) -> None:
        run_id = self.logger.wait_for_run(10.0)
        url = f"{self.store.url}/{layout.export_prefix(self.cfg.pipeline, self.cfg.stage)}"
        counters = {N.MANIFEST_GLOBAL_STEP: self.offsets["global_step"] + self.step,
                    N.MANIFEST_TOKENS_SEEN: self.offsets["tokens_seen"] + self.tokens_seen,
                    N.MANIFEST_SAMPLES_SEEN: self.offsets["samples_seen"] + self.step * self.cfg.global_batch_size}
        if self.last_validation is not None:  # the pipeline's StageSucceeded line and summary show it
            counters[N.MANIFEST_VAL_STEP], counters[N.MANIFEST_VAL_LOSS] = self.last_validation
        manifest = export_stage(
            self.engine, store=self.store, pipeline=self.cfg.pipeline, stage=self.cfg.stage, step=self.step,
            rank=self.dist.rank, zero_stage=self.cfg.deepspeed.zero_stage, config_hash=self.cfg.fingerprint(),
            mlflow_run_id=run_id, extra={"init_from": self.cfg.init_from, "export_uri": url,
                                         "checkpoint": self.checkpointer.url(self.step), **counters},
            tokenizer=self.tokenizer, processor=self.processor)
        if manifest is not None:
            blob = manifest.to_json()
            digest = hashlib.sha256(blob).hexdigest()
            self.logger.set_tags({N.TAG_EXPORT_URI: url, N.TAG_MANIFEST_SHA256: digest})
            self.logger.log_text(blob.decode(), "export/stage-complete.json")
            if self.cfg.mlflow.register_exports:
                name = N.registered_model_name(self.cfg.mlflow.registered_model, self.cfg.model.preset)
                self.logger.register_export(ExportVersion(name=name, stage=self.cfg.stage, pipeline=self.cfg.pipeline,
                                                          source=url, manifest_sha256=digest, step=self.step))
            self._event("export", f"export {url} ({len(manifest.files)} files)", url=url)

    def resume(self) -> int | None:
        """Restore the newest complete checkpoint of this stage; the step it was taken at, or None."""
        restored = self.checkpointer.load(self.engine)
        for step in self.checkpointer.skipped:
            self._event("checkpoint_skipped", f"checkpoint {self.checkpointer.url(step)} failed verification "
                        "(missing file or sha256 mismatch); falling back", step=step)
        if restored is None:
            if not self.weights_loaded:  # there were checkpoints, but none verified: start afresh
                self._event("fresh_start", "no checkpoint verified; starting from init weights")
                self._build_model_and_engine(load_weights=True)
            return None
        state = restored.trainer_state
        self.step = restored.step
        self.tokens_seen = float(state.get("tokens_seen", 0.0))
        if (val := state.get("last_validation")) is not None:  # the beat and the export keep showing it
            self.last_validation = (int(val["step"]), float(val["loss"]))
            self.heartbeat.validated(step=self.last_validation[0], loss=self.last_validation[1])
        if restored.all_states is not None:  # written by another world size: re-split what is left
            facts = self.loader.load_resharded([s["loader"] for s in restored.all_states])
            self._event("resharded", f"checkpoint of {restored.written_by} ranks resumed on {self.dist.world_size}: "
                        f"model, optimizer and LR schedule via a universal checkpoint; {facts['left_in_epoch']} "
                        f"samples left in epoch {facts['epoch']} re-split over the ranks", step=restored.step,
                        written_by=restored.written_by, **facts)
        else:
            self.loader.load_state_dict(state["loader"])
        old_batch = state.get("global_batch_size", self.cfg.global_batch_size)
        if old_batch != self.cfg.global_batch_size:
            log.warning("global_batch_size changed from %d to %d since the checkpoint: the remaining steps, the "
                        "samples per step and the LR schedule (now over %d steps) differ from the original run, so "
                        "the run is not the one it would have been; every sample is still seen once per epoch",
                        old_batch, self.cfg.global_batch_size, self.total_steps)
        _set_rng_state(state["rng"])
        self.resume_run_id = restored.manifest.mlflow_run_id or state.get("mlflow_run_id")
        self._event("resumed", f"resumed from {self.checkpointer.url(restored.step)}", step=restored.step)
        return restored.step

    def close(self, status: str = "FAILED", error: str | None = None) -> None:
        """Safe on a half-built trainer. `error` (a traceback) goes to the run as logs/rank-<r>-error.txt."""
        if self.progress is not None:
            self.progress.close()
        if getattr(self, "heartbeat", None) is not None:
            self.heartbeat.close("done" if status == "FINISHED" else status.lower())
        if error and status == "FAILED":
            self.logger.log_text(error, f"{N.LOGS_ARTIFACT_DIR}/rank-{self.dist.rank}-error.txt")
        self.logger.close(status)

    # -- building blocks -------------------------------------------------------------------------

    def _build_model_and_engine(self, *, load_weights: bool) -> None:
        """Model (init weights unless a checkpoint will overwrite them), trainable set, DeepSpeed engine."""
        self._seed_everything(self.cfg.seed)
        self.model = build_model(self.cfg, self.model_config, init_kind=self.init_kind, load_weights=load_weights)
        self.weights_loaded = load_weights
        self.model.attention = self.cfg.model.attention  # resolved (and logged) at the first forward
        self.model.loss_chunk_tokens = self.cfg.model.loss_chunk_tokens
        if self.cfg.model.compile:  # one compiled graph serves every (identical) decoder layer
            for layer in self.model.model.layers:
                layer.compile()
        self.trainable = self._prepare_model()
        self.engine, self.optimizer, self.scheduler = self._build_engine()

    def _build_loader(self, processor: Any) -> Any:
        from eve_trainer.data import DataError, build_loader, load_tokenizer

        source = stage_summary.tokenizer_source(self.cfg, chained=self.chained)
        try:
            self.tokenizer = load_tokenizer(source.where, endpoint_url=self.cfg.storage.endpoint_url)
        except DataError as err:
            if source.how == "data.tokenizer":
                raise
            raise DataError(f"data.tokenizer is unset, so the tokenizer is the LLM's ({source.how}): {err}; "
                            "set data.tokenizer=<a tokenizer folder or s3:// URL>") from None
        stage_summary.check_tokenizer_fits(self.cfg, len(self.tokenizer), source.where)  # ConfigError: exit 2
        self.tokenizer_source = stage_summary.Source(source.where, source.how, len(self.tokenizer))
        return build_loader(self.cfg.data, storage=self.cfg.storage, tokenizer=self.tokenizer, processor=processor,
                            micro_batch_size=self.cfg.micro_batch_size, rank=self.dist.rank,
                            world_size=self.dist.world_size, seed=self.cfg.seed)

    def _total_steps(self) -> int:
        if self.cfg.max_steps:
            return self.cfg.max_steps
        per_rank_batch = self.cfg.global_batch_size // self.dist.world_size
        steps = self.cfg.epochs * self.loader.samples_per_epoch // per_rank_batch
        if steps < 1:
            raise ConfigError(f"data.urls hold {self.loader.samples_per_epoch} samples per rank, fewer than one "
                              f"global batch ({self.cfg.global_batch_size}); lower global_batch_size or set max_steps")
        return steps

    def _prepare_model(self) -> list[str]:
        from eve_model import set_trainable

        trainable = set_trainable(self.model, self.cfg.stage)
        if self.cfg.model.gradient_checkpointing:
            from eve_model import set_activation_checkpointing

            m = self.cfg.model
            set_activation_checkpointing(self.model, every=m.checkpoint_every, part=m.checkpoint_part,
                                         offload=m.checkpoint_offload)
        return trainable

    def _build_engine(self) -> tuple[Any, Any, Any]:
        import deepspeed

        if not self.cuda:
            skip_shm_comm_build()
        optimizer = optim.build_optimizer(self.model, self.cfg.optim,
                                          fused=self.cuda and not self.cfg.deepspeed.offload_optimizer)
        scheduler = optim.build_scheduler(optimizer, self.cfg.optim, self.total_steps)
        ds_config = optim.deepspeed_config(self.cfg, world_size=self.dist.world_size, bf16=self.bf16, cuda=self.cuda)
        engine, _, _, _ = deepspeed.initialize(model=self.model, optimizer=optimizer, lr_scheduler=scheduler,
                                               config=ds_config, dist_init_required=False)
        return engine, optimizer, scheduler

    def _start_tracking(self, resumed: int | None) -> None:
        cfg = self.cfg
        tags = {N.TAG_PIPELINE: cfg.pipeline, N.TAG_STAGE: cfg.stage, N.TAG_RUN_KIND: "stage",
                N.TAG_INIT_CHECKPOINT: cfg.init_from or "random-init",
                N.TAG_PREVIOUS_RUN: cfg.mlflow.previous_run_id or "",
                "eve.world_size": str(self.dist.world_size), "eve.model_preset": cfg.model.preset}
        if commit := _git_commit():
            tags["mlflow.source.git.commit"] = tags["eve.git_commit"] = commit
        self.logger = build_logger(
            tracking_uri=cfg.mlflow.tracking_uri, is_main=self.dist.is_main, experiment=cfg.mlflow.experiment,
            run_name=N.stage_run_name(cfg.stage), tags=tags, parent_run_id=cfg.mlflow.parent_run_id,
            resume_run_id=self.resume_run_id if resumed is not None else None,
            system_metrics=cfg.mlflow.system_metrics, system_metrics_interval_s=cfg.mlflow.system_metrics_interval_s)
        self.logger.log_params({
            **cfg.model_dump(mode="json"),
            "derived": {"world_size": self.dist.world_size, "gradient_accumulation": self.grad_accum,
                        "total_steps": self.total_steps, "trainable_params": _numel(self.model, trainable=True),
                        "total_params": _numel(self.model), "flops_per_token": self.flops_per_token,
                        "bf16": self.bf16}})
        summary = self._what_will_be_trained()
        self.logger.log_params({"what": summary.params()})
        if resumed is not None:
            self.logger.set_tags({"eve.resumed_from_step": str(resumed)})
        if not self.dist.is_main or not cfg.mlflow.tracking_uri:
            return
        self.logger.log_text(summary.text(), WHAT_ARTIFACT)
        self.logger.log_dict(cfg.model_dump(mode="json"), N.CONFIG_ARTIFACT)
        try:
            self.logger.log_datasets(dataset_refs(cfg.data.urls, endpoint_url=cfg.storage.endpoint_url,
                                                  region=cfg.storage.region))
        except Exception as err:  # noqa: BLE001 - lineage must not stop training; the loader read them
            log.warning("dataset inputs not logged: %s", err)

    def _what_will_be_trained(self) -> stage_summary.StageSummary:
        """The block the CLI printed at submit, from what start-up found: the tokenizer's real size,
        the teacher's source, the model's real parameter counts. Logged on rank 0."""
        counts: dict[str, int] = {}
        for name, param in self.model.named_parameters():
            group = stage_summary.group_of(name)
            counts[group] = counts.get(group, 0) + (param.numel() or getattr(param, "ds_numel", 0))
        summary = stage_summary.summarize(
            self.cfg, world_size=self.dist.world_size, chained=self.chained, total_steps=self.total_steps,
            tokenizer=self.tokenizer_source, teacher=self.teacher_source, counts=counts)
        if self.dist.is_main:
            for line in summary.lines():
                log.info("%s", line)
        return summary

    def _previous_stage_counters(self) -> dict[str, Any]:
        """global_step / tokens_seen / samples_seen where the init export's stage ended (0 when fresh).

        Only rank 0 logs and writes the manifest, so only rank 0 reads them (no collective)."""
        zero = {"global_step": 0, "tokens_seen": 0.0, "samples_seen": 0}
        if not self.cfg.init_from or self.init_kind != "eve" or not self.dist.is_main:
            return zero
        try:
            store = open_store(self.cfg.init_from, endpoint_url=self.cfg.storage.endpoint_url,
                               region=self.cfg.storage.region)
            extra = layout.Manifest.from_json(store.get_bytes(layout.STAGE_COMPLETE)).extra
            found = {"global_step": int(extra.get(N.MANIFEST_GLOBAL_STEP, 0)),
                     "tokens_seen": float(extra.get(N.MANIFEST_TOKENS_SEEN, 0.0)),
                     "samples_seen": int(extra.get(N.MANIFEST_SAMPLES_SEEN, 0))}
        except Exception:  # noqa: BLE001 - a plain HF folder has no stage-complete manifest
            found = zero
        return found

    def _trainer_state(self) -> dict[str, Any]:
        return {"step": self.step, "loader": self.loader.state_dict(), "rng": _rng_state(),
                "global_batch_size": self.cfg.global_batch_size,
                "mlflow_run_id": self.logger.run_id, "tokens_seen": self.tokens_seen,
                "last_validation": None if self.last_validation is None else
                {"step": self.last_validation[0], "loss": self.last_validation[1]}}

    def _seed_everything(self, seed: int) -> None:
        import numpy as np
        import torch

        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)  # the same on every rank: identical initial weights

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        import torch

        out = {}
        for key, value in batch.items():
            if isinstance(value, torch.Tensor):
                value = value.to(self.device, non_blocking=True)
                if value.is_floating_point() and self.bf16:
                    value = value.to(torch.bfloat16)
            out[key] = value
        return out

    def _all_reduce(self, values: Any) -> list[float]:
        import torch.distributed as dist

        if self.dist.world_size > 1:
            dist.all_reduce(values)
        return values.cpu().tolist()

    def _event(self, name: str, message: str, **fields: Any) -> None:
        if self.progress is not None:
            self.progress.event(name, message, **fields)
        elif self.dist.is_main:
            log.info(message)


def skip_shm_comm_build() -> None:
    """Before a CPU engine: turn off DeepSpeed's shared-memory all-reduce op, which it would otherwise
    JIT-compile at start-up: a C++ build of a minute under a file lock in ~/.cache/torch_extensions,
    which a rank killed mid-build (a lost node, a cancel) leaves behind, so every later start hangs on
    it. The CPU runs (tests, the demo, the benchmarks) use gloo's collectives instead."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def _detached(value: Any, default: Any) -> Any:
    if value is None:
        value = default
    return value.detach() if hasattr(value, "detach") else float(value)


def _num_tokens(out: Any, batch: dict[str, Any]) -> Any:
    """Real (non-padding) positions after the splice, image tokens included."""
    mask = getattr(out, "attention_mask", None)
    return (mask if mask is not None else batch["attention_mask"]).sum()


def _num_positions(out: Any, batch: dict[str, Any]) -> float:
    """Sequence positions the model ran, padding included."""
    mask = getattr(out, "attention_mask", None)
    return float((mask if mask is not None else batch["input_ids"]).numel())


#: the progress line's short names -> MLflow's grouped names
_MLFLOW_NAMES = {"loss": N.TRAIN_LOSS, "lm_loss": N.TRAIN_LM_LOSS, "align_loss": N.TRAIN_ALIGN_LOSS,
                 "lr": N.TRAIN_LR, "vision_lr": N.TRAIN_VISION_LR, "grad_norm": N.TRAIN_GRAD_NORM,
                 "samples_per_s": N.PERF_SAMPLES_PER_S, "tokens_per_s": N.PERF_TOKENS_PER_S,
                 "data_wait_fraction": N.DATA_WAIT_FRACTION, "step_time_s": N.PERF_STEP_TIME_S,
                 "mfu": N.PERF_MFU, "padding_fraction": N.PERF_PADDING_FRACTION,
                 "model_tflops_per_s": N.PERF_MODEL_TFLOPS_PER_S,
                 "gpu_memory_max_allocated_gib": N.PERF_GPU_MEM_MAX_ALLOCATED,
                 "gpu_memory_reserved_gib": N.PERF_GPU_MEM_RESERVED}


def _numel(model: Any, trainable: bool = False) -> int:
    return sum(p.numel() or getattr(p, "ds_numel", 0) for p in model.parameters() if p.requires_grad or not trainable)


def _rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _git_commit() -> str | None:
    for var in ("EVE_GIT_COMMIT", "GIT_COMMIT"):
        if os.environ.get(var):
            return os.environ[var]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None
