"""Client and AsyncClient over TLS and mutual TLS, and with a bearer token, against a real server.

One in-process gRPC server listens on four ports:

- ``tls``: the server certificate (SANs ``localhost``, ``127.0.0.1``) of the test CA;
- ``mtls``: the same, and a client certificate of the test CA is required;
- ``localhost_only``: a certificate naming only ``localhost``, reached as ``127.0.0.1``;
- ``plaintext``.

It serves the fake encoder and models of ``test_client_fake_server`` behind an interceptor that
records every call's metadata, and refuses the tokens ``rejected-*`` (UNAUTHENTICATED) and
``forbidden-*`` (PERMISSION_DENIED). Every test runs with both clients (the ``flavour`` fixture).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from certs import Certs, make_certs
from test_client_fake_server import Behaviour, FakeEncoder, FakeModels

from headserve.client import (
    TLS,
    AsyncClient,
    Batch,
    Client,
    HeadserveError,
    PermissionDeniedError,
    UnauthenticatedError,
    UnavailableError,
)
from headserve.v1 import encoder_pb2_grpc, models_pb2_grpc

# --- the server ---------------------------------------------------------------------------------


class AuthInterceptor(grpc.ServerInterceptor):
    """Records ``(method, metadata)`` of every call; refuses ``rejected-*``/``forbidden-*``."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        self._lock = threading.Lock()

    def intercept_service(self, continuation, handler_call_details):
        metadata = {key: value for key, value in handler_call_details.invocation_metadata}
        method = handler_call_details.method.rsplit("/", 1)[-1]
        with self._lock:
            self.seen.append((method, metadata))
        handler = continuation(handler_call_details)
        token = metadata.get("authorization", "").removeprefix("Bearer ")
        if token.startswith("rejected-"):
            return _refusing(handler, grpc.StatusCode.UNAUTHENTICATED, "token not valid")
        if token.startswith("forbidden-"):
            return _refusing(handler, grpc.StatusCode.PERMISSION_DENIED, "not for you")
        return handler

    def calls_with(self, token: str) -> list[str]:
        """The methods called with ``authorization: Bearer <token>``, one per attempt."""
        with self._lock:
            return [m for m, md in self.seen if md.get("authorization") == f"Bearer {token}"]

    def calls_where(self, key: str, value: str) -> list[dict[str, str]]:
        """The metadata of every call that carried ``key: value``."""
        with self._lock:
            return [md for _, md in self.seen if md.get(key) == value]


def _refusing(handler, code: grpc.StatusCode, message: str):
    def unary(request, context):
        context.abort(code, message)

    def streaming(requests, context):
        # Read the client's batches first: a stream ended while an asyncio client is still
        # writing may reach it as INTERNAL "Internal error from Core" instead of this status
        # (grpc.aio race, https://github.com/grpc/grpc/issues/36066).
        for _ in requests:
            pass
        context.abort(code, message)
        yield  # a generator, as a streaming handler must be

    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(
            streaming, handler.request_deserializer, handler.response_serializer
        )
    return grpc.unary_unary_rpc_method_handler(
        unary, handler.request_deserializer, handler.response_serializer
    )


@dataclass(frozen=True)
class TLSServer:
    certs: Certs
    auth: AuthInterceptor
    tls: str
    mtls: str
    localhost_only: str
    plaintext: str


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    certs = make_certs(tmp_path_factory.mktemp("certs"))
    auth = AuthInterceptor()
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), interceptors=[auth])
    behaviour = Behaviour()
    encoder_pb2_grpc.add_EncoderServicer_to_server(FakeEncoder(behaviour), grpc_server)
    models_pb2_grpc.add_ModelsServicer_to_server(FakeModels(), grpc_server)

    def port(issued=None, *, require_client_auth: bool = False) -> str:
        if issued is None:
            number = grpc_server.add_insecure_port("127.0.0.1:0")
        else:
            credentials = grpc.ssl_server_credentials(
                [(issued.key, issued.cert)],
                root_certificates=certs.ca.cert if require_client_auth else None,
                require_client_auth=require_client_auth,
            )
            number = grpc_server.add_secure_port("127.0.0.1:0", credentials)
        return f"127.0.0.1:{number}"

    started = TLSServer(
        certs=certs,
        auth=auth,
        tls=port(certs.server),
        mtls=port(certs.server, require_client_auth=True),
        localhost_only=port(certs.server_localhost_only),
        plaintext=port(),
    )
    grpc_server.start()
    yield started
    grpc_server.stop(grace=None)


# --- one helper for both clients ----------------------------------------------------------------


@pytest.fixture(params=["sync", "async"])
def flavour(request: pytest.FixtureRequest) -> str:
    return request.param


