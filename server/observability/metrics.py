"""Prometheus metrics of the serving path: the calls every transport ends (by RPC and
code), the batches the scheduler forms, what the model costs, and how late the event loop runs.

One `Metrics` per server, each in its own registry, so that several servers in one
process (the tests) count apart. `headserve serve --metrics-port` exposes the registry
over HTTP (`MetricsServer`); it is off by default and binds to 127.0.0.1 unless told
otherwise, as it has no authentication (it shows load, never inputs or outputs).
A Ray Serve replica records the same metrics through Ray's own (ray_metrics.py): Ray exports
them, prefixed `ray_`, on each node's metrics port, where its Prometheus scrapes them.

What a batch cost the model is measured on the worker thread that ran it: its wall time,
and its thread CPU time. CPU below wall means the worker waited for a core.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from ..call_info import PRIORITIES

ROW_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256, 512)
TOKEN_BUCKETS = (16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
SECOND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
LAG_EVERY = 0.02  # seconds between the event loop's lag probes

DROP_REASONS = ("cancelled", "deadline")
HTTP_REFUSALS = ("connections_full", "header_timeout", "headers_too_large", "too_many_headers")


class CacheStats(Protocol):
    """What the feature cache counts (core/pass_cache.py)."""

    hits: int
    misses: int

    @property
    def evictions(self) -> int: ...

    @property
    def bytes(self) -> int: ...


class Instruments(Protocol):
    """What makes the metrics: prometheus_client here, Ray's metrics in a replica."""

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Any: ...

    def histogram(
        self, name: str, documentation: str, buckets: Sequence[float], labels: Sequence[str] = ()
    ) -> Any: ...

    def gauge(self, name: str, documentation: str) -> Any: ...

    def read_counter(self, name: str, documentation: str, read: Callable[[], int]) -> None: ...


