"""Who may call: TLS (and mutual TLS), and bearer tokens checked in constant time.

    --tls-cert FILE --tls-key FILE          serve TLS with this certificate chain and key
    --tls-client-ca FILE                    and require client certificates signed by this CA
    --auth-token-file FILE                  accept `authorization: Bearer <token>` for any token
                                            in FILE (one per line; # comments), or from the
                                            HEADSERVE_AUTH_TOKENS environment variable
    --open-health                           let health checks through without a token
    --admin-token-file FILE                 turn the admin RPCs on (HeadAdmin), for these
                                            tokens only (or HEADSERVE_ADMIN_TOKENS); a
                                            caller's token there gets PERMISSION_DENIED

Tokens never come from the command line (it shows in `ps`). A call without a valid token
gets UNAUTHENTICATED and a message that says nothing about the server or its model.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

TOKENS_ENV = "HEADSERVE_AUTH_TOKENS"
ADMIN_TOKENS_ENV = "HEADSERVE_ADMIN_TOKENS"
HEALTH_PREFIX = "/grpc.health.v1.Health/"
DENIED = "missing or invalid bearer token (metadata 'authorization: Bearer <token>')"
HTTP_DENIED = "missing or invalid bearer token (header 'Authorization: Bearer <token>')"


def denied(transport: str) -> str:
    """The UNAUTHENTICATED message, naming where the token goes on `transport`."""
    return HTTP_DENIED if transport == "http" else DENIED


class SecurityError(ValueError):
    pass


@dataclass(frozen=True)
class Security:
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # mutual TLS: client certificates must chain to it
    tokens: tuple[str, ...] = ()  # accepted bearer tokens; empty: no token needed
    open_health: bool = False
    admin_tokens: tuple[str, ...] = ()  # the admin RPCs' tokens; empty: admin RPCs off

    def __post_init__(self) -> None:
        if set(self.tokens) & set(self.admin_tokens):
            raise SecurityError("a token is both a caller's and an admin's: give admins their own")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SecurityError("--tls-cert and --tls-key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise SecurityError("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS)")

    def __repr__(self) -> str:  # never show the tokens
        tls, mutual = self.tls_cert is not None, self.tls_client_ca is not None
        return (
            f"Security(tls={tls}, mutual_tls={mutual}, tokens={len(self.tokens)}, "
            f"open_health={self.open_health}, admin_tokens={len(self.admin_tokens)})"
        )

    def credentials(self) -> grpc.ServerCredentials | None:
        """Server TLS credentials, or None for plaintext."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        try:
            pair = (self.tls_key.read_bytes(), self.tls_cert.read_bytes())
            ca = self.tls_client_ca.read_bytes() if self.tls_client_ca else None
        except OSError as exc:
            raise SecurityError(f"cannot read TLS files: {exc}") from exc
        return grpc.ssl_server_credentials(
            [pair], root_certificates=ca, require_client_auth=ca is not None
        )


def read_tokens(
    path: Path | None,
    environ: dict[str, str] | None = None,
    *,
    variable: str = TOKENS_ENV,
    flag: str = "--auth-token-file",
) -> tuple[str, ...]:
    """Tokens from a file (one per line, blank lines and # comments ignored) and/or the
    `variable` (HEADSERVE_AUTH_TOKENS; comma or whitespace separated)."""
    env = os.environ if environ is None else environ
    tokens: list[str] = []
    if path is not None:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise SecurityError(f"cannot read {flag}: {exc}") from exc
        tokens += [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        if not tokens:
            raise SecurityError(f"{path} holds no token")
    tokens += env.get(variable, "").replace(",", " ").split()
    for token in tokens:
        if len(token) < 16 or not token.isprintable():
            raise SecurityError("each auth token must be at least 16 printable characters")
    return tuple(dict.fromkeys(tokens))


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenAuth:
    """Whether a call carries `authorization: Bearer <one of the tokens>` (the call
    pipeline asks, for every transport)."""

    def __init__(self, tokens: tuple[str, ...]) -> None:
        self._digests = tuple(_digest(t) for t in tokens)

    def allows(self, metadata: Any) -> bool:
        given = ""
        for key, value in metadata or ():
            if key == "authorization" and isinstance(value, str):
                given = value
        scheme, _, token = given.partition(" ")
        digest = _digest(token.strip())
        # Compare against every token, whatever matches: no timing tells which or how close.
        matched = False
        for known in self._digests:
            matched |= hmac.compare_digest(digest, known)
        return matched and scheme.lower() == "bearer"
