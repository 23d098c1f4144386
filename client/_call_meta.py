"""What a call carries besides its messages: the caller's trace context out, the request id back.

Trace context: when OpenTelemetry is installed on the caller's side, every call sends the
current span's context (W3C ``traceparent``, and ``tracestate``/``baggage`` where set) through
OpenTelemetry's configured propagator, so the server's spans join the caller's trace. Without
OpenTelemetry, or outside any span, nothing is added.

Request id: the server sends it as ``x-request-id`` initial metadata; the client puts it on the
result (``result.request_id``). A caller may choose it, as metadata:
``client.with_options(metadata=[("x-request-id", "order-1234")])``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

__all__ = ["REQUEST_ID_KEY", "head_versions_in", "outgoing", "request_id_in", "with_request_id"]

REQUEST_ID_KEY = "x-request-id"
HEAD_VERSIONS_KEY = "headserve-head-versions"

T = TypeVar("T")

_inject: Callable[[dict[str, str]], None] | None
try:
    from opentelemetry.propagate import inject as _otel_inject
except ImportError:  # OpenTelemetry is optional on the caller's side
    _inject = None
else:

    def _inject(carrier: dict[str, str]) -> None:
        _otel_inject(carrier)


def outgoing(metadata: tuple[tuple[str, str | bytes], ...]) -> tuple[tuple[str, str | bytes], ...]:
    """``metadata`` plus the current trace context, if OpenTelemetry is there to give one."""
    if _inject is None:
        return metadata
    carrier: dict[str, str] = {}
    _inject(carrier)
    if not carrier:
        return metadata
    return (*metadata, *((key.lower(), value) for key, value in carrier.items()))


def request_id_in(metadata: Iterable[Any] | None) -> str | None:
    """The ``x-request-id`` of a call's metadata (initial, or trailing behind a proxy that
    sends no initial metadata of its own), or ``None``."""
    for entry in metadata or ():
        key, value = entry[0], entry[1]
        if key == REQUEST_ID_KEY and isinstance(value, str):
            return value
    return None


def head_versions_in(metadata: Iterable[Any] | None) -> dict[str, str]:
    """The ``headserve-head-versions`` of a call's trailing metadata, ``{name: version}``."""
    for entry in metadata or ():
        key, value = entry[0], entry[1]
        if key == HEAD_VERSIONS_KEY and isinstance(value, str):
            pairs = (pair.partition("=") for pair in value.split(",") if pair)
            return {name: version for name, _, version in pairs}
    return {}


def with_request_id(
    result: T, request_id: str | None, head_versions: dict[str, str] | None = None
) -> T:
    """``result`` (a result dataclass or a ``StreamResult`` and its result) with the id set,
    and the versions of the heads that answered where given."""
    if request_id is None or not dataclasses.is_dataclass(result):
        return result
    names = {f.name for f in dataclasses.fields(result)}
    if "request_id" not in names:
        return result
    changes: dict[str, Any] = {"request_id": request_id}
    if head_versions and "head_versions" in names:
        changes["head_versions"] = head_versions
    inner = getattr(result, "result", None)
    if "result" in names and inner is not None:
        changes["result"] = with_request_id(inner, request_id)
    return dataclasses.replace(result, **changes)  # type: ignore[type-var]
