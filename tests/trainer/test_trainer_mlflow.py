"""MLflow as a user reads it, against the session's real server.

- The logger against a server that is unreachable at first: training calls never block or
  fail, and everything logged meanwhile arrives once the server answers.
- Two stages tracked end to end: run tree, names, tags, grouped metrics that continue across
  stages, dataset inputs, the config artifact, one registered model with stage aliases, and a
  registered export that loads and generates."""

from __future__ import annotations

import time
from urllib.parse import urlparse

import pytest
from support.services import free_port
from support.tcp_proxy import TcpForwarder

from eve_trainer.metrics import MLflowLogger


def test_metrics_logged_during_an_outage_arrive_later(mlflow_server):
    from mlflow.tracking import MlflowClient

    target = urlparse(mlflow_server.tracking_uri)
    proxy = TcpForwarder(free_port(), (target.hostname, target.port))
    logger = MLflowLogger(tracking_uri=f"http://127.0.0.1:{proxy.port}", experiment="outage", run_name="p/sft",
                          tags={"eve.stage": "sft"}, system_metrics=False, max_backoff_s=0.5)
    try:
        t0 = time.monotonic()
        logger.log_params({"optim": {"lr": 0.001}})
        for step in range(1, 6):
            logger.log_metrics({"loss": 1.0 / step}, step=step)
        assert time.monotonic() - t0 < 0.5  # never blocks the training loop
        assert logger.wait_for_run(1.5) is None  # the server is down: no run yet
        proxy.start()
        run_id = logger.wait_for_run(30)
        assert run_id is not None
        logger.close("FINISHED", timeout_s=30)
        client = MlflowClient(mlflow_server.tracking_uri)
        run = client.get_run(run_id)
        history = sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.step)
        assert [(m.step, m.value) for m in history] == [(s, 1.0 / s) for s in range(1, 6)]
        assert run.data.params["optim.lr"] == "0.001" and run.data.tags["eve.stage"] == "sft"
        assert run.info.status == "FINISHED"
    finally:
        proxy.stop()


# -- two stages tracked end to end --------------------------------------------------------------
# prealign -> pretrain on one rank each, nested under a pipeline run that the operator's tracking
# module creates, against the session's real MLflow server and S3. The tests read what a user of
# the UI sees: the run tree, names, tags, metrics, dataset inputs, artifacts and the registry.

PIPELINE, MODEL = "mlf", "eve-mlf-test"
STAGE_STEPS = 3


def _rest(tracking_uri: str, path: str, body: dict | None = None, **query: str) -> dict:
    """MLflow's REST API, as the UI calls it."""
    import json
    import urllib.parse
    import urllib.request

    url = f"{tracking_uri}/api/2.0/mlflow/{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def two_stages(tmp_path_factory, s3_server, mlflow_server, e2e_bucket, dataset_url) -> dict:
    from support.eve_trainer_harness import launch

    from eve_contract import layout
    from eve_operator.tracking import create_pipeline_run

    uri = mlflow_server.tracking_uri
    parent = create_pipeline_run(uri, "mlf-e2e", PIPELINE, {"eve.pipeline": PIPELINE})
    store = s3_server.open_store(f"s3://{e2e_bucket}/runs")
    common = [f"data.urls=[{dataset_url}]", f"output=s3://{e2e_bucket}/runs", f"pipeline={PIPELINE}",
              f"max_steps={STAGE_STEPS}", "progress=json", "data.num_workers=1", "global_batch_size=4",
              f"mlflow.tracking_uri={uri}", "mlflow.experiment=mlf-e2e", f"mlflow.parent_run_id={parent}",
              f"mlflow.registered_model={MODEL}", "mlflow.system_metrics_interval_s=1",
              f"storage.endpoint_url={s3_server.endpoint_url}"]
    runs, manifests = {}, {}
    previous = None
    for stage in ("prealign", "pretrain"):
        extra = [] if previous is None else [f"init_from=s3://{e2e_bucket}/runs/{PIPELINE}/prealign/export",
                                             f"mlflow.previous_run_id={previous}"]
        ranks = launch([stage, *common, *extra], world=1, log_dir=tmp_path_factory.mktemp(stage),
                       env=s3_server.env())
        assert ranks.wait(240) == [0], ranks.tail()
        manifests[stage] = layout.stage_complete(store, PIPELINE, stage)
        previous = runs[stage] = manifests[stage].mlflow_run_id
    return {"parent": parent, "runs": runs, "manifests": manifests, "store": store}


