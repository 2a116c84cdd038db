"""End to end on the emulated cluster: the real CLI, operator, trainer, S3 and MLflow behind pods.

`eve-platform submit ... --backend kubernetes` creates the EvePipeline in kmock's API server;
the real kopf operator (a thread) creates the PyTorchJobs; the emulated training-operator
creates their pods and the emulated kubelet runs each pod's command (the launcher, which
starts the node's ranks) as a local process group (tests/support/cluster_emulator.py).
Only containers, cluster DNS, GPUs and the scheduler are missing (docs/operator.md).

Three pipelines are shared by the tests (module fixtures, a few minutes each on 2 cores):
- `cluster_chain`: prealign -> pretrain -> sft on 2 pods x 2 processes; one pod of pretrain
  is SIGKILLed (node loss) after pretrain's first complete checkpoint;
- `local_chain`: the same pipeline on the local backend at world size 4 (one node of 4 ranks:
  the same global ranks, the same data order);
- `trainjob_chain`: the same pipeline with jobApi=TrainJob in its own namespace: Kubeflow
  Trainer v2 (tests/support/trainjob_emulator.py, on the chart's ClusterTrainingRuntime) runs
  one pod per node with the torch plugin's PET_* env.
All their exports must be bit-identical. The cluster chain ends with its own evaluation (spec.eval:
an eve-eval PyTorchJob of 2 pods x 2 ranks after sft) on a small POPE bench in S3 (that 2 x 2 ranks
answer as one process does is tests/eval's; the local backend's spec.eval is test_local_pipeline_eval's).
Two short pipelines check cancel and a permanent failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support.cluster_emulator import JOB_NAME_LABEL, ClusterEmulator, conditions
from support.kube_emulator import Emulator
from support.operator_harness import running_operator, wait_for
from support.trainjob_emulator import JOBSET_NAME, TrainerCluster

from eve_contract import layout
from eve_contract.storage import open_store

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # the shared chain runs in the first test
NS = "ml"
TJ_NS = "ml-trainjob"  # the TrainJob chain: the same pipeline name (same exports), its own namespace
NODES, NPROC = 2, 2
STAGES = ["prealign", "pretrain", "sft"]
#: world 4 = 2 pods x 2 processes: 8 samples a step = 2 per rank, no accumulation
TRAIN = ["micro_batch_size=2", "global_batch_size=8"]
#: the cluster chain scores its sft export (spec.eval, mode before: the pipeline ends when the scores are in)
EVAL = ["eval.max_new_tokens=4", "eval.batch_size=2"]
#: pretrain's pods sleep this long after each step, so the test can kill a pod mid-stage
STEP_DELAY_S = "1.5"
GRACE_S = 60.0  # the PyTorchJobs ask 300 s between SIGTERM and SIGKILL; a final checkpoint needs seconds


@dataclass
class World:
    cluster: ClusterEmulator
    bucket: str
    endpoint: str
    tracking_uri: str
    data: dict[str, str]
    bench: str
    env: dict[str, str]
    home: Path
    timings: dict[str, float] = field(default_factory=dict)

    def cli(self, *args: str, timeout: float = 900, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "eve_operator.cli.main", *args], env={**self.env, **env},
                              capture_output=True, text=True, timeout=timeout)

    def submit_cluster(self, name: str, *extra: str, prefix: str = "cluster") -> None:
        words = ["stage=prealign", f"name={name}", f"output=s3://{self.bucket}/{prefix}",
                 f"data={self.data['caption']}", f"sft.data={self.data['conversation']}",
                 f"endpoint_url={self.endpoint}", "credentials_secret=s3-creds",
                 f"tracking_uri={self.tracking_uri}", "experiment=cluster-e2e",
                 f"nodes={NODES}", f"nproc_per_node={NPROC}", "gpus_per_node=0", "gang_scheduler=none", *TRAIN]
        replaced = {w.split("=", 1)[0] for w in extra}  # submit refuses a key given twice
        words = [w for w in words if w.split("=", 1)[0] not in replaced]
        result = self.cli("submit", *words, *extra, "--backend", "kubernetes", timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr[-4000:]

    def pipeline(self, name: str) -> dict[str, Any] | None:
        import kubernetes

        try:
            return self.cluster.custom.get_namespaced_custom_object("eve-platform.io", "v1alpha1", NS,
                                                                    "evepipelines", name)
        except kubernetes.client.ApiException as err:
            if err.status == 404:
                return None
            raise

    def finished(self, name: str) -> dict[str, Any] | None:
        status = (self.pipeline(name) or {}).get("status") or {}
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    def store(self, prefix: str) -> Any:
        return open_store(f"s3://{self.bucket}/{prefix}", endpoint_url=self.endpoint)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, s3_server: Any, mlflow_server: Any) -> Iterator[World]:
    with pytest.MonkeyPatch.context() as mp:
        for key, value in s3_server.env().items():  # this process: the test's S3 reads, the operator's
            mp.setenv(key, value)
        yield from _world(tmp_path_factory.mktemp("cluster"), s3_server, mlflow_server, mp)


def _world(tmp: Path, s3_server: Any, mlflow_server: Any, mp: pytest.MonkeyPatch) -> Iterator[World]:
    from support.eval_helpers import make_pope_bench, upload_folder

    from eve_trainer.data import write_synthetic_dataset

    bucket = s3_server.make_bucket("cluster-e2e")
    data = {"caption": f"s3://{bucket}/datasets/captions", "conversation": f"s3://{bucket}/datasets/llava"}
    for kind, url in data.items():
        write_synthetic_dataset(url, num_samples=48, kind=kind, seed=0, endpoint_url=s3_server.endpoint_url)
    make_pope_bench(tmp / "pope")
    bench = f"s3://{bucket}/bench/pope"
    upload_folder(tmp / "pope", bench, s3_server.endpoint_url)

    def step_delay(pod: dict[str, Any]) -> dict[str, str]:
        job = (pod["metadata"].get("labels") or {}).get(JOB_NAME_LABEL, "")
        return {"EVE_DEBUG_STEP_DELAY_S": STEP_DELAY_S} if job.startswith("chain-pretrain") else {}

    emulator = Emulator().start()
    kubeconfig = emulator.write_kubeconfig(tmp / "kubeconfig", NS)
    mp.setenv("KUBECONFIG", str(kubeconfig))  # the operator (kopf, in this process) reads it
    # the training-operator (PyTorchJob) and Kubeflow Trainer v2 (TrainJob) side by side
    cluster = TrainerCluster(emulator, kubeconfig, tmp / "node", runtimes=_chart_runtimes(), max_grace_s=GRACE_S,
                             extra_env=step_delay, interval_s=0.25)  # controllers and a kubelet polling 4x a second
    mp.setenv("EVE_TRAINJOB_RUNTIME", "eve-torch")  # the operator with Trainer v2 support (trainJob.enabled)
    for ns in (NS, TJ_NS):
        cluster.core.create_namespaced_secret(ns, {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds", "namespace": ns},
            "data": {k: _b64(s3_server.env()[k]) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}})
    env = dict(os.environ, EVE_PLATFORM_HOME=str(tmp / "home"), OMP_NUM_THREADS="1")
    env.pop("EVE_PLATFORM_BACKEND", None)
    try:
        cluster.start()
        with running_operator(resync_s=1.0):
            yield World(cluster, bucket, s3_server.endpoint_url, mlflow_server.tracking_uri, data, bench, env,
                        tmp / "home")
    finally:
        cluster.stop()
        emulator.stop()
    assert not cluster.errors, "\n".join(cluster.errors)


def _chart_runtimes() -> dict[str, dict[str, Any]]:
    """The chart's ClusterTrainingRuntime (helm template), for TrainJobs; none without helm."""
    from support.deploy_support import Helm, tool

    binary, _ = tool("helm")
    if binary is None:
        return {}
    objs = Helm(binary).template("--set", "trainJob.enabled=true", "--set", "scheduling.gangScheduler=none")
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == "ClusterTrainingRuntime"}


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


