"""The operator's Prometheus metrics (prometheus-client, on a registry of their own).

    eve_operator_pipelines{phase}                       gauge
    eve_operator_transition_seconds{transition}         histogram: observed -> acted on
    eve_operator_api_requests_total{verb,resource,code} counter
    eve_operator_reconciles_total{outcome}              counter: one per reconcile pass
    eve_operator_goodput_ratio{namespace,pipeline}      gauge: productive / wall time (eve_contract.goodput)
    eve_operator_goodput_seconds{namespace,pipeline,part}  gauge: wall time by part (queued, starting, ...)

Call sites pass labels as keywords (`API_REQUESTS.inc(verb=..., code=...)`); `serve(port)`
exposes /metrics with prometheus-client's own HTTP server.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import prometheus_client as prom

log = logging.getLogger("eve_operator")
prom.disable_created_metrics()  # no *_created series: nothing here is reset but the process
REGISTRY = prom.CollectorRegistry()
_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _Labelled:
    """A labelled prometheus-client metric whose labels are keyword arguments."""

    def __init__(self, kind: type, name: str, help_text: str, labels: tuple[str, ...], **kw: Any):
        self.name = name
        self.metric = kind(name, help_text, labels, registry=REGISTRY, **kw)

    def value(self, suffix: str = "", **labels: str) -> float:
        """The current value of one series (0 when it has none yet); for tests and benchmarks."""
        return REGISTRY.get_sample_value(self.name + suffix, labels) or 0.0

    def total(self, suffix: str = "") -> float:
        """The sum over every series."""
        return sum(s.value for m in self.metric.collect() for s in m.samples if s.name == self.name + suffix)


class Counter(_Labelled):
    def __init__(self, name: str, help_text: str, labels: tuple[str, ...]):
        super().__init__(prom.Counter, name, help_text, labels)  # exposed as name (ends in _total)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self.metric.labels(**labels).inc(amount)


class Gauge(_Labelled):
    def __init__(self, name: str, help_text: str, labels: tuple[str, ...]):
        super().__init__(prom.Gauge, name, help_text, labels)

    def set(self, value: float, **labels: str) -> None:
        self.metric.labels(**labels).set(value)

    def set_all(self, label: str, values: dict[str, float]) -> None:
        """Replace every series: one per key of `values`."""
        self.metric.clear()
        for key, value in values.items():
            self.metric.labels(**{label: key}).set(value)


class Histogram(_Labelled):
    def __init__(self, name: str, help_text: str, labels: tuple[str, ...]):
        super().__init__(prom.Histogram, name, help_text, labels, buckets=_BUCKETS)

    def observe(self, value: float, **labels: str) -> None:
        self.metric.labels(**labels).observe(value)


PIPELINES = Gauge("eve_operator_pipelines", "EvePipelines by phase, as last reconciled.", ("phase",))
TRANSITIONS = Histogram("eve_operator_transition_seconds",
                        "Seconds from observing a stage change (job or manifest) to acting on it.", ("transition",))
API_REQUESTS = Counter("eve_operator_api_requests_total", "Kubernetes API requests made by the handlers.",
                       ("verb", "resource", "code"))
RECONCILES = Counter("eve_operator_reconciles_total", "Reconcile passes, by outcome.", ("outcome",))

GOODPUT = Gauge("eve_operator_goodput_ratio", "Productive step time over wall time of a pipeline, so far.",
                ("namespace", "pipeline"))
GOODPUT_SECONDS = Gauge("eve_operator_goodput_seconds",
                        "A pipeline's wall time by part: queued, starting, productive, data, checkpoint, eval, "
                        "lost, restart, other (docs/trainer.md, Goodput).", ("namespace", "pipeline", "part"))


def record_goodput(namespace: str, pipeline: str, account: Any) -> None:
    """Export one pipeline's eve_contract.goodput.Goodput."""
    from eve_contract.goodput import PARTS

    GOODPUT.set(account.goodput, namespace=namespace, pipeline=pipeline)
    for part in PARTS:
        GOODPUT_SECONDS.set(getattr(account, part), namespace=namespace, pipeline=pipeline, part=part)


def render() -> str:
    """The text exposition of every metric."""
    return prom.generate_latest(REGISTRY).decode()


class Server:
    """prometheus-client's /metrics server (a daemon thread), stopped by `await cleanup()`."""

    def __init__(self, port: int):
        self.httpd, self.thread = prom.start_http_server(port, registry=REGISTRY)
        log.info("metrics on :%d/metrics", port)

    async def cleanup(self) -> None:
        await asyncio.to_thread(self.httpd.shutdown)
        self.httpd.server_close()


async def serve(port: int) -> Server:
    """Serve /metrics on `port` (all interfaces) until `cleanup()`."""
    return await asyncio.to_thread(Server, port)


__all__ = ["API_REQUESTS", "GOODPUT", "GOODPUT_SECONDS", "PIPELINES", "record_goodput", "RECONCILES", "REGISTRY", "TRANSITIONS", "render", "serve"]
