"""Garbage on the port (random bytes, an HTTP/1.1 request, a connection dropped mid-frame,
connections that say nothing) leaves the server serving the next call normally."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator

import pytest
from serving import ServerThread

from headserve.client import Client
from headserve.plugins.contract import HeadSpec
from headserve.server.loading import Settings

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@pytest.fixture(scope="module")
def server(bert) -> Iterator[ServerThread]:  # type: ignore[no-untyped-def]
    thread = ServerThread(
        Settings(model_dir=bert.backbone, heads=(HeadSpec("encode", "encode"),), device="cpu")
    )
    yield thread
    thread.stop()


def _send(target: str, payload: bytes, *, read: bool = True) -> bytes:
    host, port = target.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        if payload:
            sock.sendall(payload)
        if not read:
            return b""
        try:
            return sock.recv(4096)
        except (TimeoutError, ConnectionResetError):
            return b""


def _still_serving(target: str) -> None:
    with Client(target, timeout=10, max_retries=0) as client:
        assert len(client.encode(["still here"])) == 1


def test_random_bytes(server: ServerThread) -> None:
    rng = random.Random(0)
    for size in (1, 9, 24, 100, 4096, 65536):
        _send(server.target, rng.randbytes(size))
        _still_serving(server.target)


def test_an_http1_request(server: ServerThread) -> None:
    reply = _send(server.target, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert not reply.startswith(b"HTTP/1.1 200")
    _still_serving(server.target)


def test_connections_dropped_mid_frame(server: ServerThread) -> None:
    settings_frame = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # empty SETTINGS
    headers_cut = b"\x00\x01\x00\x01\x04\x00\x00\x00\x01" + b"\x82\x86"  # promises 256 bytes
    data_cut = b"\x00\x10\x00\x00\x00\x00\x00\x00\x01\x00\x00"  # a DATA frame cut short
    for payload in (
        PREFACE[:10],
        PREFACE,
        PREFACE + settings_frame[:5],
        PREFACE + settings_frame + headers_cut,
        PREFACE + settings_frame + data_cut,
    ):
        _send(server.target, payload, read=False)
        _still_serving(server.target)


def test_silent_connections(server: ServerThread) -> None:
    host, port = server.target.rsplit(":", 1)
    sockets = [socket.create_connection((host, int(port)), timeout=5) for _ in range(50)]
    try:
        _still_serving(server.target)  # fifty idle connections do not block a real caller
    finally:
        for sock in sockets:
            sock.close()
    _still_serving(server.target)