def export_digests(store: Any, pipeline: str) -> dict[str, dict[str, str]]:
    """{stage: {file: sha256}} from each stage's verified stage-complete manifest."""
    out = {}
    for stage in STAGES:
        manifest = layout.stage_complete(store, pipeline, stage)
        assert manifest is not None, f"{pipeline}/{stage}: no verified export"
        out[stage] = {f.path: f.sha256 for f in manifest.files}
    return out


def digest(files: dict[str, str]) -> str:
    """One sha256 over an export's (file, sha256) list: equal exactly when every file is equal."""
    return hashlib.sha256("".join(f"{p}:{h}\n" for p, h in sorted(files.items())).encode()).hexdigest()


@dataclass
class ChainRun:
    status: dict[str, Any]
    digests: dict[str, dict[str, str]]
    killed: str
    killed_after_step: int
    wall_s: float
    logs: dict[str, str]
    jobs: list[str]


@pytest.fixture(scope="module")
def cluster_chain(world: World) -> ChainRun:
    t0 = time.monotonic()
    world.submit_cluster("chain", f"eval.data.pope={world.bench}", *EVAL)
    store = world.store("cluster")
    # node loss: once pretrain has a complete checkpoint, its Worker pod dies (SIGKILL to the group)
    step, _ = wait_for(lambda: layout.latest_complete_checkpoint(store, "chain", "pretrain"), timeout=900,
                       what="pretrain's first complete checkpoint")
    victim = "chain-pretrain-worker-0"
    world.cluster.kill_pod(victim, NS)
    status = wait_for(lambda: world.finished("chain"), timeout=900, what="pipeline chain to finish")
    wall = time.monotonic() - t0
    world.timings["cluster chain"] = wall
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
    logs = {}
    for stage in status["stages"]:
        master = f"{stage['jobName']}-master-0"
        logs[stage["name"]] = world.cluster.log(master, NS)
    jobs = sorted(world.cluster.custom.list_namespaced_custom_object("kubeflow.org", "v1", NS,
                                                                     "pytorchjobs")["items"],
                  key=lambda j: j["metadata"]["creationTimestamp"])
    return ChainRun(status, export_digests(store, "chain"), victim, step, wall, logs,
                    [j["metadata"]["name"] for j in jobs])


