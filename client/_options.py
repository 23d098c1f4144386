"""Client settings shared by ``Client`` and ``AsyncClient``, and the ``NOT_GIVEN`` sentinel."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias, TypeVar, final

__all__ = ["NOT_GIVEN", "Metadata", "NotGiven", "Priority", "Settings"]

T = TypeVar("T")

Metadata: TypeAlias = Sequence[tuple[str, str | bytes]]
"""gRPC metadata: ``(key, value)`` pairs; a key ending in ``-bin`` takes ``bytes``."""

Priority: TypeAlias = Literal["interactive", "bulk"]
"""A call's class of work: ``"bulk"`` calls fill what interactive calls leave (``x-priority``)."""


@final
class NotGiven:
    """The type of :data:`NOT_GIVEN`: "use the client's setting", where ``None`` means "none"."""

    _instance: NotGiven | None = None

    def __new__(cls) -> NotGiven:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN: Final = NotGiven()
"""Default of per-call and ``with_options`` arguments: keep the client's own value."""


def given(value: T | NotGiven, default: T) -> T:
    """``value`` unless it is :data:`NOT_GIVEN`, else ``default``."""
    return default if isinstance(value, NotGiven) else value


@dataclass(frozen=True, slots=True)
class Settings:
    """What a client and its ``with_options`` copies may differ in; the channel is shared.

    The bearer ``token`` is kept apart from ``metadata``: replacing the metadata keeps it, and
    it never appears in a ``repr`` (nor in an error message).
    """

    timeout: float | None
    max_retries: int
    metadata: tuple[tuple[str, str | bytes], ...]
    token: str | None = field(default=None, repr=False)
    priority: Priority | None = None  # None: the server's default (interactive)

    def __post_init__(self) -> None:
        if self.priority not in (None, "interactive", "bulk"):
            raise ValueError(
                f"priority must be 'interactive', 'bulk' or None, not {self.priority!r}"
            )
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"timeout must be positive or None, not {self.timeout!r}")
        if isinstance(self.max_retries, bool) or self.max_retries < 0:
            raise ValueError(f"max_retries must be a non-negative int, not {self.max_retries!r}")
        if self.token is not None:
            _check_token(self.token)
            if any(key.lower() == "authorization" for key, _ in self.metadata):
                raise ValueError(
                    "metadata has an authorization entry and a token was given: "
                    "pass one or the other"
                )

    @classmethod
    def create(
        cls, timeout: float | None, max_retries: int, metadata: Metadata, token: str | None = None
    ) -> Settings:
        """Validated settings from constructor arguments."""
        return cls(timeout=timeout, max_retries=max_retries, metadata=tuple(metadata), token=token)

    def replace(
        self,
        timeout: float | None | NotGiven,
        max_retries: int | NotGiven,
        metadata: Metadata | NotGiven,
        token: str | None | NotGiven = NOT_GIVEN,
        priority: Priority | None | NotGiven = NOT_GIVEN,
    ) -> Settings:
        """A copy with the given fields changed (validated again)."""
        return dataclasses.replace(
            self,
            timeout=given(timeout, self.timeout),
            max_retries=given(max_retries, self.max_retries),
            metadata=tuple(given(metadata, self.metadata)),
            token=given(token, self.token),
            priority=given(priority, self.priority),
        )

    @property
    def call_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        """What every call sends: the token's ``authorization`` entry first, then ``metadata``,
        then ``x-priority`` when a priority is set."""
        sent = self.metadata
        if self.priority is not None:
            sent = (*sent, ("x-priority", self.priority))
        if self.token is None:
            return sent
        return (("authorization", f"Bearer {self.token}"), *sent)


def _check_token(token: object) -> None:
    # The token itself stays out of every message.
    if not isinstance(token, str):
        raise TypeError(f"token must be a str or None, not {type(token).__name__}")
    if not token:
        raise ValueError("token must not be empty (None: no token)")
    if not all(" " <= char <= "~" for char in token):
        raise ValueError(
            "token must be printable ASCII, without newlines or other control characters "
            "(a token read from a file may end with a newline: strip it)"
        )


APPLICATION_KEY = "application"


def with_application(metadata: Metadata, application: str | None) -> Metadata:
    """`metadata` and the ``application`` entry that picks one application (one backbone)
    behind a Ray Serve endpoint serving several."""
    if application is None:
        return metadata
    if not isinstance(application, str) or not application:
        raise ValueError("application must be a non-empty str (None: the endpoint's only one)")
    if any(key == APPLICATION_KEY for key, _ in metadata):
        raise ValueError("name the application once: application= or metadata, not both")
    return (*tuple(metadata), (APPLICATION_KEY, application))
