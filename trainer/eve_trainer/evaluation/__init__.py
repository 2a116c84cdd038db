"""Benchmark evaluation of a stage export, the way the EVE reference scores it (docs/eval.md).

    from eve_trainer.evaluation import evaluate
    scores = evaluate(model="<export folder/URL or models:/name@alias>",
                      benches={"pope": "<bench folder URL>"}, output="<URL or folder>",
                      rank=0, world_size=1, max_new_tokens=128, batch_size=8)
    # -> {"pope": {"accuracy": ..., "f1": ..., "adversarial/f1": ..., ...}}

`eve-eval` (eve_trainer.evaluation.main) is the same on every rank of a job. The question
readers, scorers and output paths are torch-free; `evaluate` loads torch when called.
"""

from __future__ import annotations

from typing import Any

from eve_trainer.evaluation.benches import BENCHES, bench
from eve_trainer.evaluation.questions import BenchDataError

__all__ = ["evaluate", "BENCHES", "bench", "BenchDataError"]


def evaluate(model: str, benches: dict[str, str], output: str, rank: int = 0, world_size: int = 1,
             max_new_tokens: int = 128, batch_size: int = 8, **options: Any) -> dict[str, dict[str, float]]:
    """Answer every bench's questions with the export (this rank's share), merge, score.

    Every rank returns the scores. Options: tracking_uri, endpoint_url, region, dtype, device,
    log_to_mlflow (default True), model_id, progress (a callable taking a line), sync_timeout_s.
    See eve_trainer.evaluation.runner.evaluate."""
    from eve_trainer.evaluation.runner import evaluate as _evaluate

    return _evaluate(model, benches, output, rank=rank, world_size=world_size, max_new_tokens=max_new_tokens,
                     batch_size=batch_size, **options)
