"""eve-train end to end: 2 ranks on CPU (gloo, DeepSpeed ZeRO-2), real S3 (SeaweedFS) and a
real MLflow server. One uninterrupted baseline run is shared by the tests; the others
interrupt a run (SIGKILL, corrupt checkpoint, SIGTERM) and compare against it step by step."""

from __future__ import annotations

import signal

import pytest
from support.eve_trainer_harness import Ranks, launch

from eve_contract import layout

pytestmark = pytest.mark.slow

STEPS = 6  # tiny recipe: global batch 8 = 2 ranks x micro 4, checkpoints every 3 steps


def train_args(dataset_url: str, bucket: str, pipeline: str, *extra: str, stage: str = "pretrain") -> list[str]:
    """eve-train's words; a key in `extra` replaces the default one (eve-train refuses a key given twice)."""
    words = [f"data.urls=[{dataset_url}]", f"output=s3://{bucket}/runs", f"pipeline={pipeline}",
             f"max_steps={STEPS}", "progress=json", "data.num_workers=1", "seed=7", *extra]
    return [stage, *{w.split("=", 1)[0]: w for w in words}.values()]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, s3_server, mlflow_server, e2e_bucket, dataset_url) -> tuple[Ranks, dict]:
    """The uninterrupted run, tracked in MLflow under a pipeline (parent) run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.tracking_uri)
    exp = client.create_experiment("trainer-e2e")
    parent = client.create_run(exp, run_name="pipeline").info.run_id
    ids = {"parent": parent, "previous": "prealign-run-0"}
    ranks = launch(train_args(dataset_url, e2e_bucket, "base", f"mlflow.tracking_uri={mlflow_server.tracking_uri}",
                              "mlflow.experiment=trainer-e2e", f"mlflow.parent_run_id={parent}",
                              f"mlflow.previous_run_id={ids['previous']}"),
                   world=2, log_dir=tmp_path_factory.mktemp("baseline"), env=s3_server.env())
    codes = ranks.wait(240)
    assert codes == [0, 0], ranks.tail()
    return ranks, ids


def store_for(s3_server, bucket: str):
    return s3_server.open_store(f"s3://{bucket}/runs")


def test_stage_end_to_end(baseline, s3_env, mlflow_server, e2e_bucket):
    s3_server = s3_env
    ranks, ids = baseline
    losses = ranks.losses()
    assert sorted(losses) == list(range(1, STEPS + 1)) and all(loss > 0 for loss in losses.values())

    store = store_for(s3_server, e2e_bucket)
    # checkpoints at 3 and 6, each committed by a manifest that verifies (sha256 of every file)
    assert layout.list_checkpoint_steps(store, "base", "pretrain") == [6, 3]
    step, manifest = layout.latest_complete_checkpoint(store, "base", "pretrain")
    paths = {f.path for f in manifest.files}
    assert step == 6 and {"config.json", "trainer-state/rank-00000.pt", "trainer-state/rank-00001.pt"} <= paths
    assert any(p.startswith("ds/zero_pp_rank_1") for p in paths)  # rank 1's optimizer partition

    done = layout.stage_complete(store, "base", "pretrain")
    assert done is not None and done.kind == "stage-complete" and done.step == STEPS
    export_files = {f.path for f in done.files}
    assert "config.json" in export_files and any(p.endswith(".safetensors") for p in export_files)

    # the export loads as an EVE model with the published names
    from eve_model import EveForCausalLM
    from eve_trainer.config import resolve
    from eve_trainer.model_init import fetch_dir

    folder = fetch_dir(f"s3://{e2e_bucket}/runs/base/pretrain/export", resolve("pretrain", "tiny"))
    model = EveForCausalLM.from_pretrained(folder)
    assert model.config.model_type == "eve"

    # MLflow: one run nested under the pipeline run, with params, metrics and lineage tags
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.tracking_uri)
    run = client.get_run(done.mlflow_run_id)
    tags, params = run.data.tags, run.data.params
    assert tags["mlflow.parentRunId"] == ids["parent"]
    assert (tags["eve.pipeline"], tags["eve.stage"]) == ("base", "pretrain")
    assert tags["eve.previous_run_id"] == ids["previous"] and tags["eve.init_checkpoint"] == "random-init"
    assert tags["eve.export_uri"] == f"s3://{e2e_bucket}/runs/base/pretrain/export"
    assert params["optim.lr"] == "0.001" and params["derived.world_size"] == "2"
    assert params["derived.gradient_accumulation"] == "1"
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, STEPS + 1))
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == [losses[s] for s in range(1, STEPS + 1)]
    for name in ("train/lm_loss", "train/align_loss", "train/lr", "train/grad_norm", "perf/samples_per_s",
                 "perf/tokens_per_s", "data/wait_fraction"):
        assert name in run.data.metrics, name
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert artifacts == {"checkpoints/step-3", "checkpoints/step-6"}
    versions = [v for v in client.search_model_versions("name='eve-tiny'") if v.run_id == run.info.run_id]
    assert versions and versions[0].source == tags["eve.export_uri"]


def test_sigkill_then_restart_continues_exactly(baseline, tmp_path, s3_server, e2e_bucket, dataset_url):
    """Kill one rank after a checkpoint exists; the restarted job resumes from the last complete
    checkpoint and reproduces the uninterrupted run's losses bit for bit."""
    args = train_args(dataset_url, e2e_bucket, "killed")
    first = launch(args, world=2, log_dir=tmp_path / "first", env={**s3_server.env(), "EVE_DEBUG_STEP_DELAY_S": "0.7"})
    first.wait_for(lambda e: e.get("event") == "checkpoint" and e["step"] == 3)
    first.signal(1, signal.SIGKILL)
    first.procs[1].wait()
    try:
        first.procs[0].wait(timeout=60)  # the survivor's collective fails: a retryable error
    except Exception:  # noqa: BLE001
        first.kill()
    assert first.procs[0].returncode not in (0, 2, None), first.tail()

    second = launch(args, world=2, log_dir=tmp_path / "second", env=s3_server.env())
    assert second.wait(240) == [0, 0], second.tail()
    resumed = next(e for e in second.events() if e.get("event") == "resumed")
    assert resumed["step"] >= 3
    after = second.losses()
    assert sorted(after) == list(range(resumed["step"] + 1, STEPS + 1))
    base = baseline[0].losses()
    assert after == {s: base[s] for s in after}  # exact, not approximate
    assert layout.stage_complete(store_for(s3_server, e2e_bucket), "killed", "pretrain") is not None