@pytest.fixture(scope="module")
def local_chain(world: World) -> dict[str, dict[str, str]]:
    t0 = time.monotonic()
    result = world.cli("submit", "stage=prealign", "name=chain", f"output=s3://{world.bucket}/local",
                       f"data={world.data['caption']}", f"sft.data={world.data['conversation']}",
                       f"endpoint_url={world.endpoint}", f"tracking_uri={world.tracking_uri}",
                       "experiment=local-e2e", "nodes=1", f"nproc_per_node={NODES * NPROC}", *TRAIN,
                       "--local")  # the local backend runs one node: world 4 as 1 x 4
    world.timings["local chain"] = time.monotonic() - t0
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    return export_digests(world.store("local"), "chain")


@pytest.fixture(scope="module")
def trainjob_chain(world: World) -> dict[str, Any]:
    """The same chain with jobApi=TrainJob: Kubeflow Trainer v2 runs one pod per node (PET_* env)."""
    if not world.cluster.trainer.runtimes:
        pytest.skip("helm is not available to render the chart's ClusterTrainingRuntime")
    t0 = time.monotonic()
    world.submit_cluster("chain", "jobApi=TrainJob", "-n", TJ_NS, prefix="trainjob")

    def finished() -> dict[str, Any] | None:
        obj = world.cluster.custom.get_namespaced_custom_object("eve-platform.io", "v1alpha1", TJ_NS,
                                                                "evepipelines", "chain")
        status = obj.get("status") or {}
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status = wait_for(finished, timeout=900, what="the TrainJob chain to finish")
    world.timings["trainjob chain"] = time.monotonic() - t0
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
    pods = {stage: world.cluster.trainjob_pods(TJ_NS, f"chain-{stage}") for stage in STAGES}
    return {"status": status, "digests": export_digests(world.store("trainjob"), "chain"), "pods": pods}


def test_chain_runs_prealign_pretrain_sft_on_two_pods_of_two_ranks(world: World, cluster_chain: ChainRun) -> None:
    status = cluster_chain.status
    assert [s["state"] for s in status["stages"]] == ["Succeeded"] * 3
    for stage, log in cluster_chain.logs.items():
        assert f"world {NODES * NPROC}" in log, f"{stage}: the master's log does not show a world of 4:\n{log[-3000:]}"
    sft = status["stages"][2]["jobName"]

    def exits() -> dict[str, int] | None:
        found = {pod: code for _, pod, code in world.cluster.kubelet.exits if pod.startswith(f"{sft}-")}
        return found if len(found) == 2 else None

    codes = wait_for(exits, timeout=GRACE_S + 30, what=f"both pods of {sft} to exit")
    # v1.9 marks the job Succeeded when the Master does (#1982); cleanPodPolicy Running then
    # SIGTERMs a Worker still shutting down (its work was done: rank 0 exports after a barrier)
    assert codes[f"{sft}-master-0"] == 0 and codes[f"{sft}-worker-0"] in (0, 143), codes
    logs = world.cli("logs", "chain", "--stage", "sft", timeout=60)  # the master pod's log through the API
    assert logs.returncode == 0 and "[eve-train]" in logs.stdout, logs.stderr[-2000:]
    described = world.cli("describe", "chain", timeout=60)
    assert "Succeeded" in described.stdout