def call(
    flavour: str,
    target: str,
    *,
    texts: tuple[str, ...] = ("hello", "world"),
    stream: bool = False,
    options: dict[str, Any] | None = None,
    **client_args: Any,
) -> int:
    """One ``encode`` (or a one-batch ``encode_stream``) by a fresh client, optionally through
    ``with_options(**options)``; returns the number of embeddings. No retries unless asked."""
    client_args = {"timeout": 10.0, "max_retries": 0, **client_args}
    batch = Batch(list(texts), id="b")

    if flavour == "sync":
        with Client(target, **client_args) as client:
            copy = client.with_options(**options) if options else client
            if stream:
                (outcome,) = copy.encode_stream([batch])
                return len(outcome.unwrap())
            return len(copy.encode(list(texts)))

    async def main() -> int:
        async with AsyncClient(target, **client_args) as client:
            copy = client.with_options(**options) if options else client
            if stream:
                (outcome,) = [r async for r in copy.encode_stream([batch])]
                return len(outcome.unwrap())
            return len(await copy.encode(list(texts)))

    return asyncio.run(main())


def refused(flavour: str, target: str, **args: Any) -> HeadserveError:
    """The error of a ``call`` that must fail quickly (well before its 10 s deadline)."""
    start = time.monotonic()
    with pytest.raises(HeadserveError) as caught:
        call(flavour, target, **args)
    assert time.monotonic() - start < 5.0
    return caught.value


def token() -> str:
    return f"tok-{uuid.uuid4().hex}"


# --- TLS ----------------------------------------------------------------------------------------


def test_tls_with_the_ca(server: TLSServer, flavour: str) -> None:
    ca = server.certs.ca
    assert call(flavour, server.tls, tls=TLS(ca=ca.cert)) == 2
    assert call(flavour, server.tls, tls=TLS(ca=ca.cert_path), stream=True) == 2
    assert call(flavour, server.tls, tls=TLS(ca=str(ca.cert_path))) == 2


def test_plaintext_client_against_a_tls_server_is_unavailable(
    server: TLSServer, flavour: str
) -> None:
    assert isinstance(refused(flavour, server.tls), UnavailableError)
    assert isinstance(refused(flavour, server.tls, tls=False), UnavailableError)


@pytest.mark.parametrize("tls", ["default-roots", "other-ca"])
def test_tls_without_trusting_the_ca_fails(server: TLSServer, flavour: str, tls: str) -> None:
    settings = True if tls == "default-roots" else TLS(ca=server.certs.untrusted_ca.cert)
    error = refused(flavour, server.tls, tls=settings)
    assert isinstance(error, UnavailableError)


def test_tls_client_against_a_plaintext_server_fails(server: TLSServer, flavour: str) -> None:
    error = refused(flavour, server.plaintext, tls=TLS(ca=server.certs.ca.cert))
    assert isinstance(error, UnavailableError)


def test_server_name_override(server: TLSServer, flavour: str) -> None:
    ca = server.certs.ca.cert
    # the certificate names localhost only: 127.0.0.1 does not match it...
    assert isinstance(refused(flavour, server.localhost_only, tls=TLS(ca=ca)), UnavailableError)
    # ...unless the client is told which name to check
    tls = TLS(ca=ca, server_name="localhost")
    assert call(flavour, server.localhost_only, tls=tls) == 2
    assert call(flavour, server.localhost_only, tls=tls, stream=True) == 2
    wrong = TLS(ca=ca, server_name="elsewhere.example")
    assert isinstance(refused(flavour, server.tls, tls=wrong), UnavailableError)


# --- mutual TLS ---------------------------------------------------------------------------------


def test_mutual_tls_accepts_a_client_certificate_of_the_ca(server: TLSServer, flavour: str) -> None:
    certs = server.certs
    by_path = TLS(ca=certs.ca.cert_path, cert=certs.client.cert_path, key=certs.client.key_path)
    by_bytes = TLS(ca=certs.ca.cert, cert=certs.client.cert, key=certs.client.key)
    assert call(flavour, server.mtls, tls=by_path) == 2
    assert call(flavour, server.mtls, tls=by_bytes, stream=True) == 2


def test_mutual_tls_refuses_a_client_without_a_certificate(server: TLSServer, flavour: str) -> None:
    error = refused(flavour, server.mtls, tls=TLS(ca=server.certs.ca.cert))
    assert isinstance(error, UnavailableError)


def test_mutual_tls_refuses_a_client_certificate_of_another_ca(
    server: TLSServer, flavour: str
) -> None:
    certs = server.certs
    tls = TLS(ca=certs.ca.cert, cert=certs.untrusted_client.cert, key=certs.untrusted_client.key)
    assert isinstance(refused(flavour, server.mtls, tls=tls), UnavailableError)


# --- bearer token -------------------------------------------------------------------------------


@pytest.mark.parametrize("port", ["tls", "plaintext"])
def test_token_is_sent_on_unary_and_stream_calls(
    server: TLSServer, flavour: str, port: str
) -> None:
    secret = token()
    tls = TLS(ca=server.certs.ca.cert) if port == "tls" else None
    target = getattr(server, port)
    assert call(flavour, target, tls=tls, token=secret) == 2
    assert call(flavour, target, tls=tls, token=secret, stream=True) == 2
    assert server.auth.calls_with(secret) == ["Encode", "EncodeStream"]


