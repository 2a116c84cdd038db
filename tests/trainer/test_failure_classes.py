"""Failure classes through `eve-train` against real SeaweedFS: the user's faults exit 2 at once
naming the URL; the world's faults (an S3 outage, a dead peer) exit 1 or are ridden out; a
black-holed S3 connection costs one read timeout; heartbeats and the stack dump."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from support.eve_trainer_harness import REPO, launch
from support.services import S3Server, free_port, stop, weed_binary
from support.tcp_proxy import TcpForwarder

from eve_contract import layout
from eve_contract.storage import S3Store, s3_client

pytestmark = pytest.mark.slow

TINY = ["global_batch_size=4", "micro_batch_size=4", "max_steps=2", "checkpoint.every_steps=2",
        "data.num_workers=0", "progress=json", "mlflow.system_metrics=false"]


@pytest.fixture(scope="module")
def locked_s3(s3_server: S3Server, tmp_path_factory) -> str:  # noqa: ANN001
    """A second S3 gateway on the session's filer that checks credentials: `admin` may do
    everything, `reader` may only read the bucket `other`; any other key is unknown."""
    d = tmp_path_factory.mktemp("locked-s3")
    cfg = d / "identities.json"
    cfg.write_text(json.dumps({"identities": [
        {"name": "admin", "credentials": [{"accessKey": "admin", "secretKey": "adminsecret"}],
         "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
        {"name": "reader", "credentials": [{"accessKey": "reader", "secretKey": "readersecret"}],
         "actions": ["Read:other", "List:other"]}]}))
    arg = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in s3_server.proc.args if a.startswith("-") and "=" in a}
    port = free_port()
    proc = subprocess.Popen(
        [weed_binary(), "s3", f"-filer=127.0.0.1:{arg['-filer.port']}.{arg['-filer.port.grpc']}", f"-port={port}",
         f"-config={cfg}", f"-port.grpc={free_port()}", "-port.iceberg=0", "-port.lance=0", "-ip.bind=127.0.0.1"],
        stdout=open(d / "gateway.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="admin",
                          aws_secret_access_key="adminsecret")
    deadline = time.monotonic() + 60
    while True:
        try:
            client.list_buckets()
            break
        except Exception:  # noqa: BLE001 - not up yet
            if time.monotonic() > deadline or proc.poll() is not None:
                stop(proc)
                raise RuntimeError((d / "gateway.log").read_text()[-2000:]) from None
            time.sleep(0.2)
    yield endpoint
    stop(proc)


def _env(s3: dict[str, str], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "EVE_S3_ENDPOINT"}
    return dict(env, **{**s3, **extra}, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false",
                AWS_EC2_METADATA_DISABLED="true")


def _run_all(cases: dict[str, tuple[list[str], dict[str, str]]]) -> dict[str, tuple[int, str, float]]:
    t0 = time.monotonic()
    procs = {name: subprocess.Popen([sys.executable, "-m", "eve_trainer", *args], cwd=REPO, text=True,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
             for name, (args, env) in cases.items()}
    out = {}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=180)
        out[name] = (proc.returncode, err, time.monotonic() - t0)
    return out


def test_users_faults_exit_2_at_once_and_outages_exit_1(tmp_path, s3_server, locked_s3, e2e_bucket, dataset_url):
    s3 = s3_server.env()
    locked = dict(s3, AWS_ENDPOINT_URL=locked_s3, EVE_S3_ENDPOINT=locked_s3)
    dead = f"http://127.0.0.1:{free_port()}"
    out = f"output=s3://{e2e_bucket}/classes"
    data = f"data.urls=[{dataset_url}]"
    cases = {
        "no_bucket": (["sft", data, "output=s3://no-such-bucket/runs"], _env(s3)),
        "denied": (["sft", data, out], _env(locked, AWS_ACCESS_KEY_ID="reader", AWS_SECRET_ACCESS_KEY="readersecret")),
        "unknown_key": (["sft", data, out], _env(locked)),
        "no_credentials": (["sft", data, out], _env({k: v for k, v in s3.items() if "KEY" not in k})),
        "file_tracking": (["sft", data, out, "mlflow.tracking_uri=file:///tmp/mlruns"], _env(s3)),
        "dead_s3": (["sft", data, out, "storage.wait_s=3"], _env(s3, AWS_ENDPOINT_URL=dead, EVE_S3_ENDPOINT=dead)),
    }
    expect = {
        "no_bucket": (2, "output: bucket of s3://no-such-bucket/runs does not exist"),
        "denied": (2, f"output: bucket of s3://{e2e_bucket}/classes is not accessible with these credentials"),
        "unknown_key": (2, f"s3://{e2e_bucket}/classes is not accessible with these credentials"),
        "no_credentials": (2, f"output: s3://{e2e_bucket}/classes: no S3 credentials found"),
        "file_tracking": (2, "mlflow.tracking_uri='file:///tmp/mlruns': this is a file store, which MLflow 3 "
                             "refuses; use a URI of the scheme http, https, databricks, sqlite"),
        "dead_s3": (1, f"output: cannot reach s3://{e2e_bucket}/classes at {dead}"),
    }
    results = _run_all(cases)
    for name, (code, err, _) in results.items():
        assert (code, expect[name][1] in err) == (expect[name][0], True), (name, err[-2000:])
        assert "Traceback" not in err, (name, err[-2000:])
    # permanent: no retry before the error (missing credentials used to be retried ~8 s)
    for name in ("no_bucket", "denied", "unknown_key", "no_credentials"):
        assert "waiting for" not in results[name][1] and "reconnecting" not in results[name][1], name
    # transient: waited for storage.wait_s, said what it waited for, then gave up retryably
    assert "waiting for s3://" in results["dead_s3"][1] and "gave up after" in results["dead_s3"][1]


def test_s3_down_at_start_up_is_waited_for_then_the_stage_trains(tmp_path, s3_server, e2e_bucket, dataset_url):
    """The object store restarts while a stage starts: connection refused until the proxy
    opens; the rank waits (saying so), then trains. Heartbeats carry the attempt and step."""
    target = urlparse(s3_server.endpoint_url)
    proxy = TcpForwarder(free_port(), (target.hostname, target.port))
    env = dict(s3_server.env(), AWS_ENDPOINT_URL=proxy.url, EVE_S3_ENDPOINT=proxy.url, EVE_ATTEMPT="3")
    ranks = launch(["pretrain", f"data.urls=[{dataset_url}]", f"output=s3://{e2e_bucket}/outage", "pipeline=p",
                    "heartbeat.every_s=1", *TINY], world=1, log_dir=tmp_path, env=env)
    try:
        deadline = time.monotonic() + 120
        while "waiting for s3://" not in ranks.output(0):
            assert ranks.procs[0].poll() is None and time.monotonic() < deadline, ranks.tail()
            time.sleep(0.2)
        proxy.start()
        assert ranks.wait(240) == [0], ranks.tail()
    finally:
        ranks.kill()
        proxy.stop()
    store = s3_server.open_store(f"s3://{e2e_bucket}/outage")
    (beat,) = layout.read_heartbeats(store, "p", "pretrain")
    assert (beat.rank, beat.step, beat.total_steps, beat.attempt, beat.phase) == (0, 2, 2, 3, "done")
    assert beat.loss is not None and beat.tokens_per_s and abs(beat.time - time.time()) < 120
    assert layout.stage_complete(store, "p", "pretrain") is not None


def test_black_holed_read_costs_one_read_timeout_then_resumes(s3_server, bucket):
    """A connection that stops answering mid-read: the stream gives up on it after the read
    timeout and resumes at the byte it reached on a new connection. Same bytes, one reconnect."""
    blob = os.urandom(8 << 20)
    store = s3_server.open_store(f"s3://{bucket}/bh")
    store.put_bytes("obj", blob)
    target = urlparse(s3_server.endpoint_url)
    proxy = TcpForwarder(free_port(), (target.hostname, target.port))
    proxy.start()
    try:
        slow = S3Store(bucket, "bh", endpoint_url=proxy.url)
        slow.client = s3_client(proxy.url, read_timeout_s=1.0)  # the default (20 s) is measured in benchmarks
        with slow.open_read("obj") as stream:
            head = stream.read(1 << 20)
            proxy.blackhole()
            t0 = time.monotonic()
            rest = b"".join(iter(lambda: stream.read(1 << 20), b""))
            lost = time.monotonic() - t0
        assert head + rest == blob and stream.reconnects == 1
        assert 1.0 <= lost < 5.0, lost
    finally:
        proxy.stop()


def test_a_hung_rank_dumps_its_stacks_on_sigusr1_and_its_peer_times_out(tmp_path, s3_server, e2e_bucket,
                                                                        dataset_url):
    """debug.hang_at_step blocks rank 1 before step 2: its heartbeat keeps coming with step 1;
    SIGUSR1 writes its stacks to its log; rank 0's collective times out (exit 1, retryable)."""
    args = ["pretrain", f"data.urls=[{dataset_url}]", f"output=s3://{e2e_bucket}/hang", "pipeline=h",
            "global_batch_size=8", "micro_batch_size=4", "max_steps=3", "checkpoint.every_steps=10",
            "checkpoint.export=false", "data.num_workers=0", "progress=json", "heartbeat.every_s=1",
            "debug.hang_at_step=1", "debug.hang_rank=1", "distributed.timeout_s=15"]
    ranks = launch(args, world=2, log_dir=tmp_path, env=s3_server.env())
    store = s3_server.open_store(f"s3://{e2e_bucket}/hang")
    try:
        deadline = time.monotonic() + 180
        while "blocks forever" not in ranks.output(1):
            assert time.monotonic() < deadline and ranks.procs[1].poll() is None, ranks.tail()
            time.sleep(0.2)
        ranks.signal(1, signal.SIGUSR1)
        assert ranks.procs[0].wait(120) == 1, ranks.tail()
        beats = {b.rank: b for b in layout.read_heartbeats(store, "h", "pretrain")}
        assert beats[1].step == 1 and beats[1].phase == "train"
        assert ranks.procs[1].poll() is None  # still hung: only the stall handling ends it
        dump = ranks.output(1)
        assert "Thread 0x" in dump and "in hang_forever" in dump, dump[-3000:]  # faulthandler's format
        assert "timed out" in ranks.output(0).lower() or "timeout" in ranks.output(0).lower(), ranks.tail()
    finally:
        ranks.kill()


