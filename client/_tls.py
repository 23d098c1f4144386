"""``TLS``: how a client secures its channel (server verification, mutual TLS)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc

__all__ = ["PEM", "TLS", "resolve"]

PEM: TypeAlias = bytes | str | os.PathLike[str]
"""PEM data as ``bytes``, or the path (``str`` or ``os.PathLike``) of a PEM file."""


@dataclass(frozen=True, slots=True)
class TLS:
    """TLS settings of a client's channel; ``TLS()`` verifies the server against default roots.

    Example::

        Client("models.internal:443", tls=TLS(ca="ca.pem"))  # a private CA
        Client("10.0.0.7:50051", tls=TLS(ca="ca.pem", server_name="models.internal"))
        Client(target, tls=TLS(ca="ca.pem", cert="client.pem", key="client.key"))  # mutual TLS

    Each PEM field takes ``bytes`` (the PEM itself) or a path to a PEM file; files are read when
    the client is made (by :meth:`credentials`).

    Attributes:
        ca: root certificate(s) the server's certificate must chain to; ``None``: gRPC's default
            roots (the file named by ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``, else the roots that
            ship with grpcio).
        cert: the client's certificate chain, for mutual TLS; given with ``key`` or not at all.
        key: the client's private key, for mutual TLS. Never shown by ``repr``.
        server_name: the name the server's certificate must carry, when it differs from the
            target's host (a server reached by IP address or by an alias); gRPC channel option
            ``grpc.ssl_target_name_override``.
    """

    ca: PEM | None = None
    cert: PEM | None = None
    key: PEM | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError(
                "mutual TLS needs both cert (the client's certificate chain) and key "
                "(its private key); give both or neither"
            )
        for name in ("ca", "cert", "key"):
            value = getattr(self, name)
            if isinstance(value, str) and "-----BEGIN" in value:
                raise ValueError(
                    f"TLS.{name} got PEM text as a str, which is taken for a path: "
                    "pass the PEM as bytes (e.g. text.encode())"
                )
        if self.server_name is not None and not self.server_name:
            raise ValueError("server_name must not be empty (None: the target's host)")

    def __repr__(self) -> str:
        fields = [
            f"{name}={_describe(getattr(self, name))}"
            for name in ("ca", "cert")
            if getattr(self, name) is not None
        ]
        if self.key is not None:
            fields.append("key=...")
        if self.server_name is not None:
            fields.append(f"server_name={self.server_name!r}")
        return f"TLS({', '.join(fields)})"

    def credentials(self) -> grpc.ChannelCredentials:
        """``grpc.ssl_channel_credentials`` for these settings; reads the files named.

        Raises:
            OSError: a PEM file cannot be read.
        """
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca),
            private_key=_read(self.key),
            certificate_chain=_read(self.cert),
        )

    def channel_options(self) -> list[tuple[str, Any]]:
        """The gRPC channel options these settings add (the ``server_name`` override)."""
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]


def resolve(tls: TLS | bool | None) -> TLS | None:
    """The ``tls`` argument of a client as settings: ``True`` is ``TLS()``, ``False`` none."""
    if tls is True:
        return TLS()
    if tls is None or tls is False:
        return None
    if not isinstance(tls, TLS):
        raise TypeError(f"tls must be a TLS, a bool or None, not {type(tls).__name__}")
    return tls


def _read(pem: PEM | None) -> bytes | None:
    if pem is None or isinstance(pem, bytes):
        return pem
    with open(pem, "rb") as file:
        return file.read()


def _describe(pem: PEM) -> str:
    return f"<{len(pem)} bytes of PEM>" if isinstance(pem, bytes) else repr(os.fspath(pem))
