"""spec.podTemplate on running pods: the real operator submits a PyTorchJob, the emulated cluster
(cluster_emulator.py: training-operator v1.9 controller + a kubelet that runs the pods' commands)
runs eve-launch -> eve-train for real, and the extra env of the podTemplate reaches the trainer:
it reports EVE_GIT_COMMIT as the stage run's `eve.git_commit` tag in MLflow.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.cluster_emulator import ClusterEmulator, running_cluster
from support.kube_emulator import Emulator
from support.operator_harness import NS, Cluster, Operator, wait_for

from eve_operator import tracking

pytestmark = pytest.mark.slow


@pytest.fixture
def emulated(emulator: Emulator, cluster: Cluster, tmp_path: Path) -> Iterator[ClusterEmulator]:
    kubeconfig = emulator.write_kubeconfig(tmp_path / "kubeconfig-node", NS)
    with running_cluster(emulator, kubeconfig, tmp_path / "node", max_grace_s=5, interval_s=0.1) as c:
        yield c
    assert not c.errors, c.errors


def test_podtemplate_env_reaches_the_running_trainer(cluster: Cluster, emulated: ClusterEmulator,
                                                     operator: Operator, bucket: str, s3_env: Any,
                                                     mlflow_server: Any) -> None:
    from eve_trainer.data import write_synthetic_dataset

    data = f"s3://{bucket}/datasets/captions"
    write_synthetic_dataset(data, num_samples=16, kind="caption", seed=0, endpoint_url=s3_env.endpoint_url)
    cluster.create_secret("eve-s3", {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"})
    marker = f"podtemplate-{uuid.uuid4().hex[:8]}"
    uri = mlflow_server.tracking_uri
    cluster.create_pipeline("podenv", {
        "preset": "tiny", "output": f"s3://{bucket}/eve", "until": "prealign", "maxAttempts": 1,
        "data": [data], "overrides": {"max_steps": 2},
        "s3": {"endpointUrl": s3_env.endpoint_url, "credentialsSecret": "eve-s3"},
        "mlflow": {"trackingUri": uri},
        "resources": {"nodes": 1, "gpusPerNode": 0, "nprocPerNode": 1, "cpu": "1", "memory": "2Gi",
                      "shmSize": "256Mi"},
        "scheduling": {"gangScheduler": "none"},
        "podTemplate": {"env": [{"name": "EVE_GIT_COMMIT", "value": marker}], "labels": {"team": "vision"}}})
    pod = wait_for(lambda: emulated.pod("podenv-prealign-master-0", NS), timeout=60, what="the master pod")
    assert pod["metadata"]["labels"]["team"] == "vision"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True

    def finished() -> dict[str, Any] | None:
        status = cluster.status("podenv")
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status = wait_for(finished, timeout=600, what="the prealign stage on the emulated cluster")
    assert status["phase"] == "Succeeded", (status, emulated.log("podenv-prealign-master-0", NS)[-3000:])
    run_id = tracking.find_child_run(uri, status["mlflowRunId"], {"eve.stage": "prealign"})
    assert run_id is not None, "the trainer made no stage run under the pipeline's run"
    tags = {t["key"]: t["value"] for t in
            tracking._call(uri, "GET", "runs/get", query={"run_id": run_id})["run"]["data"]["tags"]}
    assert tags["eve.git_commit"] == marker