def test_corrupt_newest_checkpoint_falls_back(baseline, tmp_path, s3_server, e2e_bucket, dataset_url):
    """Truncate a file of the newest checkpoint: its sha256/size no longer match the manifest,
    so the run resumes from the previous complete one (and still matches the baseline)."""
    client = s3_server.client()
    src, dst = "runs/base/pretrain/checkpoints/", "runs/corrupt/pretrain/checkpoints/"
    for obj in client.list_objects_v2(Bucket=e2e_bucket, Prefix=src)["Contents"]:
        client.copy_object(Bucket=e2e_bucket, Key=dst + obj["Key"][len(src):],
                           CopySource={"Bucket": e2e_bucket, "Key": obj["Key"]})
    victim = dst + "step-6/trainer-state/rank-00001.pt"
    body = client.get_object(Bucket=e2e_bucket, Key=victim)["Body"].read()
    client.put_object(Bucket=e2e_bucket, Key=victim, Body=body[: len(body) // 2])

    ranks = launch(train_args(dataset_url, e2e_bucket, "corrupt"), world=2, log_dir=tmp_path, env=s3_server.env())
    assert ranks.wait(240) == [0, 0], ranks.tail()
    events = ranks.events()
    assert [e["step"] for e in events if e.get("event") == "checkpoint_skipped"] == [6]
    assert next(e for e in events if e.get("event") == "resumed")["step"] == 3
    base = baseline[0].losses()
    assert ranks.losses() == {s: base[s] for s in (4, 5, 6)}
    step, _ = layout.latest_complete_checkpoint(store_for(s3_server, e2e_bucket), "corrupt", "pretrain")
    assert step == 6  # rewritten, and valid again


def test_sigterm_writes_a_final_checkpoint_and_exits_143(baseline, tmp_path, s3_server, e2e_bucket, dataset_url):
    """SIGTERM to one rank (as an eviction would): all ranks agree to stop after the current
    step, write a checkpoint at that step, and exit 143. The run is the next stage (sft),
    initialised from the baseline's export in S3."""
    export = f"s3://{e2e_bucket}/runs/base/pretrain/export"
    args = train_args(dataset_url, e2e_bucket, "sigterm", "max_steps=40", "checkpoint.every_steps=100",
                      f"init_from={export}", stage="sft")
    ranks = launch(args, world=2, log_dir=tmp_path, env={**s3_server.env(), "EVE_DEBUG_STEP_DELAY_S": "0.3"})
    ranks.wait_for(lambda e: e.get("event") == "step" and e["step"] >= 2, timeout=900)
    ranks.signal(1, signal.SIGTERM)
    assert ranks.wait(120) == [143, 143], ranks.tail()
    stopped = next(e for e in ranks.events() if e.get("event") == "stopping")
    step, manifest = layout.latest_complete_checkpoint(store_for(s3_server, e2e_bucket), "sigterm", "sft")
    assert step == stopped["step"] and 2 <= step < 40
    assert layout.stage_complete(store_for(s3_server, e2e_bucket), "sigterm", "sft") is None
    # initialised from the export: the first loss is far below a random model's (ln 1024 = 6.9 + PAL)
    first = ranks.losses()[1]
    assert first < baseline[0].losses()[1] - 0.1


@pytest.fixture(scope="module")
def zero3_run(tmp_path_factory, s3_server, e2e_bucket, dataset_url) -> Ranks:
    args = train_args(dataset_url, e2e_bucket, "zero3", "deepspeed.zero_stage=3", "max_steps=3")
    ranks = launch(args, world=2, log_dir=tmp_path_factory.mktemp("zero3"), env=s3_server.env())
    assert ranks.wait(240) == [0, 0], ranks.tail()
    return ranks


def test_zero3_trains_checkpoints_and_exports_full_weights(zero3_run, s3_env, e2e_bucket):
    s3_server = s3_env
    store = store_for(s3_server, e2e_bucket)
    _, manifest = layout.latest_complete_checkpoint(store, "zero3", "pretrain")
    assert {p.path for p in manifest.files} >= {"ds/zero_pp_rank_0_mp_rank_00_model_states.pt",
                                                 "ds/zero_pp_rank_1_mp_rank_00_model_states.pt"}
    assert layout.stage_complete(store, "zero3", "pretrain") is not None
    from eve_model import EveForCausalLM, get_preset, load_eve_checkpoint
    from eve_trainer.config import resolve
    from eve_trainer.model_init import fetch_dir

    folder = fetch_dir(f"s3://{e2e_bucket}/runs/zero3/pretrain/export", resolve("pretrain", "tiny"))
    model, report = load_eve_checkpoint(folder)
    assert not report.missing and not report.unexpected  # the 16-bit gather wrote every full tensor
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in EveForCausalLM(get_preset("tiny")).parameters())


def _copy_checkpoint(s3_server, bucket: str, src: str, dst: str, step: int) -> None:
    client = s3_server.client()
    src, dst = f"runs/{src}/pretrain/checkpoints/step-{step}/", f"runs/{dst}/pretrain/checkpoints/step-{step}/"
    for obj in client.list_objects_v2(Bucket=bucket, Prefix=src)["Contents"]:
        client.copy_object(Bucket=bucket, Key=dst + obj["Key"][len(src):], CopySource={"Bucket": bucket, "Key": obj["Key"]})


def test_zero2_checkpoint_of_2_ranks_resumes_on_1(baseline, tmp_path, s3_server, e2e_bucket, dataset_url):
    """The baseline's step-3 checkpoint (2 ranks, ZeRO-2) resumes on 1 rank (gradient
    accumulation 2, same global batch) through a universal checkpoint: the LR schedule goes on
    exactly where it was, and the stage completes."""
    _copy_checkpoint(s3_server, e2e_bucket, "base", "ws2", 3)
    ranks = launch(train_args(dataset_url, e2e_bucket, "ws2"), world=1, log_dir=tmp_path, env=s3_server.env())
    assert ranks.wait(240) == [0], ranks.tail()
    events = ranks.events()
    resharded = next(e for e in events if e.get("event") == "resharded")
    assert (resharded["step"], resharded["written_by"], resharded["not_seen"]) == (3, 2, 0)
    assert resharded["delivered_before"] == 3 * 8
    lrs = {e["step"]: e["lr"] for e in events if e.get("event") == "step"}
    base = {e["step"]: e["lr"] for e in baseline[0].events() if e.get("event") == "step"}
    assert sorted(lrs) == [4, 5, 6] and lrs == {s: base[s] for s in lrs}
    store = store_for(s3_server, e2e_bucket)
    assert layout.verify(store, "ws2/pretrain/checkpoints/step-3/universal", layout.MANIFEST) is not None
    assert layout.stage_complete(store, "ws2", "pretrain") is not None


def test_zero3_checkpoint_of_2_ranks_resumes_on_1_with_the_same_weights(zero3_run, tmp_path, s3_env, e2e_bucket,
                                                                       dataset_url):
    """ZeRO-3 (parameters partitioned too): the step-3 checkpoint of 2 ranks, resumed on 1 rank
    at its last step, exports bit-identical weights to the 2-rank run's export."""
    s3_server = s3_env  # the exports are read in this process, with the server's credentials
    import torch
    from safetensors.torch import load_file

    from eve_trainer.config import resolve
    from eve_trainer.model_init import fetch_dir

    _copy_checkpoint(s3_server, e2e_bucket, "zero3", "ws3", 3)
    args = train_args(dataset_url, e2e_bucket, "ws3", "deepspeed.zero_stage=3", "max_steps=3")
    ranks = launch(args, world=1, log_dir=tmp_path, env=s3_server.env())
    assert ranks.wait(240) == [0], ranks.tail()
    assert any(e.get("event") == "resharded" for e in ranks.events())

    def weights(pipeline: str) -> dict:
        folder = fetch_dir(f"s3://{e2e_bucket}/runs/{pipeline}/pretrain/export", resolve("pretrain", "tiny"))
        out = {}
        for f in sorted(folder.glob("*.safetensors")):
            out.update(load_file(f))
        return out

    a, b = weights("zero3"), weights("ws3")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
