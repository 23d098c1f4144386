"""Client settings shared by ``Client`` and ``AsyncClient``, and the ``NOT_GIVEN`` sentinel."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias, TypeVar, final

__all__ = ["NOT_GIVEN", "Metadata", "NotGiven", "Settings"]

T = TypeVar("T")

Metadata: TypeAlias = Sequence[tuple[str, str | bytes]]
"""gRPC metadata: ``(key, value)`` pairs; a key ending in ``-bin`` takes ``bytes``."""


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
    """What a client and its ``with_options`` copies may differ in; the channel is shared."""

    timeout: float | None
    max_retries: int
    metadata: tuple[tuple[str, str | bytes], ...]

    def __post_init__(self) -> None:
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"timeout must be positive or None, not {self.timeout!r}")
        if isinstance(self.max_retries, bool) or self.max_retries < 0:
            raise ValueError(f"max_retries must be a non-negative int, not {self.max_retries!r}")

    @classmethod
    def create(cls, timeout: float | None, max_retries: int, metadata: Metadata) -> Settings:
        """Validated settings from constructor arguments."""
        return cls(timeout=timeout, max_retries=max_retries, metadata=tuple(metadata))

    def replace(
        self,
        timeout: float | None | NotGiven,
        max_retries: int | NotGiven,
        metadata: Metadata | NotGiven,
    ) -> Settings:
        """A copy with the given fields changed (validated again)."""
        return dataclasses.replace(
            self,
            timeout=given(timeout, self.timeout),
            max_retries=given(max_retries, self.max_retries),
            metadata=tuple(given(metadata, self.metadata)),
        )
