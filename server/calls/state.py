"""What answering a call needs of the server, on every transport."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..core.limits import RequestLimits

if TYPE_CHECKING:
    from ..core.engine import Core
    from ..observability.tracing import Tracing


@dataclass
class ServerState:
    """What answering a task needs of the server; `core` stays None until the model is loaded."""

    request_limits: RequestLimits = RequestLimits()
    core: Core | None = None
    draining: asyncio.Event = field(default_factory=asyncio.Event)
    tracing: Tracing | None = None
    stream_idle_timeout: float = 0.0  # seconds a stream may send nothing (0: no limit)
