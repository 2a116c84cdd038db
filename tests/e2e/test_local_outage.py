"""Failure classes through the real CLI on the local backend: an object store that is down for
the first 20 s of a stage is the world's fault (wait, retry, succeed); a bucket that does not
exist is the user's (exit 2 at once, naming the URL, no retry)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from support.tcp_proxy import TcpForwarder

from eve_contract import layout
from eve_contract.storage import open_store
from eve_contract.topology import free_port

pytestmark = pytest.mark.slow
OUTAGE_S = 20.0


def cli(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eve_operator.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def dataset(bucket: str, s3_env) -> str:  # noqa: ANN001
    from eve_trainer.data import write_synthetic_dataset

    url = f"s3://{bucket}/datasets/captions"
    write_synthetic_dataset(url, num_samples=16, kind="caption", seed=0, endpoint_url=s3_env.endpoint_url)
    return url


def local_env(tmp_path: Path, s3_env, endpoint: str) -> dict[str, str]:  # noqa: ANN001
    return {**os.environ, **s3_env.env(), "EVE_PLATFORM_HOME": str(tmp_path / "home"),
            "EVE_PLATFORM_BACKEND": "local", "OMP_NUM_THREADS": "1", "AWS_ENDPOINT_URL": endpoint,
            "EVE_S3_ENDPOINT": endpoint}


def test_an_object_store_down_for_the_first_20_s_is_waited_for(tmp_path, bucket, dataset, s3_env) -> None:  # noqa: ANN001
    target = urlparse(s3_env.endpoint_url)
    proxy = TcpForwarder(free_port(), (target.hostname, target.port))  # refuses until started
    comes_back = threading.Timer(OUTAGE_S, proxy.start)
    comes_back.start()
    t0 = time.monotonic()
    try:
        result = cli("submit", "stage=prealign", "until=prealign", "name=outage", f"output=s3://{bucket}/runs",
                     f"data={dataset}", f"endpoint_url={proxy.url}", "max_steps=2", "nproc_per_node=1",
                     env=local_env(tmp_path, s3_env, proxy.url))
    finally:
        comes_back.cancel()
        proxy.stop()
    took = time.monotonic() - t0
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert took > OUTAGE_S  # it really waited out the outage
    assert "pipeline outage: Succeeded" in result.stdout
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "home").rglob("rank-*.log"))
    assert "waiting for the object store" in result.stderr + logs, result.stderr[-3000:] + logs[-3000:]
    store = open_store(f"s3://{bucket}/runs", endpoint_url=s3_env.endpoint_url)
    assert layout.stage_complete(store, "outage", "prealign") is not None


def test_a_missing_bucket_is_exit_2_at_once_naming_the_url(tmp_path, dataset, s3_env) -> None:  # noqa: ANN001
    t0 = time.monotonic()
    result = cli("submit", "stage=prealign", "until=prealign", "name=nobucket", "output=s3://no-such-bucket-eve/runs",
                 f"data={dataset}", "max_steps=2", "nproc_per_node=1",
                 env=local_env(tmp_path, s3_env, s3_env.endpoint_url))
    out = result.stdout + result.stderr
    assert result.returncode == 2, out[-4000:]
    assert "s3://no-such-bucket-eve" in out and "Traceback" not in result.stderr
    assert "attempt 2" not in out.lower()  # never retried
    assert time.monotonic() - t0 < 120
