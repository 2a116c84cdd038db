"""The `eve-operator` entry point, its metrics and health endpoints, and the torch-free rule."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import urllib.request
from typing import Any

import kopf.testing
import pytest
from operator_harness import Cluster, base_spec, wait_for
from fixtures.services import free_port

from eve_operator import handlers, metrics, run


def test_flags_map_to_kopf_run(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(kopf, "run", lambda **kwargs: seen.update(kwargs))
    monkeypatch.setattr(handlers, "CONFIG", handlers.Config())
    assert run.main(["-n", "team-a", "--namespace", "team-b", "--metrics-port", "9100", "--health-port", "9101",
                     "--resync-seconds", "5", "--verify", "size"]) == 0
    assert seen == {"standalone": True, "clusterwide": False, "namespaces": ["team-a", "team-b"],
                    "liveness_endpoint": "http://0.0.0.0:9101/healthz"}
    assert (handlers.CONFIG.metrics_port, handlers.CONFIG.resync_s, handlers.CONFIG.deep_verify) == (9100, 5.0, False)


def test_a_scope_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run.parse_args([])
    assert "--all-namespaces" in capsys.readouterr().err
    assert run.parse_args(["--all-namespaces"]).all_namespaces


def test_metrics_and_healthz(cluster: Cluster, s3_env: Any, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    metrics_port, health_port = free_port(), free_port()
    monkeypatch.setattr(handlers, "CONFIG", handlers.CONFIG)  # restored after the test
    handlers.configure(handlers.Config(metrics_port=metrics_port))
    args = ["run", "--standalone", "--all-namespaces", f"--liveness=http://127.0.0.1:{health_port}/healthz",
            "-m", "eve_operator.handlers"]
    with kopf.testing.KopfRunner(args, timeout=30):
        cluster.create_pipeline("observed", base_spec(f"s3://{bucket}/eve"))
        wait_for(lambda: "observed-prealign" in cluster.jobs())

        def scrape() -> str:
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).read().decode()
            except OSError:
                return ""

        text = wait_for(lambda: (t := scrape()) and 'eve_operator_pipelines{phase="Running"} 1' in t and t)
        assert 'eve_operator_api_requests_total{code="201",resource="pytorchjobs",verb="create"}' in text
        assert "eve_operator_transition_seconds" in text
        health = wait_for(lambda: _get(f"http://127.0.0.1:{health_port}/healthz"))
        assert health.status == 200


def test_prometheus_client_serves_the_metrics_until_cleanup() -> None:
    port = free_port()
    metrics.RECONCILES.inc(outcome="ok")

    async def scrape_then_stop() -> str:
        server = await metrics.serve(port)
        try:
            return (await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")).read().decode()
        finally:
            await server.cleanup()

    text = asyncio.run(scrape_then_stop())
    assert "# TYPE eve_operator_reconciles_total counter" in text
    assert f'eve_operator_reconciles_total{{outcome="ok"}} {metrics.RECONCILES.value(outcome="ok")}' in text
    assert _get(f"http://127.0.0.1:{port}/metrics") is None  # the port is closed again


def _get(url: str) -> Any:
    try:
        return urllib.request.urlopen(url, timeout=2)
    except OSError:
        return None


def test_operator_is_torch_free() -> None:
    code = "import eve_operator.handlers, eve_operator.backends.kubernetes, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_importing_the_handlers_reads_no_env_and_registers_no_trainjob_watch() -> None:
    """Import only declares; `configure` (the runner's call) reads the settings and adds the watch."""
    code = (
        "import kopf, eve_operator.handlers as h\n"
        "ids = lambda: [x.id for x in kopf.get_default_registry()._watching.get_all_handlers()]\n"
        "assert 'trainjob_changed' not in ids() and h.CONFIG == h.Config(), (ids(), h.CONFIG)\n"
        "h.configure()\n"
        "assert 'trainjob_changed' in ids() and h.CONFIG.resync_s == 7.0, (ids(), h.CONFIG)\n")
    env = {**os.environ, "EVE_TRAINJOB_RUNTIME": "eve-torch", "EVE_OPERATOR_RESYNC_S": "7"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_one_default_for_each_setting() -> None:
    assert run.parse_args(["-A"]).metrics_port == handlers.Config().metrics_port == 8080
    assert run.parse_args(["-A"]).resync_seconds == handlers.Config().resync_s
