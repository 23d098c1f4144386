"""How long connections and streams may sit idle, and how many health watches one server keeps.

A caller that stops reading, dies without closing, or opens streams and sends nothing holds
places other callers need. gRPC pings a connection that has been quiet for
`keepalive_seconds` and drops it when no answer comes in `keepalive_timeout_seconds`; a
connection with no call for `connection_idle_seconds` is closed (GOAWAY: a live client
reconnects when it next calls); with `connection_age_seconds`, every connection is closed
after that long, its calls given `connection_age_grace_seconds` to finish. A stream that has
sent nothing for `stream_idle_timeout` seconds, with nothing of it being computed, is ended
with DEADLINE_EXCEEDED. Health watches (grpc.health.v1 Watch: long-lived streams, which need
no token with --open-health) have a budget of their own (`max_health_watches`). gRPC caps
every RPC at --max-concurrent-calls; streams and watches together must stay below it
(`check_budgets`), so unary calls always find room.

The `http_` limits bound the OpenAI-style HTTP endpoint's connections
(transports/http_connections.py): how many are open at once, how long a request's head and
body may take to arrive, how long a kept-alive connection may idle, a head's bytes and
fields, and how many values a JSON body may hold (parsing holds the GIL: 5 million token
ids take 0.2 s, every other call waiting).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..core.limits import RequestLimits


@dataclass(frozen=True)
class Connections:
    keepalive_seconds: float = 60.0
    keepalive_timeout_seconds: float = 20.0
    connection_idle_seconds: float = 300.0
    connection_age_seconds: float = 0.0  # 0: connections have no age limit
    connection_age_grace_seconds: float = 30.0
    stream_idle_timeout: float = 300.0  # seconds; 0: streams may stay idle
    max_health_watches: int = 16
    http_max_connections: int = 1024  # at most 3/4 of RLIMIT_NOFILE (http_connections.py)
    http_header_timeout: float = 10.0  # seconds for a request's head to arrive
    http_body_timeout: float = 60.0  # seconds for a request's body, once its head is read
    http_keepalive_timeout: float = 5.0  # seconds a kept-alive connection may idle
    http_max_header_bytes: int = 16 * 1024
    http_max_headers: int = 100
    http_max_json_values: int = 1_000_000  # a body's values (commas), counted before parsing

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value < 0 or (value == 0 and f.name in _POSITIVE):
                flag = "--" + f.name.replace("_", "-")
                raise ValueError(
                    f"{flag} must be {'above' if f.name in _POSITIVE else 'at least'} 0"
                )

    def grpc_options(self) -> list[tuple[str, int]]:
        """The gRPC server channel arguments that enforce them."""
        options = [
            ("grpc.keepalive_time_ms", _ms(self.keepalive_seconds)),
            ("grpc.keepalive_timeout_ms", _ms(self.keepalive_timeout_seconds)),
            ("grpc.keepalive_permit_without_calls", 1),
            # a client may ping this often without being told it pings too much
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.max_connection_idle_ms", _ms(self.connection_idle_seconds)),
        ]
        if self.connection_age_seconds:
            options += [
                ("grpc.max_connection_age_ms", _ms(self.connection_age_seconds)),
                ("grpc.max_connection_age_grace_ms", _ms(self.connection_age_grace_seconds)),
            ]
        return options


_POSITIVE = (
    "keepalive_seconds",
    "keepalive_timeout_seconds",
    "connection_idle_seconds",
    "max_health_watches",
    "http_max_connections",
    "http_header_timeout",
    "http_body_timeout",
    "http_keepalive_timeout",
    "http_max_header_bytes",
    "http_max_headers",
    "http_max_json_values",
)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def check_budgets(limits: RequestLimits, connections: Connections) -> None:
    """Streams and health watches have budgets inside --max-concurrent-calls (gRPC's own cap
    on every RPC): together they must leave room, so that no number of idle streams or
    tokenless watches can lock unary calls out."""
    held = limits.max_streams + connections.max_health_watches
    if held >= limits.max_concurrent_calls:
        raise ValueError(
            f"--max-streams ({limits.max_streams}) + --max-health-watches "
            f"({connections.max_health_watches}) must stay below --max-concurrent-calls "
            f"({limits.max_concurrent_calls}), so that streams and watches leave room for "
            "unary calls: set them lower"
        )
