"""Every key does what it says or is refused, naming the key (issue 24): through the real CLI.

Each case of the issue's "Why" runs `eve-platform submit ... --dry-run` in-process (typer's
CliRunner) and either works or exits 2 with one line naming the key; no traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures.stage_config import master_config
from typer.testing import CliRunner

from eve_operator.cli.main import app

runner = CliRunner()
#: A cluster pipeline whose tiny batch splits over its 1 x 1 ranks: what every case starts from.
KUBE = ["--backend", "kubernetes", "--dry-run", "-o", "json"]
BASE = ["stage=prealign", "output=s3://bkt/eve", "gpus_per_node=0"]


@pytest.fixture(autouse=True)
def _no_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EVE_PLATFORM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))  # no kube context
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("EVE_PLATFORM_BACKEND", raising=False)
    return tmp_path


def run(*args: str) -> Any:
    return runner.invoke(app, list(args))


def rendered(result: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the EvePipeline, its stage jobs) of a `--dry-run -o json` on the Kubernetes side."""
    assert result.exit_code == 0, result.output
    pipeline, *jobs = json.loads(result.stdout)
    return pipeline, jobs


REFUSED = [
    # keys the pipeline sets itself: refused as overrides, naming the key to use instead
    (["pipeline=x"], "use name="),
    (["storage.region=eu-west-1"], "use region="),
    (["storage.endpoint_url=http://s3:8333"], "use endpoint_url="),
    (["mlflow.tracking_uri=http://mlflow:5000"], "use tracking_uri="),
    (["mlflow.experiment=x"], "use experiment="),
    (["mlflow.parent_run_id=abc"], "mlflow.parent_run_id"),
    (["mlflow.previous_run_id=abc"], "mlflow.previous_run_id"),
    (["data.urls=[s3://bkt/d]"], "use data="),
    (["sft.output=s3://bkt/o"], "use output="),
    (["sft.init_from=s3://bkt/m"], "use init_from="),
    (["sft.stage=prealign"], "sft.stage"),
    (["pretrain.data.urls=[s3://bkt/d]"], "pretrain.data.urls"),
    # a key given twice
    (["nodes=4", "nodes=2"], "given twice (nodes=4, then nodes=2)"),
    (["optim.lr=1e-4", "optim.lr=2e-4"], "given twice"),
    (["sft.optim.lr=1", "sft.optim.lr=2"], "given twice"),
    # a per-stage key for a stage that does not run
    (["hd=true", "until=pretrain", "sft-hd.optim.lr=1"], "stages.sft-hd: this pipeline runs prealign -> pretrain"),
    # values that cannot work
    (["output=not-a-url"], "output='not-a-url'"),
    (["output=s3://"], "no bucket"),
    (["output=s3:///path"], "no bucket"),
    (["output=http://x/y"], "scheme http://"),
    (["output=s3://Bad_Bucket/x"], "not a valid S3 bucket name"),
    (["init_from=notaurl"], "init_from='notaurl'"),
    (["init_from=s3://bkt"], "init_from='s3://bkt'"),
    (["endpoint_url=notaurl"], "endpoint_url="),
    (["optim.lr=inf"], "optim.lr='inf': expects a finite number"),
    (["optim.lr=nan"], "optim.lr='nan'"),
    (["optim.lr=-1"], "optim.lr"),
    (["optim.eps=0"], "optim.eps"),
    (["max_steps=1.5"], "max_steps='1.5': expects a whole number"),
    (["model.compile=yes"], "model.compile='yes': expects true or false"),
    (["optim.betas=0.9"], "optim.betas"),
    (["queue=Bad_Queue"], "queue"),
    (["queue="], "queue= is empty"),
    (["priority_class=Bad_Prio"], "priority_class"),
    (["priority_class="], "priority_class= is empty"),
    (["credentials_secret=Bad_Secret!"], "credentials_secret"),
    (["credentials_secret="], "credentials_secret= is empty"),
    (["image=Bad Image:!!"], "image='Bad Image:!!'"),
    (["gpu_product=a b"], "gpu_product='a b'"),
    (["cpu=lots"], "cpu='lots'"),
    (["memory=12 GB"], "memory='12 GB'"),
    (["data.tokenizer=builtin:nope"], "data.tokenizer='builtin:nope': is not a builtin tokenizer"),
    (["data.tokenizer=[a]"], "data.tokenizer='[a]'"),
    (["data=s3://bkt/x\ny"], "control character"),
    # messages that name the key and say what is allowed
    (["name="], "name= is empty; a pipeline name is a DNS-1035 label"),
    (["micro_batch_size=1024"], "set micro_batch_size=8 (global_batch_size / world_size)"),
]


