"""What ``Client`` and ``AsyncClient`` share beyond their calls (client/_calls.py): their
settings, read back and copied with other values, and the checks of their arguments."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping
from typing import Any, Protocol, TypeVar

import grpc

from . import errors
from ._options import NOT_GIVEN, Metadata, NotGiven, Priority, Settings, with_application
from ._tls import TLS, resolve

C = TypeVar("C", bound="ClientBase")


class ClientBase:
    """The settings of a client and of its ``with_options`` copies (which share a channel)."""

    _settings: Settings

    def _configure(self, arguments: Mapping[str, Any]) -> TLS | None:
        """Keep the settings a client's constructor was given (its `locals()`, first thing);
        the TLS settings of the channel to make (None: plaintext)."""
        self._settings = Settings.create(
            arguments["timeout"],
            arguments["max_retries"],
            with_application(arguments["metadata"], arguments["application"]),
            arguments["token"],
        )
        security = resolve(arguments["tls"])
        if arguments["channel"] is not None and (arguments["options"] or security is not None):
            raise ValueError(
                "options and tls configure the channel the client makes: not with channel="
            )
        return security

    @property
    def timeout(self) -> float | None:
        """Default deadline of a unary call in seconds, retries included."""
        return self._settings.timeout

    @property
    def max_retries(self) -> int:
        """How often a unary call is retried on UNAVAILABLE, overload or a proxy's INTERNAL."""
        return self._settings.max_retries

    @property
    def metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        """Metadata sent with every call (besides the token's ``authorization`` entry)."""
        return self._settings.metadata

    def with_options(
        self: C,
        *,
        timeout: float | None | NotGiven = NOT_GIVEN,
        max_retries: int | NotGiven = NOT_GIVEN,
        metadata: Metadata | NotGiven = NOT_GIVEN,
        token: str | None | NotGiven = NOT_GIVEN,
        priority: Priority | None | NotGiven = NOT_GIVEN,
    ) -> C:
        """A copy with other settings, sharing this client's channel; this one is unchanged.

        ``metadata`` replaces the client's metadata but keeps its token; ``token`` replaces
        the token (``None``: send none), e.g. one client per caller over a shared channel.
        ``priority="bulk"`` sends every call as bulk work (``x-priority``): it fills what
        interactive calls leave, for a re-index or a backfill that nobody waits on.

        Example: ``client.with_options(timeout=2.0, max_retries=0).encode(["quick"])``.
        """
        clone = copy.copy(self)
        clone._settings = self._settings.replace(timeout, max_retries, metadata, token, priority)
        return clone


class _Pump(Protocol):
    error: Exception | None


class _Cancellable(Protocol):
    def cancel(self) -> Any: ...


@contextlib.contextmanager
def streaming(rpc: _Cancellable, pump: _Pump) -> Iterator[None]:
    """Around reading a stream's responses: its failure as the client's error, the call
    cancelled when the caller stops early, and the caller's own failure while the batches
    were read (kept by the pump) raised once the answered ones are read."""
    try:
        yield
    except grpc.RpcError as rpc_error:
        raise errors.from_rpc_error(rpc_error) from rpc_error
    finally:
        rpc.cancel()  # no-op once finished
    if pump.error is not None:
        raise pump.error
