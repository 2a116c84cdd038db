"""The env-to-topology rule: how a pod's or a process's environment says where it stands in a job.
The one definition, used by the node launcher (eve_trainer.launch), the trainer's process group
(eve_trainer.distributed) and the local backend (eve_operator.backends.local). Pure and torch-free.

Node level, what the Kubeflow controllers inject into every pod (PyTorchJob v1.9 and TrainJob v2):

    PET_NNODES          nodes in the job (an integer; an elastic range "1:4" is rejected:
                        eve-platform runs fixed-size jobs)
    PET_NPROC_PER_NODE  processes per node: an integer, "auto", "gpu" or "cpu"
    PET_NODE_RANK       this node's index (v1 also sets RANK = the node rank)
    PET_MASTER_ADDR/PORT  the rendezvous (v1 also sets MASTER_ADDR/PORT)

Process level, what the launcher gives each rank (torchrun's names): RANK, WORLD_SIZE,
LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK, NODE_RANK, MASTER_ADDR, MASTER_PORT.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass


class TopologyError(ValueError):
    """The env does not describe a launchable job; the message names the variable and what is allowed."""


@dataclass(frozen=True)
class Topology:
    """One node's place in a job."""

    nnodes: int
    nproc_per_node: int
    node_rank: int
    master_addr: str
    master_port: int

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    def rank(self, local_rank: int) -> int:
        return self.node_rank * self.nproc_per_node + local_rank

    def rank_env(self, local_rank: int) -> dict[str, str]:
        """The process-level env of one rank (what torchrun would give it)."""
        return {
            "RANK": str(self.rank(local_rank)), "WORLD_SIZE": str(self.world_size),
            "LOCAL_RANK": str(local_rank), "LOCAL_WORLD_SIZE": str(self.nproc_per_node),
            "GROUP_RANK": str(self.node_rank), "NODE_RANK": str(self.node_rank),
            "MASTER_ADDR": self.master_addr, "MASTER_PORT": str(self.master_port),
        }


@dataclass(frozen=True)
class RankInfo:
    """One process's place in a job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def single_node(nproc: int, *, port: int | None = None) -> Topology:
    """A one-machine job of `nproc` ranks with a local rendezvous (the local backend's)."""
    return Topology(nnodes=1, nproc_per_node=nproc, node_rank=0, master_addr="127.0.0.1",
                    master_port=port or free_port())


def _int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name)
    if raw in (None, ""):
        return None
    try:
        return int(str(raw))
    except ValueError:
        if ":" in str(raw):
            raise TopologyError(f"{name}={raw!r} is an elastic range; eve-platform runs fixed-size jobs "
                                "(remove elasticPolicy from the job)") from None
        raise TopologyError(f"{name}={raw!r} is not an integer") from None


def resolve_nproc(value: str, gpu_count: int) -> int:
    """PET_NPROC_PER_NODE / --nproc-per-node -> a count.

    "gpu": one per visible GPU (an error without GPUs). "auto": one per GPU, else 1 on CPU
    (torchrun would start one per CPU core, which no training job wants). "cpu": one per core.
    """
    if value == "gpu":
        if gpu_count < 1:
            raise TopologyError("nprocPerNode=gpu but this node has no visible GPU")
        return gpu_count
    if value == "auto":
        return gpu_count or 1
    if value == "cpu":
        return os.cpu_count() or 1
    try:
        n = int(value)
    except ValueError:
        raise TopologyError(f"nprocPerNode={value!r}: expected an integer, auto, gpu or cpu") from None
    if n < 1:
        raise TopologyError(f"nprocPerNode={n}: must be at least 1")
    return n


def node_topology(env: Mapping[str, str], *, gpu_count: int = 0, nproc_per_node: str | None = None,
                  rendezvous: bool = True) -> Topology:
    """The job's shape from the env the controller injected (table-tested).

    PET_* wins (v1 and v2 both set it). Without PET_NNODES (a hand-written pod) this is one
    node. WORLD_SIZE is ignored: v1 sets it node-level when nprocPerNode is not an integer.
    A multi-node job without a Master (v1 with Workers only) gets no rendezvous address: an error.
    A one-node job without an address gets 127.0.0.1 and a free port (`rendezvous=False`: port 0).
    """
    nproc = resolve_nproc(nproc_per_node or env.get("PET_NPROC_PER_NODE") or "1", gpu_count)
    nnodes = _int(env, "PET_NNODES") or 1  # v1 always sets it; absent: one node
    node_rank = _int(env, "PET_NODE_RANK")
    if node_rank is None:
        # v1 sets RANK = the node rank next to PET_NODE_RANK; v2 sets PET_NODE_RANK only
        node_rank = _int(env, "RANK") if nnodes > 1 else 0
        if node_rank is None:
            raise TopologyError(f"PET_NNODES={nnodes} but neither PET_NODE_RANK nor RANK is set")
    if not 0 <= node_rank < nnodes:
        raise TopologyError(f"node rank {node_rank} is outside PET_NNODES={nnodes}")
    addr = env.get("PET_MASTER_ADDR") or env.get("MASTER_ADDR")
    port = _int(env, "PET_MASTER_PORT") or _int(env, "MASTER_PORT")
    if rendezvous and nnodes > 1 and not (addr and port):
        raise TopologyError(f"a {nnodes}-node job needs a rendezvous address, but PET_MASTER_ADDR/MASTER_ADDR "
                            "and PET_MASTER_PORT/MASTER_PORT are not set (a PyTorchJob needs a Master replica)")
    if not addr or not port:
        addr, port = "127.0.0.1", port or (free_port() if rendezvous else 0)
    return Topology(nnodes=nnodes, nproc_per_node=nproc, node_rank=node_rank, master_addr=addr,
                    master_port=port)


def rank_info(env: Mapping[str, str]) -> RankInfo:
    """This process's rank: from the process-level env (the launcher's, torchrun's), else derived
    from the node-level PET_* env with the same rule as `node_topology`, else a single process."""
    local_rank = _int(env, "LOCAL_RANK") or 0
    if "RANK" in env:
        rank, world = _int(env, "RANK") or 0, _int(env, "WORLD_SIZE") or 1
    elif "PET_NNODES" in env or "PET_NPROC_PER_NODE" in env:
        topo = node_topology(env, gpu_count=gpu_count(env), rendezvous=False)
        rank, world = topo.rank(local_rank), topo.world_size
    else:
        rank, world = 0, 1
    if not 0 <= rank < world:
        raise TopologyError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return RankInfo(rank=rank, world_size=world, local_rank=local_rank)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (a local rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gpu_count(env: Mapping[str, str] | None = None) -> int:
    """Visible GPUs without importing torch: CUDA_VISIBLE_DEVICES, else /dev/nvidia<N>."""
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        return sum(1 for d in os.listdir("/dev") if d.startswith("nvidia") and d[6:].isdigit())
    except OSError:
        return 0


__all__ = ["TopologyError", "Topology", "RankInfo", "single_node", "resolve_nproc", "node_topology", "rank_info",
           "free_port", "gpu_count"]
