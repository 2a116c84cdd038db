"""`eve-platform eval` end to end on the tiny export: on this machine (one process, then two ranks
from a models:/ reference) and on the emulated cluster as a PyTorchJob of 2 pods x 2 ranks. The
merged answers must be identical to the single-process ones; the scores reach the export's stage
run and its registered version in MLflow, and `describe` shows them.

Kept short: 6 POPE-format questions, 4 new tokens.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from support.eval_helpers import PIPELINE, STAGE, make_pope_bench, make_tiny_export, upload_folder

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
TOKENS = "max_new_tokens=4"
MODEL = "eve-evaltest"


def cli(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eve_operator.cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def _read(url: str, key: str, endpoint: str) -> bytes:
    from eve_contract.storage import open_store

    return open_store(url, endpoint_url=endpoint).get_bytes(key)


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory, mlflow_server: Any, s3_server: Any) -> Iterator[dict[str, Any]]:
    """A tiny export in S3 whose stage-complete.json names a real stage run, registered as a version."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in s3_server.env().items():  # this process reads and writes S3 too
            mp.setenv(key, value)
        yield _material(tmp_path_factory, mlflow_server, s3_server)


def _material(tmp_path_factory: pytest.TempPathFactory, mlflow_server: Any, s3_server: Any) -> dict[str, Any]:
    import hashlib

    from mlflow.tracking import MlflowClient

    from eve_contract import layout
    from eve_trainer.registry import ExportVersion, register_export

    tmp = tmp_path_factory.mktemp("eval")
    client = MlflowClient(mlflow_server.tracking_uri)
    experiment = client.create_experiment("eval-e2e")
    run_id = client.create_run(experiment, run_name=STAGE, tags={"eve.stage": STAGE}).info.run_id
    export = make_tiny_export(tmp / "export", run_id=run_id)
    questions = make_pope_bench(tmp / "pope")
    bucket = s3_server.make_bucket("eval-e2e")
    export_url = f"s3://{bucket}/eve/{PIPELINE}/{STAGE}/export"
    upload_folder(export, export_url, s3_server.endpoint_url)
    upload_folder(tmp / "pope", f"s3://{bucket}/bench/pope", s3_server.endpoint_url)
    blob = (export / layout.STAGE_COMPLETE).read_bytes()
    register_export(client, ExportVersion(MODEL, STAGE, PIPELINE, export_url, hashlib.sha256(blob).hexdigest(), 7),
                    run_id=run_id)
    env = dict(os.environ, EVE_PLATFORM_HOME=str(tmp / "home"), OMP_NUM_THREADS="1", **s3_server.env())
    env.pop("EVE_PLATFORM_BACKEND", None)
    env.pop("KUBECONFIG", None)
    return {"tmp": tmp, "export": export_url, "bench": tmp / "pope", "bench_url": f"s3://{bucket}/bench/pope",
            "bucket": bucket, "questions": questions, "run_id": run_id, "env": env, "client": client,
            "endpoint": s3_server.endpoint_url}


@pytest.fixture(scope="module")
def single(material: dict[str, Any], mlflow_server: Any) -> dict[str, Any]:
    """One process: the reference's way, the answers every other run must equal."""
    result = cli("eval", material["export"], "bench=pope", f"pope.data={material['bench']}", TOKENS,
                 f"endpoint_url={material['endpoint']}", f"tracking_uri={mlflow_server.tracking_uri}", "--local",
                 env=material["env"])
    assert result.returncode == 0, result.stderr[-4000:]
    out = material["export"].removesuffix("/export") + "/eval"   # the default: beside the export
    return {"result": result, "answers": _read(out, "pope/answers.jsonl", material["endpoint"]).decode(),
            "scores": json.loads(_read(out, "pope/scores.json", material["endpoint"]))}


def test_local_single_process_answers_scores_and_mlflow(material: dict[str, Any], single: dict[str, Any]) -> None:
    lines = [json.loads(line) for line in single["answers"].splitlines()]
    assert [a["question_id"] for a in lines] == [q["question_id"] for q in material["questions"]]
    assert set(lines[0]) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
    assert lines[0]["prompt"] == material["questions"][0]["text"] and lines[0]["model_id"] == f"{PIPELINE}/{STAGE}"
    scores = single["scores"]["scores"]
    assert {"accuracy", "precision", "recall", "f1", "yes_ratio", "random/f1", "adversarial/f1"} <= set(scores)
    assert scores["n"] == 6
    assert "[eve-eval] pope: 6/6 questions on rank 0 of 1" in single["result"].stderr   # progress lines
    assert "pope" in single["result"].stdout and "f1" in single["result"].stdout       # the scores table
    # MLflow: metrics and artifacts on the export's stage run, tags on its registered version
    client = material["client"]
    run = client.get_run(material["run_id"])
    assert run.data.metrics["eval/pope/f1"] == pytest.approx(scores["f1"])
    assert {a.path for a in client.list_artifacts(material["run_id"], "eval/pope")} >= {
        "eval/pope/answers.jsonl", "eval/pope/scores.json"}
    version = client.get_model_version_by_alias(MODEL, STAGE)
    assert float(version.tags["eval/pope/f1"]) == pytest.approx(scores["f1"], rel=1e-5)


