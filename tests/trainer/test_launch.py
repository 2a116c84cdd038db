"""eve-launch: a pod is a node; it must start nodes x procs_per_node ranks in total.

The env below is what the Kubeflow training operator v1.9 injects into each pod
(kubeflow-pytorchjob.md §1.10, pkg/controller.v1/pytorch/envvar.go) and what Trainer v2's
torch plugin injects (PET_* only). The process tests run real launchers with that env: the
first landing ran bare `eve-train` per pod, where each process took RANK = its node rank and
WORLD_SIZE = nodes x nproc, and waited forever for ranks that never started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.services import free_port

from eve_contract.exit_codes import exit_code
from eve_contract.topology import TopologyError, node_topology, rank_info
from eve_trainer.launch import combine

JOB = "eve-prealign"


def v1_env(index: int, replicas: int, nproc: str, *, master: bool = True, port: int = 23456) -> dict[str, str]:
    """The env the v1.9 PyTorchJob controller injects into replica `index` (0 = Master)."""
    env = {"PYTHONUNBUFFERED": "1", "PET_NNODES": str(replicas), "PET_NPROC_PER_NODE": nproc}
    if master:
        world = replicas * int(nproc) if nproc.isdigit() else replicas
        env.update({"MASTER_ADDR": f"{JOB}-master-0", "PET_MASTER_ADDR": f"{JOB}-master-0",
                    "MASTER_PORT": str(port), "PET_MASTER_PORT": str(port), "WORLD_SIZE": str(world),
                    "RANK": str(index), "PET_NODE_RANK": str(index)})
    return env


def v2_env(index: int, nodes: int, nproc: str) -> dict[str, str]:
    """Trainer v2's torch plugin: PET_* only, the master is node 0 of the JobSet."""
    return {"PET_NNODES": str(nodes), "PET_NPROC_PER_NODE": nproc, "PET_NODE_RANK": str(index),
            "PET_MASTER_ADDR": f"{JOB}-node-0-0.{JOB}", "PET_MASTER_PORT": "29400"}


# (case, env, visible GPUs) -> (world size, this node's ranks)
CASES = {
    "v1 Master+Worker, nprocPerNode=2, master": (v1_env(0, 2, "2"), 0, (4, [0, 1])),
    "v1 Master+Worker, nprocPerNode=2, worker": (v1_env(1, 2, "2"), 0, (4, [2, 3])),
    "v1 Master+3 Workers, nprocPerNode=8, worker 2": (v1_env(3, 4, "8"), 8, (32, list(range(24, 32)))),
    "v1 nprocPerNode=auto on 8 GPUs (WORLD_SIZE is node-level)": (v1_env(2, 4, "auto"), 8, (32, list(range(16, 24)))),
    "v1 nprocPerNode=gpu on 4 GPUs": (v1_env(1, 2, "gpu"), 4, (8, [4, 5, 6, 7])),
    "v1 nprocPerNode=auto on CPU: one rank per node": (v1_env(1, 2, "auto"), 0, (2, [1])),
    "v1 Master only, nprocPerNode=8": (v1_env(0, 1, "8"), 8, (8, list(range(8)))),
    "v1 Master only, nprocPerNode=1": (v1_env(0, 1, "1"), 0, (1, [0])),
    "v2 TrainJob node 1 of 2, numProcPerNode=4": (v2_env(1, 2, "4"), 4, (8, [4, 5, 6, 7])),
    "v2 TrainJob numProcPerNode=auto": (v2_env(0, 3, "auto"), 2, (6, [0, 1])),
    "a bare pod (no PET_*)": ({}, 0, (1, [0])),
}


@pytest.mark.parametrize("case", list(CASES))
def test_topology_from_the_controllers_env(case: str) -> None:
    env, gpus, (world, ranks) = CASES[case]
    topo = node_topology(env, gpu_count=gpus)
    assert topo.world_size == world
    assert [topo.rank(i) for i in range(topo.nproc_per_node)] == ranks
    first = topo.rank_env(0)
    assert first["WORLD_SIZE"] == str(world) and first["RANK"] == str(ranks[0]) and first["LOCAL_RANK"] == "0"
    assert first["MASTER_ADDR"] == (env.get("PET_MASTER_ADDR") or "127.0.0.1")


@pytest.mark.parametrize("case", list(CASES))
def test_each_rank_reads_back_the_place_its_launcher_gave_it(case: str) -> None:
    """One rule: what the launcher writes for a rank is what the trainer's process group reads."""
    env, gpus, (world, ranks) = CASES[case]
    topo = node_topology(env, gpu_count=gpus)
    for local in range(topo.nproc_per_node):
        info = rank_info({**env, **topo.rank_env(local)})
        assert (info.rank, info.world_size, info.local_rank) == (ranks[local], world, local)


