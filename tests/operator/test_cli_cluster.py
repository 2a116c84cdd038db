"""The `eve-platform` CLI in cluster mode, through the real CLI against the Kubernetes emulator
with the real operator reconciling: submit (dry run and for real), list, status, describe, cancel."""

from __future__ import annotations

import json

import yaml
from operator_harness import NS, Cluster, wait_for
from fixtures.stage_config import master_config
from typer.testing import CliRunner

from eve_operator.cli.main import app

runner = CliRunner()


def cli(*args: str):  # noqa: ANN201
    return runner.invoke(app, [*args, "--backend", "kubernetes", "-n", NS])


SUBMIT = ["submit", "stage=prealign", "name=clu", "output=s3://ckpt/eve", "data=s3://ckpt/caps",
          "sft.data=s3://ckpt/llava", "nodes=2", "gpus_per_node=8", "gang_scheduler=volcano", "queue=research",
          "credentials_secret=eve-s3", "sft.optim.lr=1e-5", "global_batch_size=16", "micro_batch_size=1"]


def test_dry_run_prints_the_resource_and_every_stage_job(cluster: Cluster) -> None:
    result = cli(*SUBMIT, "--dry-run")
    assert result.exit_code == 0, result.output
    pipeline, job, *later = list(yaml.safe_load_all(result.stdout))
    assert [j["metadata"]["name"] for j in later] == ["clu-pretrain", "clu-sft"]
    for previous, nxt in (("prealign", later[0]), ("pretrain", later[1])):  # each from the previous export
        assert master_config(nxt)["init_from"] == f"s3://ckpt/eve/clu/{previous}/export"
    assert "image" not in pipeline["spec"], "unset fields stay unset: the operator's defaults apply"
    assert pipeline["kind"] == "EvePipeline" and pipeline["metadata"]["name"] == "clu"
    assert pipeline["spec"]["stages"]["sft"]["overrides"] == {"optim.lr": 1e-5}
    assert job["kind"] == "PyTorchJob" and job["metadata"]["name"] == "clu-prealign"
    master = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    assert master["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] in (8, "8")
    assert job["spec"]["runPolicy"]["schedulingPolicy"]["minAvailable"] == 2
    assert cluster.pipeline("clu") is None, "a dry run must create nothing"


def test_submit_list_status_describe_cancel(cluster: Cluster, operator, output: str) -> None:  # noqa: ANN001
    result = cli("submit", "stage=prealign", "name=clu", f"output={output}", "gpus_per_node=0",
                 "queue=research", "max_attempts=2")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[0] == "clu"
    wait_for(lambda: cluster.status("clu").get("currentStage") == "prealign", what="operator picks it up")
    listing = cli("list")
    assert "clu" in listing.output and "kubernetes" in listing.output
    status = json.loads(cli("status", "clu", "-o", "json").output)
    assert status["stages"][0]["jobName"] == "clu-prealign"
    described = cli("describe", "clu")
    assert "clu-prealign" in described.output and "Events" in described.output
    again = cli("submit", "stage=prealign", "name=clu", f"output={output}")
    assert again.exit_code == 2
    assert "already exists" in again.output
    cancelled = cli("cancel", "clu")
    assert cancelled.exit_code == 0, cancelled.output
    wait_for(lambda: cluster.pipeline("clu") is None, what="pipeline deleted")
    assert cli("status", "clu").exit_code == 3
