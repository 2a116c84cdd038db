"""A hung rank on the emulated cluster: the real CLI, operator, launcher, trainer, S3 and MLflow.

Like tests/e2e/test_cluster_pipeline.py, the real kopf operator creates PyTorchJobs in kmock's API
server and the emulated training-operator and kubelet run their pods as local processes
(tests/support/cluster_emulator.py). Rank 1 of attempt 1 blocks at step 3 (debug.hang_at_step);
the operator must see the heartbeats stop advancing, delete the job (the kubelet SIGTERMs the
launcher, then SIGKILLs the hung ranks after the grace), close the stage's MLflow run as KILLED
and start attempt 2, which resumes from the step-2 checkpoint and completes the stage.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support.cluster_emulator import ClusterEmulator
from support.kube_emulator import Emulator
from support.operator_harness import running_operator, wait_for

from eve_contract import layout
from eve_contract.storage import open_store

pytestmark = pytest.mark.slow
NS = "ml"
STALL_TIMEOUT_S = 10


def test_a_hung_rank_on_the_cluster_is_stopped_and_the_stage_resumes(
        tmp_path: Path, s3_server: Any, mlflow_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import base64

    from mlflow.tracking import MlflowClient

    from eve_trainer.data import write_synthetic_dataset

    bucket = s3_server.make_bucket("cluster-stall")
    data, output = f"s3://{bucket}/datasets/captions", f"s3://{bucket}/runs"
    for key, value in s3_server.env().items():  # the operator (in this process) reads S3 with them
        monkeypatch.setenv(key, value)
    write_synthetic_dataset(data, num_samples=48, kind="caption", seed=0, endpoint_url=s3_server.endpoint_url)
    emulator = Emulator().start()
    kubeconfig = emulator.write_kubeconfig(tmp_path / "kubeconfig", NS)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    cluster = ClusterEmulator(emulator, kubeconfig, tmp_path / "node", max_grace_s=5.0)
    cluster.core.create_namespaced_secret(NS, {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds", "namespace": NS},
        "data": {k: base64.b64encode(s3_server.env()[k].encode()).decode()
                 for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}})
    env = dict(os.environ, EVE_PLATFORM_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1")
    env.pop("EVE_PLATFORM_BACKEND", None)

    def pipeline() -> dict[str, Any]:
        return cluster.custom.get_namespaced_custom_object("eve-platform.io", "v1alpha1", NS, "evepipelines", "hung")

    try:
        cluster.start()
        with running_operator(resync_s=1.0):
            submitted = subprocess.run(
                [sys.executable, "-m", "eve_operator.cli.main", "submit", "stage=prealign", "until=prealign",
                 "name=hung", f"output={output}", f"data={data}", f"endpoint_url={s3_server.endpoint_url}",
                 "credentials_secret=s3-creds", f"tracking_uri={mlflow_server.tracking_uri}",
                 "experiment=cluster-stall", "nodes=1", "nproc_per_node=2", "gpus_per_node=0",
                 "gang_scheduler=none", "max_steps=6", "checkpoint.every_steps=2", "heartbeat.every_s=1",
                 f"stall_timeout_s={STALL_TIMEOUT_S}", "debug.hang_at_step=3", "debug.hang_rank=1",
                 "debug.hang_attempt=1", "--backend", "kubernetes"],
                env=env, capture_output=True, text=True, timeout=120)
            assert submitted.returncode == 0, submitted.stdout + submitted.stderr[-3000:]
            wait_for(lambda: (pipeline().get("status") or {}).get("stages", [{}])[0].get("step") == 3,
                     timeout=600, what="attempt 1 at step 3")
            t0 = time.monotonic()
            wait_for(lambda: pipeline()["status"]["stages"][0]["attempt"] == 2, timeout=120, what="attempt 2")
            detected = time.monotonic() - t0
            status = wait_for(lambda: (s := pipeline()["status"])["phase"] in ("Succeeded", "Failed") and s,
                              timeout=600, what="the pipeline to finish")
            raw = cluster.core.list_namespaced_event(NS, _preload_content=False)
            events = [e for e in json.loads(raw.data)["items"] if e.get("involvedObject", {}).get("name") == "hung"]
            jobs = cluster.custom.list_namespaced_custom_object("kubeflow.org", "v1", NS, "pytorchjobs")["items"]
    finally:
        cluster.stop()
        emulator.stop()
    print(f"cluster: stall detected {detected:.1f}s after step 3 appeared in the status "
          f"(stallTimeoutSeconds={STALL_TIMEOUT_S}, heartbeat 1 s, resync 1 s)")
    assert not cluster.errors, "\n".join(cluster.errors)
    assert status["phase"] == "Succeeded", status
    assert STALL_TIMEOUT_S - 1 <= detected <= STALL_TIMEOUT_S + 15, detected
    stalled = next(e for e in events if e["reason"] == "StageStalled")
    assert "no rank's step advanced past 3" in stalled["message"], stalled["message"]
    assert [j["metadata"]["name"] for j in jobs] == ["hung-prealign-r2"]  # attempt 1 was deleted

    store = open_store(output, endpoint_url=s3_server.endpoint_url)
    manifest = layout.stage_complete(store, "hung", "prealign")
    assert manifest is not None and manifest.step == 6
    run = MlflowClient(mlflow_server.tracking_uri).get_run(manifest.mlflow_run_id)
    assert run.info.status == "FINISHED" and "stalled" in run.data.tags["eve.end_reason"]
