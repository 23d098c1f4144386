"""Who may call: TLS, mutual TLS, bearer tokens (health open by option), safetensors only.
Certificates are made by the tests (tests/certs.py, the `cryptography` package)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch
from certs import Certs, make_certs
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serving import ServerThread
from transformers import AutoModel, AutoTokenizer

from headserve.client import TLS, Batch, Client, UnauthenticatedError, UnavailableError
from headserve.plugins.contract import HeadSpec
from headserve.server.backbones.backbone import TextBackbone
from headserve.server.calls.security import Security, SecurityError, read_tokens
from headserve.server.loading import Settings, build_core

TOKEN = "s3cret-token-for-tests-0123456789"
OTHER = "another-valid-token-abcdefghijkl"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def _serve(bert, security: Security) -> ServerThread:  # type: ignore[no-untyped-def]
    heads = (HeadSpec("encode", "encode"), HeadSpec("sentiment", "classify", bert.classify))
    return ServerThread(
        Settings(model_dir=bert.backbone, heads=heads, device="cpu", security=security)
    )


@pytest.fixture(scope="module")
def tls_server(bert, certs: Certs) -> Iterator[ServerThread]:  # type: ignore[no-untyped-def]
    thread = _serve(bert, Security(tls_cert=certs.server.cert_path, tls_key=certs.server.key_path))
    yield thread
    thread.stop()


def test_tls_serves_clients_that_trust_the_ca(tls_server: ServerThread, certs: Certs) -> None:
    with Client(tls_server.target, tls=TLS(ca=certs.ca.cert_path)) as client:
        assert len(client.encode(["over TLS"])) == 1
    with Client(tls_server.target, timeout=5, max_retries=0) as plain:
        with pytest.raises(UnavailableError):
            plain.encode(["plaintext to a TLS port"])
    with Client(tls_server.target, tls=True, timeout=5, max_retries=0) as untrusting:
        with pytest.raises(UnavailableError):
            untrusting.encode(["our CA is not a system root"])


def test_mutual_tls_needs_a_client_certificate_from_the_ca(bert, certs: Certs) -> None:  # type: ignore[no-untyped-def]
    security = Security(
        tls_cert=certs.server.cert_path,
        tls_key=certs.server.key_path,
        tls_client_ca=certs.ca.cert_path,
    )
    thread = _serve(bert, security)
    try:
        trusted = TLS(ca=certs.ca.cert_path, cert=certs.client.cert_path, key=certs.client.key_path)
        with Client(thread.target, tls=trusted) as client:
            assert len(client.encode(["mutual TLS"])) == 1
        for tls in (
            TLS(ca=certs.ca.cert_path),
            TLS(
                ca=certs.ca.cert_path,
                cert=certs.untrusted_client.cert_path,
                key=certs.untrusted_client.key_path,
            ),
        ):
            with Client(thread.target, tls=tls, timeout=5, max_retries=0) as client:
                with pytest.raises(UnavailableError):
                    client.encode(["refused"])
    finally:
        thread.stop()


@pytest.fixture(scope="module")
def token_server(bert) -> Iterator[ServerThread]:  # type: ignore[no-untyped-def]
    thread = _serve(bert, Security(tokens=(TOKEN, OTHER)))
    yield thread
    thread.stop()


def _health(target: str, metadata: tuple[tuple[str, str], ...] = ()) -> int:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=""), metadata=metadata).status


def test_tokens_are_required_and_nothing_leaks(token_server: ServerThread) -> None:
    target = token_server.target
    for token in (None, "wrong-token-of-enough-length", TOKEN + "x", TOKEN[:-1]):
        with Client(target, token=token, max_retries=0) as client:
            for call in (
                lambda c: c.encode(["no entry"]),
                lambda c: c.model_info(),
                lambda c: c.classify(["no entry"]),
                lambda c: list(c.encode_stream([Batch(["no"], id="1")])),
            ):
                with pytest.raises(UnauthenticatedError) as caught:
                    call(client)
                message = str(caught.value).lower()
                for secret in ("bert", "sentiment", "encode", "head", "token-for-tests"):
                    assert secret not in message.replace("bearer token", ""), message
    for token in (TOKEN, OTHER):
        with Client(target, token=token) as client:
            assert len(client.encode(["let in"])) == 1
            assert [r.ok for r in client.encode_stream([Batch(["a"], id="1")])] == [True]
    with grpc.insecure_channel(target) as channel:  # the scheme must be Bearer
        stub = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Check(
                health_pb2.HealthCheckRequest(), metadata=(("authorization", f"Basic {TOKEN}"),)
            )
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError):  # health needs a token too, unless opened
        _health(target)
    assert _health(target, (("authorization", f"Bearer {TOKEN}"),)) == 1  # SERVING


def test_health_can_stay_open(bert) -> None:  # type: ignore[no-untyped-def]
    thread = _serve(bert, Security(tokens=(TOKEN,), open_health=True))
    try:
        assert _health(thread.target) == health_pb2.HealthCheckResponse.SERVING
        with Client(thread.target, max_retries=0) as client:
            with pytest.raises(UnauthenticatedError):
                client.encode(["still closed"])
    finally:
        thread.stop()


def test_tokens_come_from_a_file_or_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# ops team\n{TOKEN}\n\n  {OTHER}  \n")
    assert read_tokens(path, {}) == (TOKEN, OTHER)
    assert read_tokens(None, {"HEADSERVE_AUTH_TOKENS": f"{OTHER}, {TOKEN}"}) == (OTHER, TOKEN)
    assert read_tokens(None, {}) == ()
    with pytest.raises(SecurityError, match="16 printable"):
        read_tokens(None, {"HEADSERVE_AUTH_TOKENS": "short"})
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(SecurityError, match="no token"):
        read_tokens(tmp_path / "empty", {})
    assert TOKEN not in repr(Security(tokens=(TOKEN,)))
    with pytest.raises(SecurityError, match="go together"):
        Security(tls_cert=path)


def test_pickle_checkpoints_are_refused_unless_allowed(bert, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "pickled"
    model = AutoModel.from_pretrained(str(bert.backbone))
    folder.mkdir()
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")  # a pickle checkpoint
    AutoTokenizer.from_pretrained(str(bert.backbone)).save_pretrained(folder)
    assert (folder / "pytorch_model.bin").is_file() and not list(folder.glob("*.safetensors"))
    with pytest.raises(
        ValueError, match=r"pickle weights only \(pytorch_model\.bin\).*--allow-pickle"
    ):
        TextBackbone.load(folder, device="cpu")
    assert TextBackbone.load(folder, device="cpu", allow_pickle=True).config.hidden_size == 32
    core = build_core(
        Settings(
            allow_failed_heads=True,
            model_dir=bert.backbone,
            heads=(HeadSpec("encode", "encode"), HeadSpec("pickled", "classify", folder)),
            device="cpu",
        )
    )
    (failure,) = core.registry.failures
    assert "no safetensors weights" in failure.reason and "--allow-pickle" in failure.reason
