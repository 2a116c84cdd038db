"""Validation loss on a fixed held-out set, spread over the ranks, without touching training.

    validator = Validator(cfg, rank=r, world_size=w, tokenizer=tok, processor=proc)
    result = validator.run(engine, device=..., all_reduce=..., to_device=...)   # every rank calls it
    result.metrics()   # {"val/loss", "val/lm_loss", "val/align_loss", "val/samples", "val/time_s"}

**The set.** The first `validation.max_samples` samples of `validation.data`, in index order
(datasets in the given order, shards as index.json lists them, samples as stored): the same
samples every time, whatever the seed or the world size. They are cut into global batches of
`validation.micro_batch_size` in that order, and rank r takes batches r, r + W, r + 2W, ...

**The numbers.** Each batch contributes `lm_loss x targets` (the model's lm_loss is a mean over
the batch's target tokens) and `align_loss x images` (a mean over its images). One all-reduce of
the sums and counts gives token- and image-weighted means. The batches are the same for every
world size, so the result does not depend on it (up to the order of float additions).
`val/loss = val/lm_loss + val/align_loss`, as `train/loss` is.

**Every rank runs the same number of forward passes** (ZeRO-3 gathers parameters with
collectives inside forward): a rank with fewer batches repeats one with weight 0.

**Training is untouched.** The model runs in eval mode under no_grad (dropout off, no
gradients, no optimizer or DeepSpeed step); the Python, NumPy, torch and CUDA RNG states are
saved before and restored after; the training loader is not read (the held-out samples are read
here, in the main process, once, and kept as tokens + image bytes). The export is therefore
bit-identical with and without validation (tests/trainer/test_validation.py).

**Time.** `seconds` is the wall time of the pass; the trainer counts it as evaluation time
(`Trainer.eval_time_s`, MLflow `val/time_s`), never in `perf/step_time_s`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from eve_contract import tracking_names as N

log = logging.getLogger("eve_trainer.validation")


@dataclass(frozen=True)
class ValidationResult:
    lm_loss: float
    align_loss: float
    samples: int
    targets: int
    seconds: float

    @property
    def loss(self) -> float:
        return self.lm_loss + self.align_loss

    def metrics(self) -> dict[str, float]:
        """MLflow names (tracking_names.VAL_*)."""
        return {N.VAL_LOSS: self.loss, N.VAL_LM_LOSS: self.lm_loss, N.VAL_ALIGN_LOSS: self.align_loss,
                N.VAL_SAMPLES: float(self.samples), N.VAL_TIME_S: self.seconds}

    def short(self) -> dict[str, float]:
        """The progress line's names."""
        return {"val_loss": self.loss, "val_lm_loss": self.lm_loss, "val_align_loss": self.align_loss,
                "val_samples": self.samples, "val_time_s": round(self.seconds, 3)}


def rank_batches(num_samples: int, batch_size: int, rank: int, world_size: int) -> list[tuple[int, bool]]:
    """(global batch index, counts) for each forward pass of `rank`; every rank gets the same
    number of passes, a rank short of batches repeats one that does not count (weight 0)."""
    n_batches = math.ceil(num_samples / batch_size) if num_samples else 0
    rounds = math.ceil(n_batches / world_size) if n_batches else 0
    out = []
    for k in range(rounds):
        b = k * world_size + rank
        out.append((b, True) if b < n_batches else (rank % n_batches, False))
    return out


