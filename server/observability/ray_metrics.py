"""headserve's metrics in a Ray Serve replica, recorded through Ray's own metrics.

A replica has no port of its own to serve /metrics on (several share a node), so it records
the same metrics as `headserve serve` (metrics.py) as `ray.util.metrics`: Ray's agent on each
node exports every actor's, prefixed `ray_` (`ray_headserve_calls_total`...), on the node's
metrics port (`ray start --metrics-export-port`), which Ray's Prometheus setup scrapes. Each
series carries Ray's own labels too (its node, worker and replica).

What prometheus_client reads when scraped (a gauge's function, a counter another object
keeps) is pushed to Ray by `refresh`, which the replica runs every `REFRESH_SECONDS`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

REFRESH_SECONDS = 2.0


class _Bound:
    """One label set of a Ray metric, as prometheus_client's `.labels(...)` gives it."""

    def __init__(self, metric: Any, tags: dict[str, str]) -> None:
        self._metric, self._tags = metric, tags

    def inc(self, amount: float = 1.0) -> None:
        if amount > 0:  # Ray's counters refuse 0
            self._metric.inc(amount, tags=self._tags)

    def observe(self, value: float) -> None:
        self._metric.observe(value, tags=self._tags)

    def set(self, value: float) -> None:
        self._metric.set(value, tags=self._tags)


class _Metric(_Bound):
    """A Ray metric with prometheus_client's surface: `.labels(*values)`, or used bare."""

    def __init__(self, metric: Any, labels: Sequence[str]) -> None:
        super().__init__(metric, {})
        self._labels = tuple(labels)
        self.read: Callable[[], float] | None = None  # a gauge's function (set_function)

    def labels(self, *values: str) -> _Bound:
        return _Bound(self._metric, dict(zip(self._labels, map(str, values), strict=True)))

    def set_function(self, read: Callable[[], float]) -> None:
        self.read = read


class RayInstruments:
    """metrics.Instruments over `ray.util.metrics`; only inside a Ray worker."""

    def __init__(self) -> None:
        from ray.util import metrics

        self._ray = metrics
        self._gauges: list[_Metric] = []
        self._read: list[tuple[_Metric, Callable[[], int]]] = []
        self._counted: dict[int, int] = {}

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> _Metric:
        return _Metric(
            self._ray.Counter(name, description=documentation, tag_keys=tuple(labels)), labels
        )

    def histogram(
        self, name: str, documentation: str, buckets: Sequence[float], labels: Sequence[str] = ()
    ) -> _Metric:
        metric = self._ray.Histogram(
            name, description=documentation, boundaries=list(buckets), tag_keys=tuple(labels)
        )
        return _Metric(metric, labels)

    def gauge(self, name: str, documentation: str) -> _Metric:
        gauge = _Metric(self._ray.Gauge(name, description=documentation), ())
        self._gauges.append(gauge)
        return gauge

    def read_counter(self, name: str, documentation: str, read: Callable[[], int]) -> None:
        self._read.append((self.counter(name, documentation), read))

    def refresh(self) -> None:
        """Push what prometheus_client would read at a scrape: gauges' functions, and the
        growth of counters kept elsewhere."""
        for gauge in self._gauges:
            if gauge.read is not None:
                gauge.set(gauge.read())
        for index, (counter, read) in enumerate(self._read):
            value = read()
            counter.inc(value - self._counted.get(index, 0))
            self._counted[index] = value

    async def keep_fresh(self, every: float = REFRESH_SECONDS) -> None:
        """Until cancelled: `refresh` every `every` seconds."""
        while True:
            self.refresh()
            await asyncio.sleep(every)