def test_cluster_export_is_bit_identical_to_local_world_4(world: World, cluster_chain: ChainRun,
                                                          local_chain: dict[str, dict[str, str]]) -> None:
    cluster, local = cluster_chain.digests, local_chain
    figures = {"sft export digest": {"cluster": digest(cluster["sft"]), "local": digest(local["sft"])},
               "wall s": {k: round(v) for k, v in world.timings.items()}}
    # sys.__stdout__: kopf's test runner swaps sys.stdout while the operator runs
    print(f"\n[cluster-e2e] {json.dumps(figures)}", file=sys.__stdout__, flush=True)
    for stage in STAGES:
        assert cluster[stage] == local[stage], f"{stage}: the cluster export differs from the local one"


def test_the_chain_scores_its_export_in_a_job_of_two_pods(world: World, cluster_chain: ChainRun) -> None:
    (ev,) = cluster_chain.status["evals"]
    assert ev["stage"] == "sft" and ev["state"] == "Succeeded" and ev["jobName"] == "chain-eval-sft", ev
    assert ev["scores"]["pope"]["n"] == 6, ev
    # a PyTorchJob of its own, whose two pods each ran eve-eval's ranks through the launcher
    assert conditions(world.cluster.job("chain-eval-sft", NS))["Succeeded"] == "True"
    exits = {pod: code for _, pod, code in world.cluster.kubelet.exits if pod.startswith("chain-eval-sft-")}
    assert exits.get("chain-eval-sft-master-0") == 0 and "chain-eval-sft-worker-0" in exits, exits
    assert "[eve-eval]" in world.cluster.log("chain-eval-sft-master-0", NS)
    # the merged answers beside the export, in question order, where the operator read the scores
    raw = world.store("cluster").get_bytes("chain/sft/eval/pope/answers.jsonl").decode()
    assert [json.loads(line)["question_id"] for line in raw.splitlines()] == list(range(100, 106))


def test_node_loss_restarts_and_resumes_from_the_last_complete_checkpoint(world: World,
                                                                          cluster_chain: ChainRun) -> None:
    exits = [code for _, pod, code in world.cluster.kubelet.exits if pod == cluster_chain.killed]
    assert 137 in exits, world.cluster.kubelet.exits
    pretrain = cluster_chain.status["stages"][1]
    log = cluster_chain.logs["pretrain"]
    assert f"resumed from s3://{world.bucket}/cluster/chain/pretrain/checkpoints/step-" in log, log[-3000:]
    resumed = int(log.split("/checkpoints/step-")[-1].split()[0].strip("/"))
    assert resumed >= cluster_chain.killed_after_step, (resumed, cluster_chain.killed_after_step)
    assert pretrain["attempt"] >= 2 or any(j.startswith("chain-pretrain") for j in cluster_chain.jobs)


def test_cancel_sigterms_every_rank_which_checkpoints_and_no_later_stage_starts(world: World) -> None:
    world.submit_cluster("halt", "max_steps=100000", "checkpoint.every_steps=100000")
    wait_for(lambda: "[eve-train] step " in _log(world, "halt-prealign-master-0"), timeout=600,
             what="halt's prealign ranks training")
    cancelled = world.cli("cancel", "halt", timeout=120)
    assert cancelled.returncode == 0, cancelled.stderr
    wait_for(lambda: not world.cluster.pods(NS, job="halt-prealign") and world.pipeline("halt") is None,
             timeout=GRACE_S + 60, what="halt's pods stopped and the pipeline deleted")
    exits = {pod: code for _, pod, code in world.cluster.kubelet.exits if pod.startswith("halt-")}
    assert exits == {"halt-prealign-master-0": 143, "halt-prealign-worker-0": 143}, exits
    checkpoint = layout.latest_complete_checkpoint(world.store("cluster"), "halt", "prealign")
    assert checkpoint is not None, "SIGTERM did not leave a complete checkpoint"
    step, manifest = checkpoint
    states = sorted(f.path for f in manifest.files if f.path.startswith("trainer-state/"))
    assert states == [f"trainer-state/rank-{r:05d}.pt" for r in range(NODES * NPROC)], states  # every rank saved
    assert manifest.extra["world_size"] == NODES * NPROC and step > 0
    jobs = world.cluster.custom.list_namespaced_custom_object("kubeflow.org", "v1", NS, "pytorchjobs")["items"]
    assert not [j for j in jobs if j["metadata"]["name"].startswith("halt-")], "a job of halt was left or started"