def test_token_survives_with_options(server: TLSServer, flavour: str) -> None:
    secret, tenant = token(), uuid.uuid4().hex
    options = {"metadata": [("x-tenant", tenant)], "timeout": 5.0}
    for stream in (False, True):
        call(flavour, server.plaintext, token=secret, options=options, stream=stream)
    sent = server.auth.calls_where("x-tenant", tenant)
    assert [md["authorization"] for md in sent] == [f"Bearer {secret}"] * 2


def test_with_options_replaces_or_drops_the_token(server: TLSServer, flavour: str) -> None:
    first, second, tenant = token(), token(), uuid.uuid4().hex
    call(flavour, server.plaintext, token=first, options={"token": second})
    call(
        flavour,
        server.plaintext,
        token=first,
        options={"token": None, "metadata": [("x-tenant", tenant)]},
    )
    assert server.auth.calls_with(first) == []
    assert server.auth.calls_with(second) == ["Encode"]
    (dropped,) = server.auth.calls_where("x-tenant", tenant)
    assert "authorization" not in dropped


def test_retried_calls_carry_the_token(server: TLSServer, flavour: str) -> None:
    secret = token()
    flaky = f"flaky:{uuid.uuid4().hex}:1"  # UNAVAILABLE once, then an answer
    assert call(flavour, server.plaintext, token=secret, texts=(flaky,), max_retries=2) == 1
    assert server.auth.calls_with(secret) == ["Encode", "Encode"]


@pytest.mark.parametrize(
    ("prefix", "error_class"),
    [("rejected-", UnauthenticatedError), ("forbidden-", PermissionDeniedError)],
)
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_refused_token_raises_after_one_attempt(
    server: TLSServer, flavour: str, prefix: str, error_class: type, stream: bool
) -> None:
    secret = prefix + token()
    tls = TLS(ca=server.certs.ca.cert)
    error = refused(flavour, server.tls, tls=tls, token=secret, max_retries=3, stream=stream)
    assert type(error) is error_class
    assert secret not in str(error) and secret not in repr(error)
    assert len(server.auth.calls_with(secret)) == 1


# --- argument checks ----------------------------------------------------------------------------


CLIENTS: list[Callable[..., Any]] = [Client, AsyncClient]


def test_tls_needs_cert_and_key_together() -> None:
    with pytest.raises(ValueError, match="both cert"):
        TLS(cert=b"cert")
    with pytest.raises(ValueError, match="both cert"):
        TLS(key=b"key")
    with pytest.raises(ValueError, match="as bytes"):
        TLS(ca="-----BEGIN CERTIFICATE-----\n...")


def test_tls_repr_hides_the_key() -> None:
    tls = TLS(ca="ca.pem", cert=b"-----BEGIN CERTIFICATE-----", key=b"SECRET KEY")
    assert "SECRET" not in repr(tls)
    assert repr(tls) == "TLS(ca='ca.pem', cert=<27 bytes of PEM>, key=...)"


def test_a_missing_pem_file_fails_when_the_client_is_made(tmp_path) -> None:
    for make in CLIENTS:
        with pytest.raises(FileNotFoundError):
            make("localhost:1", tls=TLS(ca=tmp_path / "missing.pem"))


def test_tls_and_channel_do_not_mix() -> None:
    channel = grpc.insecure_channel("localhost:1")
    with pytest.raises(ValueError, match="not with channel"):
        Client(channel=channel, tls=True)
    channel.close()

    async def main() -> None:
        channel = grpc.aio.insecure_channel("localhost:1")
        with pytest.raises(ValueError, match="not with channel"):
            AsyncClient(channel=channel, tls=TLS())
        await channel.close()

    asyncio.run(main())


@pytest.mark.parametrize("bad", ["abc\n", "abc\r\ndef", "a\tb", "\x00x", "tökén", ""])
def test_bad_tokens_are_refused_without_being_shown(bad: str) -> None:
    for make in CLIENTS:
        with pytest.raises(ValueError) as caught:
            make("localhost:1", token=bad)
        if bad:
            assert bad not in str(caught.value)
    with Client("localhost:1") as client, pytest.raises(ValueError, match="token"):
        client.with_options(token=bad)


def test_token_stays_out_of_reprs_and_metadata() -> None:
    secret = token()
    with Client("localhost:1", token=secret, metadata=[("x-a", "1")]) as client:
        copy = client.with_options(metadata=[("x-b", "2")])
        for shown in (client, copy):
            assert shown.metadata in ((("x-a", "1"),), (("x-b", "2"),))
            assert secret not in repr(vars(shown))
    with pytest.raises(ValueError, match="authorization") as caught:
        Client("localhost:1", token=secret, metadata=[("authorization", "Basic x")])
    assert secret not in str(caught.value)