class Prometheus:
    """Instruments in one prometheus_client registry, with the process's own metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, resident memory
        PlatformCollector(registry=self.registry)

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        return Counter(name, documentation, list(labels), registry=self.registry)

    def histogram(
        self, name: str, documentation: str, buckets: Sequence[float], labels: Sequence[str] = ()
    ) -> Histogram:
        return Histogram(
            name, documentation, list(labels), buckets=tuple(buckets), registry=self.registry
        )

    def gauge(self, name: str, documentation: str) -> Gauge:
        return Gauge(name, documentation, registry=self.registry)

    def read_counter(self, name: str, documentation: str, read: Callable[[], int]) -> None:
        self.registry.register(_ReadCounter(name, documentation, read))


class Metrics:
    def __init__(self, instruments: Instruments | None = None) -> None:
        self.instruments = instruments or Prometheus()
        i = self.instruments
        self.calls = i.counter(
            "headserve_calls",
            "Calls ended, by transport (grpc, http, ray), RPC (an HTTP route for HTTP), "
            "code (the gRPC status code name of the error table's row; OK) and priority "
            "(interactive, bulk)",
            ("transport", "rpc", "code", "priority"),
        )
        self.shadow_items = i.counter(
            "headserve_shadow_items",
            "Items a shadow head and the live head it shadows both answered, compared",
            ("live", "shadow"),
        )
        self.shadow_failures = i.counter(
            "headserve_shadow_failures",
            "Items of live calls a shadow head refused or failed (the live calls never see it)",
            ("live", "shadow"),
        )
        self.shadow_agreement = i.counter(
            "headserve_shadow_agreement_sum",
            "Each agreement measure summed over the compared items (divided by "
            "headserve_shadow_items_total: its mean): top1_agreement and "
            "mean_abs_probability_difference (classify), mean_cosine (encode), exact_match (qa)",
            ("live", "shadow", "measure"),
        )
        self.call_seconds = i.histogram(
            "headserve_call_seconds",
            "Time from a call's arrival to its end, by transport, RPC and priority",
            SECOND_BUCKETS,
            ("transport", "rpc", "priority"),
        )
        # the names Prometheus users know: grpc-ecosystem's gRPC interceptors (a Ray replica's
        # calls came through Serve's gRPC proxy: gRPC too), and OpenTelemetry's HTTP server
        self.grpc_started = i.counter(
            "grpc_server_started",
            "RPCs started on the server",
            ("grpc_type", "grpc_service", "grpc_method"),
        )
        self.grpc_handled = i.counter(
            "grpc_server_handled",
            "RPCs completed on the server, whatever their status",
            ("grpc_type", "grpc_service", "grpc_method", "grpc_code"),
        )
        self.grpc_seconds = i.histogram(
            "grpc_server_handling_seconds",
            "Time from an RPC's start to its end on the server",
            SECOND_BUCKETS,
            ("grpc_type", "grpc_service", "grpc_method"),
        )
        self.http_server_requests = i.counter(
            "http_server_requests",
            "HTTP requests answered, by method, route and status",
            ("method", "route", "status"),
        )
        self.http_server_seconds = i.histogram(
            "http_server_request_duration_seconds",
            "Time from an HTTP request's arrival to its answer",
            SECOND_BUCKETS,
            ("method", "route", "status"),
        )
        self.calls_in_progress = i.gauge(
            "headserve_calls_in_progress",
            "Calls admitted and not ended yet, every transport (--max-concurrent-calls bounds it)",
        )
        self.batch_rows = i.histogram("headserve_batch_rows", "Rows per backbone pass", ROW_BUCKETS)
        self.batch_tokens = i.histogram(
            "headserve_batch_tokens",
            "Tokens per backbone pass (the rows' own tokens, before padding or packing)",
            TOKEN_BUCKETS,
        )
        self.batch_seconds = i.histogram(
            "headserve_batch_seconds",
            "Wall time of one batch on a model worker (backbone and heads)",
            SECOND_BUCKETS,
        )
        self.model_cpu = i.counter(
            "headserve_model_cpu_seconds",
            "CPU time of the model workers' threads while computing batches",
        )
        self.queue_wait = i.histogram(
            "headserve_queue_wait_seconds",
            "Time a row waited in the queue before its batch started, by priority",
            SECOND_BUCKETS,
            ("priority",),
        )
        self.dropped = i.counter(
            "headserve_rows_dropped",
            "Rows dropped before the model: their call was cancelled, or its deadline passed",
            ("reason",),
        )
        for reason in DROP_REASONS:
            self.dropped.labels(reason)  # exported at 0 from the start
        self.refused = i.counter(
            "headserve_calls_refused",
            "Unary calls refused with RESOURCE_EXHAUSTED because the queue was full (for bulk "
            "calls: the part of it bulk work may take), by priority",
            ("priority",),
        )
        for priority in PRIORITIES:
            self.refused.labels(priority)  # exported at 0 from the start
        self.failed = i.counter(
            "headserve_rows_failed",
            "Rows whose model pass or head failed (the head named, or 'backbone')",
            ("head",),
        )
        self.http_requests = i.counter(
            "headserve_http_requests",
            "Requests answered by the OpenAI-style HTTP endpoint, by route and HTTP status",
            ("route", "status"),
        )
        self.http_connections = i.gauge(
            "headserve_http_connections",
            "HTTP connections open now (--http-max-connections bounds them)",
        )
        self.http_refused = i.counter(
            "headserve_http_refused",
            "HTTP connections and requests refused before any call began, by reason: "
            "connections_full (503), header_timeout (408), headers_too_large and "
            "too_many_headers (431)",
            ("reason",),
        )
        for reason in HTTP_REFUSALS:
            self.http_refused.labels(reason)  # exported at 0 from the start
        self.loop_lag = i.histogram(
            "headserve_event_loop_lag_seconds",
            "How late a periodic timer on the event loop ran: the wait any call's next step "
            "had, while the loop was busy or its thread waited for a core",
            LAG_BUCKETS,
        )
        self._queued = i.gauge("headserve_queue_rows", "Rows waiting for the model")
        self._running = i.gauge("headserve_batches_running", "Batches on the model workers now")
        self._workers = i.gauge("headserve_model_workers", "Model worker threads")
        self._dropped_rows = 0
        self._call_children: dict[tuple[str, ...], tuple[Any, ...]] = {}
        self._children: dict[tuple[str, ...], Any] = {}

    @property
    def registry(self) -> CollectorRegistry:
        """The prometheus_client registry (a Ray replica's metrics are in Ray's, not here)."""
        if not isinstance(self.instruments, Prometheus):
            raise TypeError("these metrics are recorded through Ray's metrics, not a registry")
        return self.instruments.registry

    def call_started(self, transport: str, rpc: str, stream: bool) -> None:
        if transport != "http":
            key = ("started", transport, rpc, str(stream))
            child = self._children.get(key)
            if child is None:
                child = self.grpc_started.labels(*_grpc_labels(rpc, stream))
                self._children[key] = child
            child.inc()

    def call_ended(
        self,
        transport: str,
        rpc: str,
        code: str,
        seconds: float,
        *,
        stream: bool = False,
        status: int | None = None,
        priority: str = "interactive",
    ) -> None:
        key = (transport, rpc, code, str(stream), str(status), priority)
        children = self._call_children.get(key)
        if children is None:  # looked up once per label set: labels() takes a lock each time
            children = (
                self.calls.labels(transport, rpc, code, priority),
                self.call_seconds.labels(transport, rpc, priority),
                *self._convention_children(transport, rpc, code, stream, status),
            )
            self._call_children[key] = children
        children[0].inc()
        children[1].observe(seconds)
        children[2].inc()
        children[3].observe(seconds)

    def _convention_children(
        self, transport: str, rpc: str, code: str, stream: bool, status: int | None
    ) -> tuple[Any, Any]:
        if transport == "http":
            method, _, route = rpc.partition(" ")
            labels = (method, route, str(status if status is not None else 0))
            return (
                self.http_server_requests.labels(*labels),
                self.http_server_seconds.labels(*labels),
            )
        grpc = _grpc_labels(rpc, stream)
        return self.grpc_handled.labels(*grpc, code), self.grpc_seconds.labels(*grpc)

    def drop(self, reason: str, rows: int = 1) -> None:
        self.dropped.labels(reason).inc(rows)
        self._dropped_rows += rows

    def watch(
        self, queued: Callable[[], float], running: Callable[[], float], workers: int
    ) -> None:
        """Gauges read at scrape time from the scheduler's own state."""
        self._queued.set_function(queued)
        self._running.set_function(running)
        self._workers.set(workers)

    def count_backbone_rows(self, read: Callable[[], int]) -> None:
        """headserve_backbone_rows_total, read from the runner's own count at scrape time:
        distinct rows through the backbone, where headserve_batch_rows counts them as
        scheduled (one per head: rows the heads share are computed once)."""
        self.instruments.read_counter(
            "headserve_backbone_rows",
            "Distinct rows the backbone computed (a row asked of several heads counts once)",
            read,
        )

    def watch_pass_cache(self, cache: CacheStats) -> None:
        """The feature cache's counts (--feature-cache-mb), read from it at scrape time."""
        i = self.instruments
        i.read_counter(
            "headserve_feature_cache_hits",
            "Rows whose backbone pass came from the feature cache (--feature-cache-mb)",
            lambda: cache.hits,
        )
        i.read_counter(
            "headserve_feature_cache_misses",
            "Rows the feature cache did not hold: the backbone computed them",
            lambda: cache.misses,
        )
        i.read_counter(
            "headserve_feature_cache_evictions",
            "Rows' passes the feature cache let go, least recently used first, to make room",
            lambda: cache.evictions,
        )
        held = i.gauge(
            "headserve_feature_cache_bytes", "Bytes of backbone passes the feature cache holds"
        )
        held.set_function(lambda: cache.bytes)

    def watch_jobs(self, pending: Callable[[], int]) -> Any:
        """Batch jobs' progress (--jobs-dir): the counter of their lines answered, by outcome
        (returned, for the job runner to count with), and the lines still to answer."""
        i = self.instruments
        lines = i.counter(
            "headserve_job_lines",
            "Lines of batch jobs answered, by outcome: completed (in the output file), failed "
            "(in the error file)",
            ("outcome",),
        )
        for outcome in ("completed", "failed"):
            lines.labels(outcome)  # exported at 0 from the start
        left = i.gauge(
            "headserve_job_lines_pending", "Lines of unfinished batch jobs not answered yet"
        )
        left.set_function(pending)
        return lines

    def count_oom_splits(self, read: Callable[[], int]) -> None:
        """headserve_oom_splits_total, read from the runner's own count at scrape time."""
        self.instruments.read_counter(
            "headserve_oom_splits", "Batches split in two after the model ran out of memory", read
        )

    def rows_dropped(self) -> int:
        """headserve_rows_dropped_total, over every reason."""
        return self._dropped_rows

    async def watch_event_loop(self, every: float = LAG_EVERY) -> None:
        """Until cancelled: sleep `every` seconds on the event loop, and record how late it woke."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + every
            await asyncio.sleep(every)
            self.loop_lag.observe(max(0.0, loop.time() - due))

    def batch_done(self, rows: int, tokens: int, wall: float, cpu: float) -> None:
        self.batch_rows.observe(rows)
        self.batch_tokens.observe(tokens)
        self.batch_seconds.observe(wall)
        self.model_cpu.inc(cpu)


class _ReadCounter(Collector):
    """A counter whose value something else keeps."""

    def __init__(self, name: str, documentation: str, read: Callable[[], int]) -> None:
        self._name, self._documentation, self._read = name, documentation, read

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily(self._name, self._documentation, value=self._read())


class MetricsServer:
    """The /metrics HTTP endpoint, on its own daemon thread."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._httpd: WSGIServer
        self._thread: threading.Thread
        self._httpd, self._thread = start_http_server(port, addr=host, registry=registry)

    @property
    def port(self) -> int:
        return int(self._httpd.server_port)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _grpc_labels(rpc: str, stream: bool) -> tuple[str, str, str]:
    """grpc_type, grpc_service, grpc_method of a full method name ("/pkg.Service/Method")."""
    service, _, method = rpc.lstrip("/").rpartition("/")
    return ("bidi_stream" if stream else "unary"), service, method