class Validator:
    def __init__(self, cfg: Any, *, rank: int, world_size: int, tokenizer: Any, processor: Any):
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        self.batch_size = cfg.validation.micro_batch_size or cfg.micro_batch_size
        self.tokenizer, self.processor = tokenizer, processor
        self._prepared: dict[int, list[Any]] | None = None  # global batch index -> Prepared samples
        self.num_samples = 0

    @property
    def enabled(self) -> bool:
        return bool(self.cfg.validation.data)

    def due(self, step: int, *, last_step: bool) -> bool:
        every = self.cfg.validation.every_steps
        return self.enabled and (last_step or (every > 0 and step % every == 0))

    # -- the held-out set ---------------------------------------------------------------------

    def _load(self) -> dict[int, list[Any]]:
        """Read the held-out samples once; keep this rank's batches as tokens + image bytes."""
        from eve_contract.storage import open_store
        from eve_trainer.data.errors import DataError
        from eve_trainer.data.index import DatasetIndex
        from eve_trainer.data.samples import SampleBuilder
        from eve_trainer.data.shards import iter_tar
        from eve_trainer.data.templates import SampleError

        v, data = self.cfg.validation, self.cfg.data
        builder = SampleBuilder(self.tokenizer, self.processor, data.template, data.max_length, pack=False)
        stores, total = [], 0
        for url in v.data:
            store = open_store(url, endpoint_url=self.cfg.storage.endpoint_url, region=self.cfg.storage.region)
            index = DatasetIndex.read(store)
            stores.append((store, index))
            total += index.num_samples
        n = min(v.max_samples, total)
        if n == 0:
            raise DataError(f"validation.data={v.data} holds no samples")
        mine = {b for b, _ in rank_batches(n, self.batch_size, self.rank, self.world_size)}
        batches: dict[int, list[Any]] = {b: [] for b in mine}
        pos, skipped = 0, 0
        for store, index in stores:
            for shard in index.shards:
                if pos >= n:
                    break
                with closing(store.open_read(shard.name)) as stream, closing(iter_tar(stream)) as samples:
                    for raw in samples:
                        if pos >= n:
                            break
                        b = pos // self.batch_size
                        pos += 1
                        if b in batches:
                            try:
                                batches[b].append(builder.prepare(raw))
                            except SampleError as err:
                                skipped += 1
                                log.warning("validation sample %s/%s skipped: %s", shard.name, raw.key, err)
        if skipped:
            log.warning("%d held-out samples of this rank were skipped (unreadable); the validation set "
                        "differs from the other ranks' view only by them", skipped)
        self.num_samples = n
        return batches

    def prepare(self) -> None:
        """Read the held-out set now (else at the first pass): bad URLs fail before training starts."""
        if self._prepared is None:
            self._prepared = self._load()

    # -- the pass -----------------------------------------------------------------------------

    def run(self, engine: Any, *, all_reduce: Callable[[Any], list[float]],
            to_device: Callable[[dict[str, Any]], dict[str, Any]], device: str) -> ValidationResult:
        import torch

        from eve_trainer.data.samples import collate

        t0 = time.perf_counter()
        self.prepare()
        assert self._prepared is not None
        builder_finish = self._finisher()
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        rng = _rng_state()
        was_training = getattr(engine, "module", engine).training
        # lm_loss x targets, targets, align_loss x images, images, samples
        sums = torch.zeros(5, dtype=torch.float64, device=device)
        engine.eval()
        try:
            with torch.no_grad():
                for b, counts in rank_batches(self.num_samples, self.batch_size, self.rank, self.world_size):
                    prepared = self._prepared.get(b) or []
                    if not prepared:  # every sample of the batch was unreadable: a pass all the same
                        prepared, counts = next(p for p in self._prepared.values() if p), False
                    batch = to_device(collate([builder_finish(p) for p in prepared], pad_id))
                    out = engine(**batch)
                    if not counts:
                        continue
                    targets = (out.labels[:, 1:] != -100).sum() if out.labels is not None else \
                        (batch["labels"][:, 1:] != -100).sum()
                    images = out.image_grids.shape[0] if getattr(out, "image_grids", None) is not None else 0
                    sums[0] += out.lm_loss.detach().double() * targets
                    sums[1] += targets
                    align = getattr(out, "align_loss", None)
                    if align is not None and images:
                        sums[2] += align.detach().double() * images
                        sums[3] += images
                    sums[4] += len(prepared)
        finally:
            if was_training:
                engine.train()
            _set_rng_state(rng)
        total = all_reduce(sums)
        return ValidationResult(lm_loss=total[0] / max(total[1], 1.0), align_loss=total[2] / max(total[3], 1.0),
                                samples=int(total[4]), targets=int(total[1]), seconds=time.perf_counter() - t0)

    def _finisher(self) -> Callable[[Any], dict[str, Any]]:
        from eve_trainer.data.samples import SampleBuilder

        data = self.cfg.data
        return SampleBuilder(self.tokenizer, self.processor, data.template, data.max_length).finish


def _rng_state() -> dict[str, Any]:
    import random

    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


__all__ = ["ValidationResult", "Validator", "rank_batches"]
