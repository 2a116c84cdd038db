"""The MLflow logger against a real server that is unreachable at first: training calls never
block or fail, and everything logged meanwhile arrives once the server answers."""

from __future__ import annotations

import time
from urllib.parse import urlparse

from fixtures.services import free_port
from fixtures.tcp_proxy import TcpForwarder

from eve_trainer.metrics import MLflowLogger


def test_metrics_logged_during_an_outage_arrive_later(mlflow_server):
    from mlflow.tracking import MlflowClient

    target = urlparse(mlflow_server.tracking_uri)
    proxy = TcpForwarder(free_port(), (target.hostname, target.port))
    logger = MLflowLogger(tracking_uri=f"http://127.0.0.1:{proxy.port}", experiment="outage", run_name="p/sft",
                          tags={"eve.stage": "sft"}, system_metrics=False, max_backoff_s=0.5)
    try:
        t0 = time.monotonic()
        logger.log_params({"optim": {"lr": 0.001}})
        for step in range(1, 6):
            logger.log_metrics({"loss": 1.0 / step}, step=step)
        assert time.monotonic() - t0 < 0.5  # never blocks the training loop
        assert logger.wait_for_run(1.5) is None  # the server is down: no run yet
        proxy.start()
        run_id = logger.wait_for_run(30)
        assert run_id is not None
        logger.close("FINISHED", timeout_s=30)
        client = MlflowClient(mlflow_server.tracking_uri)
        run = client.get_run(run_id)
        history = sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.step)
        assert [(m.step, m.value) for m in history] == [(s, 1.0 / s) for s in range(1, 6)]
        assert run.data.params["optim.lr"] == "0.001" and run.data.tags["eve.stage"] == "sft"
        assert run.info.status == "FINISHED"
    finally:
        proxy.stop()
