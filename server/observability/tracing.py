"""OpenTelemetry tracing of every call, off unless asked for.

    headserve serve --otlp-endpoint http://collector:4317    OTLP over gRPC
    OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4317 headserve serve      the same

A call's span tree (names as a tracing UI shows them):

    /headserve.v1.Classifier/Classify         the call's server span, continuing the caller's
    |                                         traceparent (the call pipeline's; over HTTP it
    |                                         is named by the route: POST /v1/embeddings)
    |-- prepare                               tokenizing the items for each head
    |-- queue                                 waiting for the model
    |-- backbone                              the batch's backbone pass: rows, tokens, worker
    |-- head sentiment                        each head's forward over its rows of the batch
    `-- head topics

Every transport gets the same tree: gRPC, HTTP, and a call into a Ray Serve replica (whose
span continues the `traceparent` the caller put in its metadata). A stream has one server
span, and under it a span per request message, each with the tree above. A batch serves many
calls at once: each call gets its own `backbone` and `head` spans of the same pass (same
times and attributes, `headserve.batch.number` alike), so every trace is whole on its own. On
a GPU the `backbone` span ends when the pass is queued on the device; the heads' spans then
include the wait for it.

The standard OTEL_* variables apply: the exporter's (OTEL_EXPORTER_OTLP_HEADERS, _INSECURE,
_CERTIFICATE, _TIMEOUT...), OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, the sampler's
(OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG) and the batch processor's (OTEL_BSP_*);
OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none turn tracing off. The packages come
with the `tracing` extra (`pip install headserve[tracing]`); this module imports them only
when tracing is on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from ..call_info import CURRENT
from ..errors import kind_of

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

    from ..core.scheduler import Stats

T = TypeVar("T")

SERVICE_NAME = "headserve"
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


class TracingUnavailable(RuntimeError):
    """Tracing was asked for but its packages are not installed."""


def wanted(endpoint: str | None, environ: dict[str, str] | None = None) -> bool:
    """Whether tracing is on: an endpoint given, or the OTEL_* variables ask for it."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(endpoint) or exporter == "otlp" or any(env.get(v) for v in ENDPOINT_VARIABLES)


def otlp_provider(endpoint: str | None) -> TracerProvider:
    """A tracer provider exporting over OTLP/gRPC to `endpoint` (None: from OTEL_*)."""
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise TracingUnavailable(
            f"tracing needs OpenTelemetry: pip install 'headserve[tracing]' ({exc})"
        ) from exc
    from importlib.metadata import version

    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES apply; the name defaults to ours
    resource = Resource.create({"service.version": version("headserve")})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


