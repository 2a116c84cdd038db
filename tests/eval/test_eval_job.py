"""The evaluation job on a cluster, as data: the same job machinery as a stage, `eve-eval` as its command."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from eve_operator.cli.main import app

WORDS = ["eval", "s3://bkt/eve/p/sft/export", "bench=pope,textvqa", "pope.data=s3://bkt/bench/pope",
         "textvqa.data=s3://bkt/bench/textvqa", "max_new_tokens=16", "nodes=2", "nproc_per_node=2",
         "gpus_per_node=0", "gang_scheduler=none", "name=ev1", "credentials_secret=s3c",
         "endpoint_url=http://minio:9000", "--backend", "kubernetes", "-n", "ml", "--dry-run"]


def test_pytorchjob_runs_eve_eval_through_the_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EVE_JOB_API", raising=False)
    result = CliRunner().invoke(app, WORDS)
    assert result.exit_code == 0, result.output
    job = yaml.safe_load(result.stdout)
    assert job["kind"] == "PyTorchJob" and job["metadata"]["name"] == "ev1" and job["spec"]["nprocPerNode"] == "2"
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Worker"]["replicas"] == 1
    container = replicas["Master"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["eve-launch", "--", "eve-eval", "s3://bkt/eve/p/sft/export", "bench=pope,textvqa",
                                    "pope.data=s3://bkt/bench/pope", "textvqa.data=s3://bkt/bench/textvqa",
                                    "max_new_tokens=16", "endpoint_url=http://minio:9000"]
    env = {e["name"]: e for e in container["env"]}
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio:9000"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "s3c", "key": "AWS_ACCESS_KEY_ID"}


def test_trainjob_on_request() -> None:
    result = CliRunner().invoke(app, [*WORDS, "job_api=TrainJob"])
    assert result.exit_code == 0, result.output
    job = yaml.safe_load(result.stdout)
    assert job["kind"] == "TrainJob" and job["spec"]["trainer"]["numNodes"] == 2
    assert job["spec"]["trainer"]["command"][:3] == ["eve-launch", "--", "eve-eval"]


@pytest.mark.parametrize("change, message", [
    (("pope.data=s3://bkt/bench/pope", "pope.data=/local/pope"), "pods read bench data from the object store"),
    (("nodes=2", "nodes=0"), "nodes"),
    (("bench=pope,textvqa", "bench=pope,nope"), "'nope' is not a benchmark"),
    (("max_new_tokens=16", "max_new_tokens=zero"), "max_new_tokens='zero' is not an integer"),
    (("gang_scheduler=none", "colour=red"), "unknown key 'colour'"),
])
def test_what_a_pod_would_refuse_the_command_refuses(change: tuple[str, str], message: str) -> None:
    words = [change[1] if w == change[0] else w for w in WORDS]
    result = CliRunner().invoke(app, words)
    assert result.exit_code == 2, result.output
    assert message in result.output
