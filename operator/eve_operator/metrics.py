"""A few Prometheus metrics, in the text exposition format (no client library needed).

    eve_operator_pipelines{phase}                       gauge
    eve_operator_transition_seconds{transition}         histogram: observed -> acted on
    eve_operator_api_requests_total{verb,resource,code} counter
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable

_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LabelKey = tuple[tuple[str, str], ...]


def _labels(key: LabelKey, extra: Iterable[tuple[str, str]] = ()) -> str:
    pairs = [*key, *extra]
    if not pairs:
        return ""
    escaped = (v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for _, v in pairs)
    return "{" + ",".join(f'{k}="{v}"' for (k, _), v in zip(pairs, escaped, strict=True)) + "}"


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str):
        self.name, self.help = name, help_text
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str):
        super().__init__(name, help_text)
        self.values: dict[LabelKey, float] = defaultdict(float)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        with self._lock:
            self.values[tuple(sorted(labels.items()))] += amount

    def total(self) -> float:
        return sum(self.values.values())

    def render(self) -> list[str]:
        with self._lock:
            return self.header() + [f"{self.name}{_labels(k)} {v}" for k, v in sorted(self.values.items())]


class Gauge(Counter):
    kind = "gauge"

    def set_all(self, label: str, values: dict[str, float]) -> None:
        with self._lock:
            self.values = defaultdict(float, {((label, k),): v for k, v in values.items()})


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...] = _BUCKETS):
        super().__init__(name, help_text)
        self.buckets = buckets
        self.series: dict[LabelKey, list[float]] = {}  # bucket counts..., +Inf, sum

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            row = self.series.setdefault(key, [0.0] * (len(self.buckets) + 2))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    row[i] += 1
            row[-2] += 1
            row[-1] += value

    def render(self) -> list[str]:
        lines = self.header()
        with self._lock:
            for key, row in sorted(self.series.items()):
                for bound, count in zip(self.buckets, row, strict=False):
                    lines.append(f"{self.name}_bucket{_labels(key, [('le', str(bound))])} {count}")
                lines.append(f"{self.name}_bucket{_labels(key, [('le', '+Inf')])} {row[-2]}")
                lines.append(f"{self.name}_sum{_labels(key)} {row[-1]}")
                lines.append(f"{self.name}_count{_labels(key)} {row[-2]}")
        return lines


PIPELINES = Gauge("eve_operator_pipelines", "EvePipelines by phase, as last reconciled.")
TRANSITIONS = Histogram("eve_operator_transition_seconds",
                        "Seconds from observing a stage change (job or manifest) to acting on it.")
API_REQUESTS = Counter("eve_operator_api_requests_total", "Kubernetes API requests made by the handlers.")
RECONCILES = Counter("eve_operator_reconciles_total", "Reconcile passes, by outcome.")
REGISTRY = (PIPELINES, TRANSITIONS, API_REQUESTS, RECONCILES)


def render() -> str:
    return "\n".join(line for metric in REGISTRY for line in metric.render()) + "\n"


__all__ = ["Counter", "Gauge", "Histogram", "PIPELINES", "TRANSITIONS", "API_REQUESTS", "RECONCILES", "render"]
