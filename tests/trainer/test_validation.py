"""Validation loss on a held-out set (eve_trainer.validation, `validation.*` keys).

- The split over ranks: every batch once, every rank the same number of passes.
- In process, on the tiny model: the weighted means do not depend on the world size, and a
  pass leaves the RNG streams and the train/eval mode as they were.
- Through the trainer (2 ranks, real S3 and MLflow): the export is bit-identical with and
  without validation, and val/* reach the stage's MLflow run, its progress lines and events,
  every rank's heartbeat and the export's manifest (what status and the pipeline read)."""

from __future__ import annotations

import random

import pytest

from eve_trainer.config import resolve
from eve_trainer.validation import Validator, rank_batches


@pytest.mark.parametrize("samples,batch,world", [(10, 4, 1), (10, 4, 2), (10, 4, 3), (3, 4, 4), (16, 4, 2)])
def test_every_batch_counts_once_and_ranks_run_the_same_number_of_passes(samples, batch, world):
    per_rank = [rank_batches(samples, batch, r, world) for r in range(world)]
    counted = sorted(b for passes in per_rank for b, counts in passes if counts)
    assert counted == list(range(-(-samples // batch)))
    assert len({len(passes) for passes in per_rank}) == 1  # ZeRO-3 needs the same number of forwards


def test_due_every_n_steps_and_at_the_stage_end():
    cfg = resolve("prealign", overrides=["validation.data=[x]", "validation.every_steps=4"])
    v = Validator(cfg, rank=0, world_size=1, tokenizer=None, processor=None)
    assert [s for s in range(1, 11) if v.due(s, last_step=s == 10)] == [4, 8, 10]
    off = Validator(resolve("prealign"), rank=0, world_size=1, tokenizer=None, processor=None)
    assert not off.due(10, last_step=True)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> str:
    from eve_trainer.data import write_synthetic_dataset

    url = str(tmp_path_factory.mktemp("val") / "held-out")
    write_synthetic_dataset(url, num_samples=14, kind="caption", seed=3, samples_per_shard=4)
    return url


def _run_ranks(cfg, model, world: int):
    """Every rank's pass in turn; the all-reduce adds up what the ranks return."""
    import torch

    from eve_model import EveImageProcessor, get_preset
    from eve_trainer.data import load_tokenizer

    tok, proc = load_tokenizer("builtin:tiny"), EveImageProcessor.from_config(get_preset("tiny"))
    partial = []
    for rank in range(world):
        v = Validator(cfg, rank=rank, world_size=world, tokenizer=tok, processor=proc)
        v.run(model, all_reduce=lambda t: partial.append(t.clone()) or t.tolist(), to_device=lambda b: b,
              device="cpu")
    total = torch.stack(partial).sum(0).tolist()
    return total[0] / total[1], total[2] / total[3], int(total[4])


def test_the_result_does_not_depend_on_the_world_size_and_training_state_is_untouched(held_out):
    import numpy as np
    import torch

    from eve_model import EveForCausalLM, get_preset

    torch.manual_seed(0)
    model = EveForCausalLM(get_preset("tiny")).train()
    cfg = resolve("prealign", overrides=[f"validation.data=[{held_out}]", "validation.max_samples=11",
                                         "validation.micro_batch_size=3", "data.max_length=128"])
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    before = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    one = _run_ranks(cfg, model, 1)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == before  # RNG streams restored
    assert model.training  # back in train mode
    assert one[2] == 11 and one[0] > 0 and one[1] > 0
    for world in (2, 4):
        lm, align, n = _run_ranks(cfg, model, world)
        assert n == 11
        assert lm == pytest.approx(one[0], rel=1e-5) and align == pytest.approx(one[1], rel=1e-5)


# -- through the trainer ---------------------------------------------------------------------------

STEPS = 4


@pytest.mark.slow
def test_validation_changes_nothing_in_training_and_reaches_mlflow(
        tmp_path_factory, s3_server, mlflow_server, e2e_bucket, dataset_url):
    from mlflow.tracking import MlflowClient
    from support.eve_trainer_harness import launch

    from eve_contract import layout
    from eve_trainer.data import write_synthetic_dataset

    val_url = f"s3://{e2e_bucket}/data/held-out"
    with pytest.MonkeyPatch.context() as env:
        for key, value in s3_server.env().items():
            env.setenv(key, value)
        write_synthetic_dataset(val_url, num_samples=12, kind="caption", seed=9, endpoint_url=s3_server.endpoint_url)

    def args(pipeline: str, *extra: str) -> list[str]:
        return ["prealign", f"data.urls=[{dataset_url}]", f"output=s3://{e2e_bucket}/runs", f"pipeline={pipeline}",
                f"max_steps={STEPS}", "progress=json", "data.num_workers=1", "seed=11", "checkpoint.every_steps=2",
                *extra]

    exp = MlflowClient(mlflow_server.tracking_uri).create_experiment("validation")
    plain = launch(args("val-off"), world=2, log_dir=tmp_path_factory.mktemp("off"), env=s3_server.env())
    with_val = launch(args("val-on", f"validation.data=[{val_url}]", "validation.every_steps=2",
                           "validation.max_samples=10", "validation.micro_batch_size=3",
                           f"mlflow.tracking_uri={mlflow_server.tracking_uri}", "mlflow.experiment=validation"),
                      world=2, log_dir=tmp_path_factory.mktemp("on"), env=s3_server.env())
    assert plain.wait(300) == [0, 0], plain.tail()
    assert with_val.wait(300) == [0, 0], with_val.tail()

    store = s3_server.open_store(f"s3://{e2e_bucket}/runs")

    def export_files(pipeline: str) -> dict[str, str]:
        manifest = layout.Manifest.from_json(store.get_bytes(f"{layout.export_prefix(pipeline, 'prealign')}/"
                                                             f"{layout.STAGE_COMPLETE}"))
        return {f.path: f.sha256 for f in manifest.files}

    exported = export_files("val-on")
    assert "model.safetensors" in exported
    assert exported == export_files("val-off")  # bit-identical weights, config, tokenizer
    assert plain.losses() == with_val.losses()  # and the same loss at every step

    events = [e for e in with_val.events() if e.get("event") == "validation"]
    assert [e["step"] for e in events] == [2, 4]  # every 2 steps; the stage end (4) is one of them
    assert all(e["val_samples"] == 10 and e["val_loss"] == pytest.approx(e["val_lm_loss"] + e["val_align_loss"])
               for e in events)

    client = MlflowClient(mlflow_server.tracking_uri)
    (run,) = client.search_runs([exp])
    for name in ("val/loss", "val/lm_loss", "val/align_loss", "val/time_s"):
        history = sorted(client.get_metric_history(run.info.run_id, name), key=lambda m: m.step)
        assert [m.step for m in history] == [2, 4], name
    last = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val/loss")}
    assert last[4] == pytest.approx(events[-1]["val_loss"])
    # goodput's eval part: rank 0's last heartbeat carries the validation passes' time
    spent = sum(m.value for m in client.get_metric_history(run.info.run_id, "val/time_s"))
    beat = layout.read_heartbeats(store, "val-on", "prealign")[0]
    assert beat.rank == 0 and beat.timers["eval"] == pytest.approx(spent, rel=1e-3, abs=1e-3)

    # what the platform shows: every rank's beat carries the newest pass (status/describe/--local
    # progress lines), and the export's manifest the stage's last one (the StageSucceeded line, the summary)
    from eve_operator.cli.progress import short, summarize
    from eve_operator.observe import StoreReads

    beats = layout.read_heartbeats(store, "val-on", "prealign")
    assert [(b.val_step, round(b.val_loss, 6)) for b in beats] == [(4, round(events[-1]["val_loss"], 6))] * 2
    assert f"val {events[-1]['val_loss']:.3f}@4" in short(summarize(beats))
    assert all(b.val_loss is None for b in layout.read_heartbeats(store, "val-off", "prealign"))
    complete = StoreReads("val-on", f"s3://{e2e_bucket}/runs", lambda: store, deep=False).complete("prealign")
    assert complete is not None and complete.val_step == 4
    assert complete.val_loss == pytest.approx(events[-1]["val_loss"])
    plain_complete = StoreReads("val-off", f"s3://{e2e_bucket}/runs", lambda: store, deep=False).complete("prealign")
    assert plain_complete is not None and plain_complete.val_loss is None and plain_complete.val_step is None
