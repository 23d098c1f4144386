"""The event loop the server runs on: uvloop where it is installed, else asyncio's own.

The event loop takes every call, tokenizes, refuses the excess and writes the replies,
on the same cores as the model. uvloop does the loop's own part of that (scheduling
callbacks, futures, timers) in C; `bench/ab.py` measures the two side by side
(BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Coroutine
from typing import Any, Literal

Kind = Literal["uvloop", "asyncio"]
KINDS: tuple[Kind, ...] = ("uvloop", "asyncio")


def default_kind() -> Kind:
    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def new_event_loop(kind: Kind) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(main: Coroutine[Any, Any, None], kind: Kind) -> None:
    """Run `main` to the end on a new loop of `kind`, as asyncio.run does."""
    if kind == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


def kind_of(loop: asyncio.AbstractEventLoop) -> str:
    """'uvloop' or 'asyncio': the package the running loop comes from."""
    return type(loop).__module__.split(".")[0]