def test_an_elastic_range_is_rejected_by_the_launcher_and_the_trainer_alike() -> None:
    env = {"PET_NNODES": "1:4", "PET_NPROC_PER_NODE": "1", "PET_NODE_RANK": "0"}
    for read in (lambda: node_topology(env), lambda: rank_info(env), lambda: rank_info({"RANK": "0", "WORLD_SIZE": "1:4"})):
        with pytest.raises(TopologyError, match="elastic range"):
            read()


@pytest.mark.parametrize(("env", "gpus", "message"), [
    (v1_env(1, 2, "2", master=False), 0, "neither PET_NODE_RANK nor RANK"),  # Workers only: no Master
    ({**v1_env(0, 2, "2"), "PET_NNODES": "1:4"}, 0, "elastic range"),
    (v1_env(0, 2, "gpu"), 0, "no visible GPU"),
    (v1_env(0, 2, "many"), 0, "expected an integer, auto, gpu or cpu"),
    ({**v1_env(0, 2, "2"), "PET_NODE_RANK": "2"}, 0, "outside PET_NNODES=2"),
    ({"PET_NNODES": "2", "PET_NODE_RANK": "1", "PET_NPROC_PER_NODE": "1"}, 0, "needs a rendezvous address"),
])
def test_unlaunchable_env_is_a_clear_error(env: dict[str, str], gpus: int, message: str) -> None:
    with pytest.raises(TopologyError, match=message):
        node_topology(env, gpu_count=gpus)


def test_exit_codes_keep_the_contract() -> None:
    assert exit_code(-15) == 143 and exit_code(-9) == 137 and exit_code(2) == 2
    assert combine([0, 0], first_failure=None, stopped=False) == 0
    assert combine([2, 143], first_failure=2, stopped=False) == 2      # permanent wins over the others' stop
    assert combine([143, 2], first_failure=143, stopped=True) == 2     # even when we were told to stop
    assert combine([143, 143], first_failure=None, stopped=True) == 143
    assert combine([1, 143], first_failure=1, stopped=False) == 1
    assert combine([137, 143], first_failure=137, stopped=False) == 137


# -- real launchers, one per "pod", with the controller's env ------------------------------

PROBE = """
import os, sys, torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.ones(1)
dist.all_reduce(t)
rank = dist.get_rank()
print(f"probe rank={rank} world={dist.get_world_size()} local={os.environ['LOCAL_RANK']} sum={int(t.item())}", flush=True)
dist.destroy_process_group()
sys.exit(2 if int(os.environ.get("PROBE_EXIT_RANK", "-1")) == rank else 0)
"""


def start_pods(tmp_path: Path, replicas: int, nproc: str, command: list[str], *, extra: dict[str, str] | None = None,
               only: list[int] | None = None) -> list[tuple[subprocess.Popen, Path]]:
    port = free_port()
    pods = []
    for index in only if only is not None else range(replicas):
        env = dict(os.environ, **v1_env(index, replicas, nproc, port=port), **(extra or {}), OMP_NUM_THREADS="1")
        env["MASTER_ADDR"] = env["PET_MASTER_ADDR"] = "127.0.0.1"  # no cluster DNS here
        log = tmp_path / f"pod-{index}.log"
        proc = subprocess.Popen([sys.executable, "-m", "eve_trainer.launch", "--", *command], env=env,
                                stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        pods.append((proc, log))
    return pods


def wait_all(pods: list[tuple[subprocess.Popen, Path]], timeout: float = 120) -> list[int]:
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(timeout=max(0.1, deadline - time.monotonic())) for p, _ in pods]
    except subprocess.TimeoutExpired:
        logs = "\n".join(log.read_text(errors="replace")[-2000:] for _, log in pods)
        raise AssertionError(f"pods did not finish in {timeout}s:\n{logs}") from None
    finally:
        for p, _ in pods:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)


def test_two_pods_of_two_processes_make_one_world_of_four(tmp_path: Path) -> None:
    pods = start_pods(tmp_path, 2, "2", [sys.executable, "-c", PROBE])
    assert wait_all(pods) == [0, 0]
    lines = sorted(line for _, log in pods for line in log.read_text().splitlines() if line.startswith("probe"))
    assert lines == [f"probe rank={r} world=4 local={r % 2} sum=4" for r in range(4)]