@pytest.mark.slow
def test_run_tree_names_and_experiment_kind(two_stages, mlflow_server):
    uri = mlflow_server.tracking_uri
    exp = _rest(uri, "experiments/get-by-name", experiment_name="mlf-e2e")["experiment"]
    tags = {t["key"]: t["value"] for t in exp.get("tags", [])}
    assert tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on model training

    found = _rest(uri, "runs/search", {"experiment_ids": [exp["experiment_id"]],
                                       "filter": f"tags.mlflow.parentRunId = '{two_stages['parent']}'"})["runs"]
    by_name = {r["info"]["run_name"]: r for r in found}
    assert set(by_name) == {"prealign", "pretrain"}  # stage runs are named by stage
    for stage, run in by_name.items():
        assert run["info"]["run_id"] == two_stages["runs"][stage] and run["info"]["status"] == "FINISHED"
        rtags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        assert (rtags["eve.pipeline"], rtags["eve.stage"], rtags["eve.run_kind"]) == (PIPELINE, stage, "stage")
        assert rtags["eve.manifest_sha256"]
    pre_tags = {t["key"]: t["value"] for t in by_name["pretrain"]["data"]["tags"]}
    assert pre_tags["eve.previous_run_id"] == two_stages["runs"]["prealign"]
    assert pre_tags["eve.init_checkpoint"].endswith(f"/{PIPELINE}/prealign/export")


@pytest.mark.slow
def test_metrics_group_and_continue_across_stages(two_stages, mlflow_server):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.tracking_uri)
    pre, post = (two_stages["runs"][s] for s in ("prealign", "pretrain"))
    metrics = client.get_run(post).data.metrics
    for name in ("train/loss", "train/lm_loss", "train/align_loss", "train/lr", "train/grad_norm",
                 "perf/tokens_per_s", "perf/samples_per_s", "perf/padding_fraction", "perf/step_time_s",
                 "data/wait_fraction", "progress/global_step", "progress/tokens_seen", "progress/stage_step"):
        assert name in metrics, name
    assert "loss" not in metrics  # no ungrouped duplicates

    def history(run_id, key):
        return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]

    # the x axis is the global step: pretrain continues where prealign ended
    assert [s for s, _ in history(pre, "train/loss")] == [1, 2, 3]
    assert [s for s, _ in history(post, "train/loss")] == [4, 5, 6]
    assert [v for _, v in history(post, "progress/stage_step")] == [1, 2, 3]
    tokens = [v for _, v in history(pre, "progress/tokens_seen") + history(post, "progress/tokens_seen")]
    assert tokens == sorted(tokens) and len(set(tokens)) == 6
    extra = two_stages["manifests"]["pretrain"].extra
    assert extra["global_step"] == 6 and extra["tokens_seen"] == tokens[-1]
    # system metrics arrive (CPU and memory here; GPU ones when nvidia-ml-py finds a GPU)
    assert any(k.startswith("system/") for k in client.get_run(pre).data.metrics)


@pytest.mark.slow
def test_dataset_inputs_and_config_artifact(two_stages, mlflow_server, s3_server, dataset_url):
    import hashlib
    import json
    from pathlib import Path
    from urllib.parse import urlparse


    run = _rest(mlflow_server.tracking_uri, "runs/get", run_id=two_stages["runs"]["pretrain"])["run"]
    (inp,) = run["inputs"]["dataset_inputs"]
    index = s3_server.open_store(dataset_url).get_bytes("index.json")
    assert inp["dataset"]["digest"] == hashlib.sha256(index).hexdigest()[:32]
    assert json.loads(inp["dataset"]["source"]) == {"uri": dataset_url}
    assert json.loads(inp["dataset"]["profile"])["num_samples"] == 64
    assert {t["key"]: t["value"] for t in inp["tags"]} == {"mlflow.data.context": "train"}

    # the resolved config as a JSON artifact, in the server's artifact store
    root = Path(urlparse(run["info"]["artifact_uri"]).path)
    config = json.loads((root / "config" / "resolved-config.json").read_text())
    assert config["stage"] == "pretrain" and config["max_steps"] == STAGE_STEPS
    assert config["init_from"].endswith("/prealign/export")
    assert (root / "export" / "stage-complete.json").is_file()


@pytest.mark.slow
def test_one_registered_model_with_stage_aliases(two_stages, mlflow_server):
    import hashlib

    from eve_contract import layout
    from eve_contract.storage import join

    model = _rest(mlflow_server.tracking_uri, "registered-models/get", name=MODEL)["registered_model"]
    aliases = {a["alias"]: a["version"] for a in model["aliases"]}
    assert aliases == {"prealign": "1", "pretrain": "2"}  # and MLflow's own @latest = the newest
    store = two_stages["store"]
    for version, stage in (("1", "prealign"), ("2", "pretrain")):
        mv = _rest(mlflow_server.tracking_uri, "model-versions/get", name=MODEL, version=version)["model_version"]
        tags = {t["key"]: t["value"] for t in mv["tags"]}
        prefix = layout.export_prefix(PIPELINE, stage)
        blob = store.get_bytes(join(prefix, layout.STAGE_COMPLETE))
        assert mv["source"] == f"{store.url}/{prefix}" and mv["run_id"] == two_stages["runs"][stage]
        assert tags["eve.manifest_sha256"] == hashlib.sha256(blob).hexdigest()  # the verified export
        assert (tags["eve.stage"], tags["eve.pipeline"]) == (stage, PIPELINE)