def test_local_two_ranks_from_the_registry_give_the_same_answers(material: dict[str, Any], single: dict[str, Any],
                                                                   mlflow_server: Any) -> None:
    out = material["tmp"] / "eval-2"
    result = cli("eval", f"models:/{MODEL}@{STAGE}", "bench=pope", f"pope.data={material['bench']}", TOKENS,
                 "batch_size=2", f"output={out}", "nproc_per_node=2", f"endpoint_url={material['endpoint']}", f"tracking_uri={mlflow_server.tracking_uri}",
                 "--local", env=material["env"])
    assert result.returncode == 0, result.stderr[-4000:]
    assert "rank 1 of 2" in result.stderr
    assert (out / "pope" / "answers.jsonl").read_text() == single["answers"]
    assert not list((out / "pope" / "parts").glob("*")), "the rank parts are merged and removed"


def test_user_errors_exit_2_with_the_key_named(material: dict[str, Any]) -> None:
    env = material["env"]
    unknown = cli("eval", material["export"], "bench=popes", "--local", env=env)
    assert unknown.returncode == 2 and "'popes' is not a benchmark" in unknown.stderr
    no_data = cli("eval", material["export"], "bench=pope", "--local", env=env)
    assert no_data.returncode == 2 and "pope.data=" in no_data.stderr
    missing = cli("eval", material["export"], f"endpoint_url={material['endpoint']}", "bench=pope", f"pope.data={material['tmp'] / 'none'}",
                  "mlflow=false", f"output={material['tmp'] / 'x'}", "--local", env=env)
    assert missing.returncode == 2 and "questions.jsonl not found" in missing.stderr, missing.stderr[-2000:]
    assert "Traceback" not in missing.stderr


# -- the emulated cluster -------------------------------------------------------------------------------------


NS = "ml"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, material: dict[str, Any], s3_server: Any):  # noqa: ANN201
    from support.cluster_emulator import ClusterEmulator
    from support.kube_emulator import Emulator

    tmp = tmp_path_factory.mktemp("eval-cluster")
    emulator = Emulator().start()
    kubeconfig = emulator.write_kubeconfig(tmp / "kubeconfig", NS)
    cluster = ClusterEmulator(emulator, kubeconfig, tmp / "node", interval_s=0.25)
    cluster.core.create_namespaced_secret(NS, {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds", "namespace": NS},
        "data": {k: base64.b64encode(s3_server.env()[k].encode()).decode()
                 for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}})
    try:
        cluster.start()
        yield cluster, kubeconfig
    finally:
        cluster.stop()
        emulator.stop()


def _log(emulated: Any, pod: str) -> str:
    import kubernetes

    try:
        return emulated.log(pod, NS)
    except kubernetes.client.ApiException as err:  # never started
        return f"{pod}: no log ({err.status})"


def test_cluster_two_pods_of_two_ranks_give_the_single_process_answers(
        material: dict[str, Any], single: dict[str, Any], cluster: Any, s3_server: Any, mlflow_server: Any) -> None:
    emulated, kubeconfig = cluster
    endpoint, bucket = material["endpoint"], material["bucket"]
    env = dict(material["env"], KUBECONFIG=str(kubeconfig), **s3_server.env())
    result = cli("eval", material["export"], "bench=pope", f"pope.data={material['bench_url']}", TOKENS, "batch_size=2",
                 f"output=s3://{bucket}/cluster-eval",
                 "name=eval-pope", "nodes=2", "nproc_per_node=2", "gpus_per_node=0", "gang_scheduler=none",
                 f"endpoint_url={endpoint}", "credentials_secret=s3-creds",
                 f"tracking_uri={mlflow_server.tracking_uri}", "--backend", "kubernetes", "-n", NS, env=env, timeout=420)
    logs = {p: _log(emulated, p) for p in emulated.pods(NS, "eval-pope")}
    assert result.returncode == 0, result.stderr[-3000:] + "\n".join(v[-2000:] for v in logs.values())
    assert set(logs) == {"eval-pope-master-0", "eval-pope-worker-0"}
    worker = logs["eval-pope-worker-0"]                          # 2 pods x 2 ranks: world 4
    assert "starting ranks 2-3 of world size 4" in worker, worker
    assert "rank 2 answered 2 question(s)" in worker and "rank 3 of 4 has no questions" in worker  # ceil(6/4) = 2
    assert "PyTorchJob" in result.stderr and "Succeeded" in result.stderr
    from eve_contract.storage import open_store

    store = open_store(f"s3://{bucket}/cluster-eval", endpoint_url=endpoint)
    assert store.get_bytes("pope/answers.jsonl").decode() == single["answers"]
    assert json.loads(store.get_bytes("pope/scores.json"))["scores"] == single["scores"]["scores"]