def test_a_ranks_exit_2_stays_permanent(tmp_path: Path) -> None:
    """torchrun would report exit 1 (retryable); the operator's contract needs the 2."""
    pods = start_pods(tmp_path, 1, "2", [sys.executable, "-c", PROBE], extra={"PROBE_EXIT_RANK": "1"})
    assert wait_all(pods) == [2]


def test_sigterm_in_the_rendezvous_ends_promptly_and_says_what_it_waits_for(
        tmp_path: Path, s3_server, e2e_bucket: str, dataset_url: str) -> None:
    """Only the Master pod starts (the Worker is never scheduled): its real eve-train ranks
    wait in the rendezvous, say so, and a SIGTERM (cancel, preemption) ends them at once, 143."""
    trainer = [sys.executable, "-m", "eve_trainer", "--preset", "tiny", "pretrain", f"data.urls=[{dataset_url}]",
               f"output=s3://{e2e_bucket}/launch", "pipeline=rdzv", "micro_batch_size=2"]
    [(pod, log)] = start_pods(tmp_path, 2, "2", trainer, only=[0],
                              extra={"EVE_RENDEZVOUS_REPORT_S": "0.5", **s3_server.env()})
    deadline = time.monotonic() + 90
    while "for all 4 ranks to join" not in log.read_text(errors="replace"):
        assert pod.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
        time.sleep(0.1)
    text = log.read_text()
    assert "starting ranks 0-1 of world size 4" in text and "waiting at 127.0.0.1:" in text
    t0 = time.monotonic()
    pod.send_signal(signal.SIGTERM)  # the kubelet signals the container's PID 1: the launcher
    assert wait_all([(pod, log)], timeout=20) == [143]
    assert time.monotonic() - t0 < 10
    # before the SIGTERM, each rank's stacks: they show where it was stuck (the rendezvous)
    assert log.read_text(errors="replace").count("most recent call first") >= 2


def test_the_stage_pod_command_is_the_launcher() -> None:
    from eve_operator.jobspec import build_job_spec
    from eve_operator.pipeline import SubmitJob
    from eve_operator.pytorchjob import build_pytorchjob
    from eve_operator.spec import PipelineSpec

    spec = PipelineSpec.model_validate({"preset": "tiny", "output": "s3://b/eve", "data": ["s3://b/d"],
                                        "resources": {"gpusPerNode": 0, "nprocPerNode": 2, "nodes": 2},
                                        "overrides": {"micro_batch_size": 2}})
    job = build_job_spec("demo", spec, SubmitJob(stage="prealign", attempt=1, job_name="demo-prealign",
                                                 init_from=None, previous_run_id=None))
    pod = build_pytorchjob(job, namespace="ml")["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    command = pod["containers"][0]["command"]
    assert command[:3] == ["eve-launch", "--", "eve-train"] and "prealign" in command


def test_submit_checks_the_batch_against_the_jobs_real_world_size(tmp_path: Path) -> None:
    """nodes=2 nproc_per_node=2 with the tiny recipe (global batch 8, micro 4): every pod would
    exit 2 at start-up; `submit --dry-run` says so first, naming the world size."""
    args = [sys.executable, "-m", "eve_operator.cli.main", "submit", "stage=prealign", "name=ws", "output=s3://b/eve", "data=s3://b/d", "nodes=2",
            "nproc_per_node=2", "gpus_per_node=0", "--backend", "kubernetes", "--dry-run"]
    bad = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert bad.returncode == 2, bad.stderr
    assert "world size 4" in bad.stderr and "global_batch_size=8" in bad.stderr and "Traceback" not in bad.stderr
    good = subprocess.run([*args, "micro_batch_size=2"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert good.returncode == 0, good.stderr
    assert "- eve-launch" in good.stdout


@pytest.mark.parametrize("sample", sorted(p.name for p in (Path(__file__).parents[2] / "manifests/samples").glob("*.yaml")))
def test_every_shipped_sample_launches_at_its_world_size(sample: str) -> None:
    """Each stage of each sample in manifests/samples builds a job whose batch splits over
    nodes x nprocPerNode ranks (the check `submit` and the operator make before creating it)."""
    import yaml

    from eve_operator.jobspec import build_job_spec
    from eve_operator.pipeline import SubmitJob
    from eve_operator.spec import PipelineSpec

    doc = yaml.safe_load((Path(__file__).parents[2] / "manifests/samples" / sample).read_text())
    spec = PipelineSpec.model_validate(doc["spec"])
    for stage in spec.chain():
        job = build_job_spec(doc["metadata"]["name"], spec, SubmitJob(stage, 1, f"x-{stage}", "s3://b/init", None))
        assert job.pod_command[0] == "eve-launch" and job.world_size >= 1