def _log(world: World, pod: str) -> str:
    import kubernetes

    try:
        return world.cluster.log(pod, NS)
    except kubernetes.client.ApiException as err:
        if err.status in (400, 404):
            return ""
        raise


def test_bad_trainer_override_fails_the_stage_at_once_without_retry(world: World) -> None:
    # 2 pods of 1 rank: enough to see both pods fail and nothing retried, at half the start-up cost
    # a tokenizer folder without tokenizer files: submit cannot know (it does not read the store),
    # the trainer finds out at start-up and exits 2
    world.submit_cluster("broken", f"data.tokenizer=s3://{world.bucket}/no-such-tokenizer", "nproc_per_node=1")
    status = wait_for(lambda: world.finished("broken"), timeout=600, what="pipeline broken to fail")
    assert status["phase"] == "Failed" and status["stages"][0]["attempt"] == 1, status
    assert "the trainer exited with 2" in status["message"], status["message"]
    wait_for(lambda: len([p for _, p, _ in world.cluster.kubelet.exits if p.startswith("broken-")]) == 2,
             timeout=GRACE_S + 60, what="both pods of broken-prealign to exit")
    exits = {pod: code for _, pod, code in world.cluster.kubelet.exits if pod.startswith("broken-")}
    # the first pod to exit 2 fails the job (ExitCode, 1-127); the other exits 2 too, or 143 when
    # cleanPodPolicy Running stopped it first
    assert sorted(exits.values()) in ([2, 2], [2, 143]), exits
    jobs = world.cluster.custom.list_namespaced_custom_object("kubeflow.org", "v1", NS, "pytorchjobs")["items"]
    assert [j["metadata"]["name"] for j in jobs if j["metadata"]["name"].startswith("broken-")] == ["broken-prealign"]
    assert conditions(world.cluster.job("broken-prealign", NS))["Failed"] == "True"
    described = world.cli("describe", "broken", timeout=60).stdout
    assert "failed permanently" in described and "exited with 2" in described, described
    # the trainer's own error line in describe: the container's termination message (its log tail)
    assert "no tokenizer files" in described, described
    # the trainer's own error line: in the Master pod's log, read through the API
    logs = world.cli("logs", "broken", "--stage", "prealign", timeout=60)
    assert "eve-train: error: no tokenizer files" in logs.stdout, logs.stdout[-3000:]


def test_trainjob_chain_export_is_bit_identical_to_pytorchjob_and_local(
        world: World, trainjob_chain: dict[str, Any], cluster_chain: ChainRun,
        local_chain: dict[str, dict[str, str]]) -> None:
    status = trainjob_chain["status"]
    assert [s["jobName"] for s in status["stages"]] == [f"chain-{s}" for s in STAGES]
    for stage, pods in trainjob_chain["pods"].items():  # one JobSet pod per node, each ran its 2 ranks
        assert sorted(p.rsplit("-", 1)[0] for p in pods) == [f"chain-{stage}-node-0-{i}" for i in range(NODES)]
        assert all((p["metadata"]["labels"] or {})[JOBSET_NAME] == f"chain-{stage}" for p in pods.values())
    node0 = next(n for n in trainjob_chain["pods"]["sft"] if n.startswith("chain-sft-node-0-0-"))
    assert f"world {NODES * NPROC}" in world.cluster.log(node0, TJ_NS)
    logs = world.cli("logs", "chain", "--stage", "sft", "-n", TJ_NS, timeout=60)  # node 0's log via the API
    assert logs.returncode == 0 and "[eve-train]" in logs.stdout, logs.stderr[-2000:]
    print(f"\n[cluster-e2e] trainjob sft export digest {digest(trainjob_chain['digests']['sft'])}, "
          f"wall s {json.dumps({k: round(v) for k, v in world.timings.items()})}", file=sys.__stdout__, flush=True)
    for stage in STAGES:
        assert trainjob_chain["digests"][stage] == local_chain[stage], f"{stage}: the TrainJob export differs"
        assert trainjob_chain["digests"][stage] == cluster_chain.digests[stage]