@pytest.mark.slow
def test_registered_export_loads_and_generates(two_stages, mlflow_server, s3_server, tmp_path, monkeypatch):
    import json
    from pathlib import Path

    import mlflow
    import torch
    from PIL import Image

    from eve_model.inference import generate_text, load_export, tokenize_prompt

    manifest = two_stages["manifests"]["pretrain"]
    files = {f.path for f in manifest.files}
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"} <= files

    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_server.endpoint_url)
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    mlflow.set_tracking_uri(mlflow_server.tracking_uri)
    folder = mlflow.artifacts.download_artifacts(f"models:/{MODEL}@latest", dst_path=str(tmp_path))
    assert json.loads((Path(folder) / "stage-complete.json").read_text())["stage"] == "pretrain"
    model, tokenizer, processor = load_export(folder)
    prompt = "<image>\nA photo of"
    ids = tokenize_prompt(tokenizer, prompt)
    assert ids[0] == tokenizer.bos_token_id and ids.count(-200) == 1
    torch.manual_seed(0)
    image = Image.new("RGB", (40, 24), (200, 30, 30))
    text = generate_text(model, tokenizer, processor, prompt, image, max_new_tokens=4)
    assert isinstance(text, str)
    out = model.generate(input_ids=torch.tensor([ids]), images=processor(image)[0][None],
                         max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 4)


def test_failed_attempt_logs_reach_the_stage_run(mlflow_server, tmp_path):
    """What the local runner does when an attempt fails: the rank logs go to the stage run."""
    from mlflow.tracking import MlflowClient

    from eve_operator.backends.local import upload_rank_logs
    from eve_operator.tracking import create_pipeline_run

    uri = mlflow_server.tracking_uri
    parent = create_pipeline_run(uri, "mlf-logs", "p", {"eve.pipeline": "p"})
    stage_run = MLflowLogger(tracking_uri=uri, experiment="mlf-logs", run_name="sft", parent_run_id=parent,
                             tags={"eve.stage": "sft", "eve.pipeline": "p"}, system_metrics=False)
    run_id = stage_run.wait_for_run(30)
    stage_run.log_text("Traceback ...\nRuntimeError: boom\n", "logs/rank-0-error.txt")
    stage_run.close("FAILED")
    logs = tmp_path / "attempt-1"
    logs.mkdir()
    for rank in range(2):
        (logs / f"rank-{rank}.log").write_text(f"rank {rank} says goodbye\n")
    assert upload_rank_logs(uri, "mlf-logs", parent, "sft", str(logs), 1) == run_id
    assert upload_rank_logs(uri, "mlf-logs", parent, "pretrain", str(logs), 1) is None  # no such stage run
    client = MlflowClient(uri)
    assert {a.path for a in client.list_artifacts(run_id, "logs/attempt-1")} == {
        "logs/attempt-1/rank-0.log", "logs/attempt-1/rank-1.log"}
    assert client.download_artifacts(run_id, "logs/attempt-1/rank-1.log", str(tmp_path / "dl"))
    assert client.get_run(run_id).info.status == "FAILED"
    # the experiment a trainer creates opens on model training
    assert client.get_experiment_by_name("mlf-logs").tags["mlflow.experimentKind"] == "custom_model_development"


def test_local_store_keeps_artifacts_beside_the_database(tmp_path, monkeypatch):
    """The local default (sqlite:///<home>/mlflow.db): artifacts under <home>/mlartifacts, nothing in
    the current directory."""
    from mlflow.tracking import MlflowClient

    from eve_contract.tracking_names import artifact_location
    from eve_trainer.metrics import get_or_create_experiment

    home, cwd = tmp_path / ".eve-platform", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    uri = f"sqlite:///{home / 'mlflow.db'}"
    assert artifact_location(uri) == (home / "mlartifacts").as_uri()
    assert artifact_location("http://mlflow:5000") is None  # a server decides (the chart's: S3)
    client = MlflowClient(uri)
    exp_id = get_or_create_experiment(client, "local", uri)
    assert get_or_create_experiment(client, "local", uri) == exp_id
    run_id = client.create_run(exp_id, run_name="prealign").info.run_id
    client.log_text(run_id, "{}", "config/resolved-config.json")
    assert (home / "mlartifacts" / run_id / "artifacts" / "config" / "resolved-config.json").is_file()
    assert list(cwd.iterdir()) == []
