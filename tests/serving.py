"""An in-process headserve server on its own event loop thread, bound to port 0."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from headserve.server.app import Server, Settings, build_core, create_server

T = TypeVar("T")


class ServerThread:
    def __init__(self, settings: Settings | None) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server: Server = self.call(create_server("127.0.0.1:0"))
        self.target = f"127.0.0.1:{self.server.port}"
        self.core = None
        if settings is not None:
            self.ready(settings)

    def ready(self, settings: Settings) -> None:
        self.core = build_core(settings)
        self.call(self.server.mark_ready(self.core))

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def stop(self) -> None:
        self.call(self.server.stop(None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
