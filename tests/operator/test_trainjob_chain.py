"""The tiny chain through Kubeflow Trainer v2: the real operator creates a TrainJob per stage, the
emulated Trainer (trainjob_emulator.py, on the chart's ClusterTrainingRuntime) runs one pod per
node with the torch plugin's PET_* env, each pod runs eve-launch -> eve-train for real against
a real S3 server. The exports must be bit-identical to the same chain run by the local backend.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner
from kube_emulator import Emulator
from operator_harness import NS, Cluster, Operator, running_operator, wait_for
from trainjob_emulator import TrainerCluster, running_trainer_cluster

from eve_trainer import layout
from eve_trainer.storage import open_store

from eve_operator import handlers
from eve_operator.cli.main import app

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
STAGES = ["prealign", "pretrain", "sft"]


@pytest.fixture(scope="module")
def runtime() -> dict[str, Any]:
    """The chart's ClusterTrainingRuntime (gang scheduler none: the emulator has no scheduler)."""
    sys.path.insert(0, str(ROOT / "tests" / "deploy"))
    from deploy_support import Helm, tool

    binary, why = tool("helm")
    if binary is None:
        pytest.skip(f"helm is not available: {why}")
    objs = Helm(binary).template("--set", "trainJob.enabled=true", "--set", "scheduling.gangScheduler=none")
    (obj,) = [o for o in objs if o["kind"] == "ClusterTrainingRuntime"]
    return obj


@pytest.fixture
def trainer(emulator: Emulator, cluster: Cluster, tmp_path: Path, runtime: dict[str, Any], s3_env: Any
            ) -> Iterator[TrainerCluster]:
    cluster.create_secret("eve-s3", {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"})
    kubeconfig = emulator.write_kubeconfig(tmp_path / "kubeconfig-node", NS)
    with running_trainer_cluster(emulator, kubeconfig, tmp_path / "node", max_grace_s=5, interval_s=0.1,
                                 runtimes={"eve-torch": runtime}) as c:
        yield c
    assert not c.errors, c.errors


@pytest.fixture
def trainjob_operator(cluster: Cluster, s3_env: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Operator]:
    """The operator with Trainer v2 support on, as the chart sets it with trainJob.enabled."""
    monkeypatch.setenv("EVE_TRAINJOB_RUNTIME", "eve-torch")
    handlers.watch_trainjobs()
    with running_operator() as op:
        yield op


@pytest.fixture
def datasets(bucket: str, s3_env: Any) -> dict[str, str]:
    from eve_trainer.data import write_synthetic_dataset

    urls = {"caption": f"s3://{bucket}/datasets/captions", "conversation": f"s3://{bucket}/datasets/llava"}
    for kind, url in urls.items():
        write_synthetic_dataset(url, num_samples=48, kind=kind, seed=0, endpoint_url=s3_env.endpoint_url)
    return urls


def weights(output: str, pipeline: str, endpoint: str) -> dict[str, dict[str, str]]:
    """{stage: {file: sha256}} of every stage's verified export (the model, not the bookkeeping)."""
    store = open_store(output, endpoint_url=endpoint)
    out = {}
    for stage in STAGES:
        manifest = layout.stage_complete(store, pipeline, stage)
        assert manifest is not None, f"{stage}: no verified stage-complete manifest under {output}"
        out[stage] = {f.path: f.sha256 for f in manifest.files if f.path.endswith(".safetensors")}
        assert out[stage], f"{stage}: no weights in {[f.path for f in manifest.files]}"
    return out


def test_tiny_chain_through_trainjobs_gives_the_local_export(cluster: Cluster, trainer: TrainerCluster,
                                                            trainjob_operator: Operator, datasets: dict[str, str],
                                                            bucket: str, s3_env: Any, tmp_path: Path) -> None:
    output = f"s3://{bucket}/cluster"
    cluster.create_pipeline("chain", {
        "preset": "tiny", "output": output, "jobApi": "TrainJob", "maxAttempts": 1,
        "data": [datasets["caption"]], "stages": {"sft": {"data": [datasets["conversation"]]}},
        "s3": {"endpointUrl": s3_env.endpoint_url, "credentialsSecret": "eve-s3"},
        "resources": {"nodes": 2, "gpusPerNode": 0, "nprocPerNode": 1, "cpu": "1", "memory": "2Gi",
                      "shmSize": "256Mi"},
        "scheduling": {"gangScheduler": "none"}})
    first = wait_for(lambda: trainer.trainjob("chain-prealign", NS), what="the prealign TrainJob")
    assert first["spec"]["trainer"]["command"][:2] == ["eve-launch", "--"]
    assert first["spec"]["runtimeRef"]["name"] == "eve-torch"

    def finished() -> dict[str, Any] | None:
        status = cluster.status("chain")
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status = wait_for(finished, timeout=900, what="the chain through TrainJobs")
    logs = {name: trainer.log(name, NS)[-1500:] for name in trainer.trainjob_pods(NS, "chain-sft")}
    assert status["phase"] == "Succeeded", (status, logs)
    assert [s["jobName"] for s in status["stages"]] == ["chain-prealign", "chain-pretrain", "chain-sft"]
    for stage in STAGES:  # one pod per node, JobSet names, and both ranks trained
        pods = trainer.trainjob_pods(NS, f"chain-{stage}")
        assert sorted(p.rsplit("-", 1)[0] for p in pods) == [f"chain-{stage}-node-0-0", f"chain-{stage}-node-0-1"]
    cluster_weights = weights(output, "chain", s3_env.endpoint_url)
    logs_cli = CliRunner().invoke(app, ["logs", "chain", "--stage", "sft", "--backend", "kubernetes", "-n", NS])
    assert logs_cli.exit_code == 0 and "eve-" in logs_cli.output, logs_cli.output[-2000:]  # node 0's launcher

    # the same chain, same world size (2 ranks), on the local backend
    env = dict(os.environ, EVE_PLATFORM_HOME=str(tmp_path / "home"), EVE_PLATFORM_BACKEND="local",
               OMP_NUM_THREADS="1", **s3_env.env())
    local_output = f"s3://{bucket}/local"
    result = subprocess.run([sys.executable, "-m", "eve_operator.cli.main", "submit", "stage=prealign",
                             "name=chain", f"output={local_output}", f"data={datasets['caption']}",
                             f"sft.data={datasets['conversation']}", f"endpoint_url={s3_env.endpoint_url}",
                             "nproc_per_node=2"], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert cluster_weights == weights(local_output, "chain", s3_env.endpoint_url)
    print(json.dumps(cluster_weights, indent=1))
