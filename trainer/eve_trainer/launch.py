"""`eve-launch -- eve-train <stage> ...`: start this node's ranks, the way a pod must.

A Kubernetes pod is a node, not a rank. The Kubeflow training operator v1 (PyTorchJob) and
Trainer v2 (TrainJob) inject node-level env into every pod (kubeflow-pytorchjob.md §1.10,
pkg/controller.v1/pytorch/envvar.go; v2: the torch plugin's PET_* env):

    PET_NNODES          nodes in the job                 (v1: Master + Workers)
    PET_NPROC_PER_NODE  processes per node: an integer, "auto", "gpu" or "cpu"
    PET_NODE_RANK       this node's index                (v1 also sets RANK = node rank)
    PET_MASTER_ADDR/PORT  the rendezvous                 (v1 also sets MASTER_ADDR/PORT)
    WORLD_SIZE          v1: nodes x nproc when nproc is an integer, else just nodes

The rule that reads this env is eve_contract.topology (one definition; the trainer's process
group and the local backend use it too). This launcher turns that into nproc child processes with the process-level RANK, WORLD_SIZE,
LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT that torch.distributed reads.

Why not torchrun, which reads the same PET_* variables: torchrun reports any failed child as
exit 1, so a trainer's exit 2 ("your config is wrong, do not retry") would become a retryable
failure, and on SIGTERM it kills the children after a fixed 30 s instead of letting them finish a
checkpoint within the pod's grace period. Exit codes are our contract with the operator
(docs/contracts.md), so the launcher is ours; it is small and torch-free.

Exit code of the launcher (what the pod's container reports):
    0    every rank finished
    2    some rank exited 2 (a user error: permanent)
    143  stopped by SIGTERM (the ranks checkpointed first), or a rank exited 143
    128+n  a rank was killed by signal n (137: SIGKILL, e.g. the OOM killer)
    else the first failing rank's code (retryable)
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from eve_contract.exit_codes import EXIT_SIGTERM, EXIT_USER, exit_code
from eve_contract.topology import Topology, TopologyError, gpu_count, node_topology

#: Seconds the other ranks get to exit after one rank failed (their peer is gone, so a final
#: checkpoint cannot complete; the previous complete checkpoint stays the one to resume from).
FAILURE_GRACE_S = 30.0
#: Seconds between SIGUSR1 (each rank writes its stacks) and forwarding SIGTERM.
STACK_DUMP_S = 1.0


def combine(codes: Sequence[int], *, first_failure: int | None, stopped: bool) -> int:
    """The launcher's exit code from its ranks' codes (see the module doc)."""
    if all(c == 0 for c in codes):
        return 0
    if EXIT_USER in codes:
        return EXIT_USER
    if stopped:
        return EXIT_SIGTERM
    return first_failure if first_failure is not None else next(c for c in codes if c)


class NodeLauncher:
    """Starts the ranks, forwards SIGTERM, stops the others when one fails, reports one code."""

    def __init__(self, topo: Topology, command: list[str], *, log_dir: str | None = None,
                 failure_grace_s: float = FAILURE_GRACE_S):
        self.topo, self.command, self.log_dir = topo, command, log_dir
        self.failure_grace_s = failure_grace_s
        self.procs: list[subprocess.Popen] = []
        self.stopped = False

    def say(self, message: str) -> None:
        print(f"eve-launch[node {self.topo.node_rank}]: {message}", file=sys.stderr, flush=True)

    def start(self, base_env: Mapping[str, str]) -> None:
        t = self.topo
        first, last = t.rank(0), t.rank(t.nproc_per_node - 1)
        self.say(f"node {t.node_rank + 1} of {t.nnodes}: starting ranks {first}-{last} of world size "
                 f"{t.world_size}; rendezvous at {t.master_addr}:{t.master_port}")
        for local in range(t.nproc_per_node):
            env = dict(base_env, **t.rank_env(local))
            out = None
            if self.log_dir:
                os.makedirs(self.log_dir, exist_ok=True)
                out = open(os.path.join(self.log_dir, f"rank-{t.rank(local)}.log"), "ab")  # noqa: SIM115
            # same process group as the launcher: a kubelet's SIGKILL of the pod reaches them all
            self.procs.append(subprocess.Popen(self.command, env=env, stdout=out,
                                               stderr=subprocess.STDOUT if out else None))
            if out is not None:
                out.close()

    def signal_all(self, sig: int) -> None:
        """To each rank's main process only: its data-loader workers must outlive its checkpoint."""
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.send_signal(sig)
                except ProcessLookupError:
                    pass

    def on_sigterm(self, signum: int, _frame: object) -> None:
        if not self.stopped:
            self.stopped = True
            self.say(f"got {signal.Signals(signum).name}: each rank's Python stacks go to the log (SIGUSR1), "
                     f"then SIGTERM to {len(self.procs)} rank(s), which checkpoint and exit")
            # the stacks first: when the operator stops a stalled job, they name the hang (the
            # trainer's faulthandler writes them even from a rank blocked in a collective)
            self.signal_all(signal.SIGUSR1)
            # a SIGTERM with its default action (a rank still starting up) is fatal in the kernel
            # at once, before the SIGUSR1 handler ran: give the dumps a moment (the pod's
            # termination grace is minutes)
            time.sleep(STACK_DUMP_S)
        self.signal_all(signal.SIGTERM)

    def wait(self) -> int:
        first_failure: int | None = None
        kill_at: float | None = None
        while True:
            codes = [p.poll() for p in self.procs]
            if all(c is not None for c in codes):
                break
            for local, c in enumerate(codes):
                if c not in (None, 0) and first_failure is None and not self.stopped:
                    first_failure = exit_code(c)
                    self.say(f"rank {self.topo.rank(local)} exited with code {first_failure}; stopping the "
                             f"other ranks of this node (SIGKILL after {self.failure_grace_s:.0f} s)")
                    self.signal_all(signal.SIGTERM)
                    kill_at = time.monotonic() + self.failure_grace_s
            if kill_at is not None and time.monotonic() > kill_at:
                self.signal_all(signal.SIGKILL)
                kill_at = None
            try:
                next(p for p in self.procs if p.poll() is None).wait(timeout=0.2)
            except (subprocess.TimeoutExpired, StopIteration):
                pass
        final = [exit_code(p.returncode) for p in self.procs]
        code = combine(final, first_failure=first_failure, stopped=self.stopped)
        self.say(f"ranks exited with {final}; exit {code}")
        return code


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="eve-launch",
        description="Start this node's ranks from the env a PyTorchJob/TrainJob pod gets (PET_*, RANK, ...).",
        epilog="example: eve-launch -- eve-train --preset tiny prealign output=s3://bkt/eve")
    parser.add_argument("--nproc-per-node", help="override PET_NPROC_PER_NODE (integer, auto, gpu, cpu)")
    parser.add_argument("--log-dir", help="write each rank's output to <dir>/rank-<r>.log (default: inherit)")
    parser.add_argument("--failure-grace-s", type=float, default=FAILURE_GRACE_S,
                        help="seconds the other ranks get after one failed, before SIGKILL")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the rank command")
    args = parser.parse_args(argv)
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if not args.command:
        parser.error("no command: eve-launch [options] -- <command> ...")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        topo = node_topology(os.environ, gpu_count=gpu_count(os.environ), nproc_per_node=args.nproc_per_node)
    except TopologyError as err:
        print(f"eve-launch: error: {err}", file=sys.stderr)
        return EXIT_USER
    launcher = NodeLauncher(topo, args.command, log_dir=args.log_dir, failure_grace_s=args.failure_grace_s)
    signal.signal(signal.SIGTERM, launcher.on_sigterm)
    signal.signal(signal.SIGINT, launcher.on_sigterm)
    try:
        launcher.start(os.environ)
    except OSError as err:
        print(f"eve-launch: error: cannot start {args.command[0]!r}: {err}", file=sys.stderr)
        launcher.signal_all(signal.SIGKILL)
        return EXIT_USER if isinstance(err, FileNotFoundError) else 1
    return launcher.wait()


if __name__ == "__main__":
    sys.exit(main())