class Tracing:
    """The spans of one server: the gRPC server interceptor, and headserve's own spans
    under it, made from the scheduler's timings once a call's rows are computed."""

    def __init__(self, provider: TracerProvider) -> None:
        from importlib.metadata import version

        from opentelemetry import trace

        self.provider = provider
        self._trace = trace
        self.tracer: Tracer = provider.get_tracer("headserve", version("headserve"))

    @classmethod
    def from_settings(cls, endpoint: str | None) -> Tracing | None:
        """Tracing to `endpoint` or as OTEL_* says; None when it is off."""
        return cls(otlp_provider(endpoint)) if wanted(endpoint) else None

    # --- a call's server span: the call pipeline opens and ends it ---------------------------

    @contextmanager
    def server_span(
        self, transport: str, rpc: str, metadata: Sequence[tuple[str, Any]]
    ) -> Iterator[Any]:
        """The server span of a call arriving on `transport`, continuing the caller's
        `traceparent` (gRPC metadata or HTTP headers), named by its method's path as gRPC
        tracing names it ("/headserve.v1.Encoder/Encode"), or "POST /v1/embeddings"."""
        from opentelemetry import propagate

        carrier = {key: value for key, value in metadata if isinstance(value, str)}
        attributes: dict[str, Any] = {"headserve.transport": transport}
        if transport == "http":  # rpc: "POST /v1/embeddings"
            method, _, route = rpc.partition(" ")
            attributes |= {"http.request.method": method, "http.route": route}
        else:
            service, _, method = rpc.partition("/")
            attributes |= {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
        with self.tracer.start_as_current_span(
            rpc if transport == "http" else f"/{rpc}",
            context=propagate.extract(carrier),
            kind=self._trace.SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            yield span

    def call_ended(self, span: Any, code: str, details: str) -> None:
        """The call's status on its span (the gRPC code, for every transport)."""
        if code == "OK" or not span.is_recording():
            if span.is_recording():
                span.set_attribute("rpc.grpc.status_code", 0)
            return
        span.set_attribute("rpc.grpc.status_code", grpc.StatusCode[code].value[0])
        span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, f"{code}: {details}"))

    # --- spans headserve adds ---------------------------------------------------------------

    def message(
        self, handle: Callable[[Any, Any], Awaitable[T]], items_in: Callable[[Any], int]
    ) -> Callable[[Any, Any], Awaitable[T]]:
        """`handle` of a stream's request message, run in a span of its own."""
        call = CURRENT.get()
        name = f"{call.rpc if call else 'stream'} message"

        async def traced(request: Any, stream_call: Any) -> T:
            attributes = {
                "headserve.stream.message_id": request.id,
                "headserve.items": items_in(request),
            }
            if call is not None:
                attributes["headserve.request_id"] = call.request_id
            with self.tracer.start_as_current_span(
                name, attributes=attributes, record_exception=False
            ) as span:
                try:
                    return await handle(request, stream_call)
                except Exception as exc:
                    code = grpc.StatusCode[kind_of(exc).grpc]
                    span.set_attribute("rpc.grpc.status_code", code.value[0])
                    span.set_status(
                        self._trace.Status(self._trace.StatusCode.ERROR, f"{code.name}: {exc}")
                    )
                    raise

        return traced

    def prepared(self, started: float, ended: float, items: int, heads: Sequence[str]) -> None:
        """The `prepare` span: the items tokenized for `heads` (times on perf_counter)."""
        offset = _perf_to_epoch_ns()
        span = self.tracer.start_span(
            "prepare",
            start_time=offset + int(started * 1e9),
            attributes={"headserve.items": items, "headserve.heads": list(heads)},
        )
        span.end(end_time=offset + int(ended * 1e9))

    def computed(self, stats: Stats, heads: Sequence[str], rows: int) -> None:
        """The `queue`, `backbone` and `head` spans of a call whose `rows` rows were computed
        for `heads`, from the scheduler's timings."""
        if not stats.batches:
            return
        offset = _perf_to_epoch_ns()

        def span(name: str, start: float, end: float, attributes: dict[str, Any]) -> None:
            s = self.tracer.start_span(
                name, start_time=offset + int(start * 1e9), attributes=attributes
            )
            s.end(end_time=offset + int(end * 1e9))

        first = stats.batches[0].started
        span("queue", stats.arrived, first, {"headserve.rows": rows})
        mine = set(heads)
        for batch in stats.batches:
            for report in batch.passes:
                span(
                    "backbone",
                    report.started,
                    report.ended,
                    {
                        "headserve.batch.number": batch.number,
                        "headserve.batch.rows": report.rows,
                        "headserve.batch.padded_tokens": report.padded_tokens,
                        "headserve.batch.real_tokens": report.real_tokens,
                        "headserve.batch.worker": batch.worker,
                    },
                )
                for head in report.heads:
                    if head.head in mine:
                        span(
                            f"head {head.head}",
                            head.started,
                            head.ended,
                            {
                                "headserve.head": head.head,
                                "headserve.batch.number": batch.number,
                                "headserve.head.rows": head.rows,
                                "headserve.head.failed": head.failed,
                            },
                        )

    def shutdown(self) -> None:
        """Export what is left, then stop."""
        self.provider.shutdown()


def _perf_to_epoch_ns() -> int:
    """What to add to time.perf_counter() nanoseconds to get the epoch nanoseconds spans use."""
    return time.time_ns() - time.perf_counter_ns()