def test_the_cli_refuses_a_file_tracking_uri_up_front(tmp_path):
    """The CLI validates with the trainer's config models: a file store is refused before anything
    is submitted, naming the allowed schemes."""
    cli = Path(sys.executable).parent / "eve-platform"
    result = subprocess.run([str(cli), "submit", "--local", "--dry-run", "stage=sft", "tracking_uri=file:///tmp/mlruns",
                             f"data={tmp_path}"], capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, EVE_PLATFORM_HOME=str(tmp_path / "home")))
    assert result.returncode == 2, result.stderr
    assert "mlflow.tracking_uri='file:///tmp/mlruns': this is a file store, which MLflow 3 refuses; use a URI of " \
           "the scheme http, https, databricks, sqlite" in result.stderr + result.stdout


def test_heartbeats_never_block_or_fail_the_run(tmp_path):
    """A beat is written at once and on phase changes; a store that cannot be written only logs."""
    from eve_contract.storage import LocalStore
    from eve_trainer.heartbeat import HeartbeatWriter

    store = LocalStore(tmp_path / "store")
    beat = HeartbeatWriter(store, pipeline="p", stage="sft", rank=3, every_s=60, attempt=2)
    beat.start()
    beat.loop_started(0)
    beat.update(step=0, total_steps=10, phase="train")
    beat.update(step=4, loss=1.5, tokens_per_s=100.0)
    beat.validated(step=4, loss=1.75)
    for part, seconds in (("step", 0.5), ("data", 0.25), ("step", 0.5), ("checkpoint", 2.0)):
        beat.add_time(part, seconds)
    beat.close("done")
    (got,) = layout.read_heartbeats(store, "p", "sft")
    assert (got.rank, got.step, got.total_steps, got.attempt, got.phase, got.loss) == (3, 4, 10, 2, "done", 1.5)
    # goodput's facts: the process start, the loop start and the cumulative timers
    assert got.started_at is not None and got.started_at <= got.loop_at <= got.time and got.start_step == 0
    assert got.timers == {"step": 1.0, "data": 0.25, "checkpoint": 2.0}
    assert got.eta_s is not None and beat.writes >= 2
    assert (got.val_loss, got.val_step) == (1.75, 4)  # the newest validation pass rides in the beat

    class Stuck(LocalStore):  # a store whose writes hang (a black-holed S3)
        release = __import__("threading").Event()

        def put_bytes(self, key: str, data: bytes) -> None:
            self.release.wait(30)
            raise OSError("store unreachable")

    stuck = HeartbeatWriter(Stuck(tmp_path / "stuck"), pipeline="p", stage="sft", rank=0, every_s=60)
    stuck.start()  # its thread is now blocked in put_bytes
    t0 = time.monotonic()
    for step in range(100):
        stuck.update(step=step, total_steps=100, phase="train" if step % 2 else "checkpoint")
    assert time.monotonic() - t0 < 2.0  # the training thread never waits for the store
    Stuck.release.set()
    stuck.close("done", timeout_s=10)
    assert stuck.writes == 0  # every write failed, nothing was raised