@pytest.mark.parametrize(("args", "expected"), REFUSED, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_what_cannot_work_is_refused_naming_the_key(args: list[str], expected: str) -> None:
    given = {a.split("=", 1)[0] for a in args}
    result = run("submit", *(w for w in BASE if w.split("=", 1)[0] not in given), *args, *KUBE)
    assert result.exit_code == 2, result.output
    assert expected in result.output, result.output
    assert "Traceback" not in result.output and result.output.count("error:") == 1


def test_a_bad_namespace_is_refused_naming_the_option() -> None:
    result = run("submit", *BASE, "-n", "Bad_NS", *KUBE)
    assert result.exit_code == 2 and "--namespace/-n 'Bad_NS'" in result.output, result.output


def test_key_suggestions_are_listed_once() -> None:
    result = run("submit", *BASE, "stagee=sft", *KUBE)
    assert result.exit_code == 2 and "did you mean stage, " in result.output, result.output
    assert "stage, stage" not in result.output


def test_values_reach_the_job_unchanged() -> None:
    """Strings stay strings, a URL with ': ', ' #' or a comma stays one URL, lists come only
    from list syntax: as the trainer will read them from the job."""
    result = run("submit", *BASE, "experiment=2024", "queue=yes", "credentials_secret=123",
                 "mlflow.registered_model=true", "data=s3://bkt/a: b #c,d", "sft.data=[s3://bkt/x,s3://bkt/y]",
                 "model.teacher_path=/models/clip: 336 #x", "optim.betas=[0.9,0.95]", *KUBE)
    pipeline, jobs = rendered(result)
    spec = pipeline["spec"]
    assert spec["mlflow"]["experiment"] == "2024" and spec["scheduling"]["queue"] == "yes"
    assert spec["s3"]["credentialsSecret"] == "123"
    first, *_, sft = (master_config(j) for j in jobs)
    assert first["mlflow"]["experiment"] == "2024" and first["mlflow"]["registered_model"] == "true"
    assert first["data"]["urls"] == ["s3://bkt/a: b #c,d"]
    assert sft["data"]["urls"] == ["s3://bkt/x", "s3://bkt/y"]
    assert first["model"]["teacher_path"] == "/models/clip: 336 #x" and first["optim"]["betas"] == [0.9, 0.95]


def test_new_resource_keys_reach_the_pod() -> None:
    result = run("submit", *BASE, "cpu=12", "memory=96Gi", "shm_size=8Gi", "backoff_limit=1",
                 "schedule_timeout_s=600", "region=eu-west-1", *KUBE)
    pipeline, jobs = rendered(result)
    assert pipeline["spec"]["resources"] == {"gpusPerNode": 0, "cpu": "12", "memory": "96Gi", "shmSize": "8Gi"}
    assert pipeline["spec"]["backoffLimit"] == 1 and pipeline["spec"]["s3"]["region"] == "eu-west-1"
    pod = jobs[0]["spec"]["pytorchReplicaSpecs"]["Master"]
    container = pod["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"]["cpu"] == "12" and container["resources"]["requests"]["memory"] == "96Gi"
    shm = next(v for v in pod["template"]["spec"]["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["sizeLimit"] == "8Gi"
    assert jobs[0]["spec"]["runPolicy"]["backoffLimit"] == 1
    assert jobs[0]["spec"]["runPolicy"]["schedulingPolicy"]["scheduleTimeoutSeconds"] == 600
    assert master_config(jobs[0])["storage"]["region"] == "eu-west-1"


def test_a_multi_node_dry_run_renders_the_cluster_objects_without_a_kube_context() -> None:
    result = run("submit", "stage=prealign", "preset=eve-7b", "nodes=4", "output=s3://bkt/eve",
                 "init_from=s3://bkt/models/vicuna-7b-v1.5", "model.teacher_path=s3://bkt/models/clip-vit-l-336",
                 "data=s3://bkt/eve-cap", "--dry-run", "-o", "json")
    pipeline, jobs = rendered(result)
    assert "nodes=4 needs a cluster and there is no kube context" in result.output
    assert pipeline["metadata"] == {"name": "eve-7b", "namespace": "default"}  # not eve-eve-7b
    assert [j["metadata"]["name"] for j in jobs] == ["eve-7b-prealign", "eve-7b-pretrain", "eve-7b-sft"]
    assert jobs[0]["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 3
    # submitting for real still needs the cluster: no local fallback that cannot run it
    result = run("submit", "stage=prealign", "preset=eve-7b", "nodes=4", "output=s3://bkt/eve",
                 "init_from=s3://bkt/models/vicuna-7b-v1.5", "model.teacher_path=s3://bkt/models/clip-vit-l-336")
    assert result.exit_code == 2 and "nodes=4 needs a cluster" in result.output


def test_a_mid_chain_start_says_which_export_must_exist(_no_cluster: Path) -> None:
    result = run("submit", "stage=pretrain", *BASE[1:], *KUBE)
    rendered(result)
    assert ("stage pretrain starts from s3://bkt/eve/eve-tiny/prealign/export, the export of stage prealign of "
            "pipeline eve-tiny, which must already exist: run `eve-platform submit stage=prealign name=eve-tiny") \
        in result.output
    # the local backend reads its store: no export there, so submit refuses, with the command to run first
    result = run("submit", "stage=pretrain", "name=mid", f"output=file://{_no_cluster / 'store'}", "--local")
    assert result.exit_code == 2, result.output
    assert "and there is none: run `eve-platform submit stage=prealign name=mid" in result.output
    assert not (_no_cluster / "home" / "pipelines" / "mid").exists()


def test_submit_f_takes_an_evepipeline_with_pairs_on_top(tmp_path: Path) -> None:
    manifest = {"apiVersion": "eve-platform.io/v1alpha1", "kind": "EvePipeline",
                "metadata": {"name": "from-file", "namespace": "team-a"},
                "spec": {"preset": "tiny", "start": "prealign", "until": "pretrain", "output": "s3://bkt/eve",
                         "initFrom": "s3://bkt/models/llama", "resources": {"gpusPerNode": 0, "shmSize": "2Gi"},
                         "podTemplate": {"imagePullSecrets": [{"name": "regcred"}],
                                         "serviceAccountName": "trainer"},
                         "overrides": {"optim.lr": 1e-3}}}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(manifest))
    result = run("submit", "-f", str(path), "init_from=s3://bkt/models/vicuna", "optim.weight_decay=0.1", *KUBE)
    pipeline, jobs = rendered(result)
    assert pipeline["metadata"] == {"name": "from-file", "namespace": "team-a"}
    spec = pipeline["spec"]
    assert spec["initFrom"] == "s3://bkt/models/vicuna" and spec["podTemplate"]["serviceAccountName"] == "trainer"
    assert spec["overrides"] == {"optim.lr": 1e-3, "optim.weight_decay": 0.1}
    assert [j["metadata"]["name"] for j in jobs] == ["from-file-prealign", "from-file-pretrain"]
    pod = jobs[0]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}] and pod["serviceAccountName"] == "trainer"
    assert master_config(jobs[0])["init_from"] == "s3://bkt/models/vicuna"
    # just the spec works too, and the file goes through the same checks as the pairs
    path.write_text(yaml.safe_dump({**manifest["spec"], "overrides": {"output": "s3://bkt/other"}}))
    result = run("submit", "-f", str(path), *KUBE)
    assert result.exit_code == 2 and "overrides.output is set by the pipeline" in result.output, result.output
    path.write_text(yaml.safe_dump({**manifest["spec"], "image": "Bad Image"}))
    result = run("submit", "-f", str(path), *KUBE)
    assert result.exit_code == 2 and "image='Bad Image'" in result.output, result.output
    path.write_text("kind: Deployment\n")
    result = run("submit", "-f", str(path), *KUBE)
    assert result.exit_code == 2 and "expected an EvePipeline" in result.output


def test_config_show_takes_what_submit_takes() -> None:
    result = run("config", "show", "stage=sft", "preset=eve-7b", "sft.optim.lr=1e-5", "experiment=2024",
                 "-o", "json")
    assert result.exit_code == 0, result.output
    cfg = json.loads(result.stdout)
    assert cfg["optim"]["lr"] == 1e-5 and cfg["mlflow"]["experiment"] == "2024" and cfg["pipeline"] == "eve-7b"
    result = run("config", "show", "stage=prealign", "sft.optim.lr=1e-5", "--stage", "sft", "-o", "json")
    assert json.loads(result.stdout)["optim"]["lr"] == 1e-5
    result = run("config", "show", "stage=prealign", "output=s3://")
    assert result.exit_code == 2 and "output='s3://'" in result.output
