"""What one HTTP connection may take (transports/http_connections.py): a head's bytes and
fields (431), the time its head and its body may take (408), an idle kept-alive connection,
and how many connections are open at once, with the metrics endpoint still answering at that
cap while the process has few file descriptors. Spoken to with raw sockets, as an attacker
would: no client library tidies up what is sent."""

from __future__ import annotations

import json
import re
import resource
import select
import socket
import time
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from serving import ServerThread, start_cli_server

from headserve.plugins.contract import HeadSpec
from headserve.server.calls.connections import Connections
from headserve.server.loading import Settings
from headserve.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc

LIMITS = Connections(
    http_header_timeout=1.0,
    http_body_timeout=1.0,
    http_keepalive_timeout=1.0,
    http_max_header_bytes=4096,
    http_max_headers=20,
    http_max_json_values=10_000,
)


@pytest.fixture(scope="module")
def server(bert) -> Iterator[ServerThread]:  # type: ignore[no-untyped-def]
    thread = ServerThread(
        Settings(
            model_dir=bert.backbone,
            heads=(HeadSpec("encode", "encode"),),
            device="cpu",
            http_port=0,
            connections=LIMITS,
        )
    )
    yield thread
    thread.stop()


def _connect(server: ServerThread) -> socket.socket:
    assert server.server.http is not None
    sock = socket.create_connection(("127.0.0.1", server.server.http.port), timeout=10)
    return sock


def _answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body of one answer; the body read to its content-length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return status, headers, body


def _closed(sock: socket.socket, within: float) -> float:
    """Seconds until the server closed `sock` (reads to the end; fails past `within`)."""
    start = time.monotonic()
    sock.settimeout(within)
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
    return time.monotonic() - start


def _encode(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        reply = encoder_pb2_grpc.EncoderStub(channel).Encode(
            encoder_pb2.EncodeRequest(items=[common_pb2.TextInput(text="still answered")]),
            timeout=30,
        )
    return len(reply.results)


def _refused(server: ServerThread, reason: str) -> float:
    metrics = server.server.pipeline.metrics
    assert metrics is not None
    value = metrics.registry.get_sample_value("headserve_http_refused_total", {"reason": reason})
    return value or 0.0


def test_a_head_over_the_byte_limit_is_431_before_it_is_all_sent(server: ServerThread) -> None:
    before = _refused(server, "headers_too_large")
    with _connect(server) as sock:
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\nx-big: ")
        sent = 0
        # a header value of up to 64 MB, sent until the server answers: long before its end
        while sent < 64 * 1024 * 1024 and not select.select([sock], [], [], 0)[0]:
            sock.sendall(b"a" * 4096)
            sent += 4096
            time.sleep(0.001)
        assert sent < 1024 * 1024
        status, _, body = _answer(sock)
    assert status == 431
    assert b"--http-max-header-bytes" in body
    assert _refused(server, "headers_too_large") == before + 1


def test_more_header_fields_than_allowed_are_431(server: ServerThread) -> None:
    fields = "".join(f"x-field-{i}: 1\r\n" for i in range(30))
    with _connect(server) as sock:
        sock.sendall(f"GET /health HTTP/1.1\r\nhost: x\r\n{fields}\r\n".encode())
        status, _, body = _answer(sock)
    assert status == 431
    error = json.loads(body)["error"]
    assert error["code"] == "too_many_headers"
    assert "31 header fields, more than 20" in error["message"]


def test_a_head_trickled_in_is_ended_with_408_and_others_are_answered(
    server: ServerThread,
) -> None:
    with _connect(server) as sock:
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\n")
        start = time.monotonic()
        for _ in range(3):  # one header line every 0.4 s: each read is prompt, the head never ends
            time.sleep(0.4)
            try:
                sock.sendall(b"x-slow: 1\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
        assert _encode(server.target) == 1  # others are answered meanwhile
        status, _, body = _answer(sock)
        assert status == 408
        assert b"--http-header-timeout" in body
        assert time.monotonic() - start < 1.0 + 2.0
        _closed(sock, within=2)


def test_a_connection_that_never_sends_is_closed(server: ServerThread) -> None:
    with _connect(server) as sock:
        assert 0.8 < _closed(sock, within=5) < 3


def test_an_idle_kept_alive_connection_is_closed(server: ServerThread) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        status, headers, _ = _answer(sock)
        assert status == 200 and headers.get("connection") != "close"
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")  # kept alive: answered again
        assert _answer(sock)[0] == 200
        assert 0.8 < _closed(sock, within=5) < 3


def test_a_body_trickled_in_is_408_and_counted(server: ServerThread) -> None:
    with _connect(server) as sock:
        sock.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b'content-length: 100\r\n\r\n{"input": '
        )
        status, _, body = _answer(sock)
    assert status == 408
    error = json.loads(body)["error"]
    assert error["code"] == "request_timeout"
    assert "--http-body-timeout" in error["message"]
    metrics = server.server.pipeline.metrics
    assert metrics is not None
    assert metrics.registry.get_sample_value(
        "headserve_calls_total",
        {
            "transport": "http",
            "rpc": "POST /v1/embeddings",
            "code": "DEADLINE_EXCEEDED",
            "priority": "interactive",
        },
    )


def test_bodies_sent_slowly_take_no_call_places(server: ServerThread) -> None:
    """A body is read before its call is admitted: 130 requests trickling their bodies (more
    than --max-concurrent-calls, 128) hold connections, and a gRPC call is still answered."""
    socks = [_connect(server) for _ in range(130)]
    try:
        for sock in socks:
            sock.sendall(
                b"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b'content-length: 100\r\n\r\n{"input": '
            )
        time.sleep(0.2)
        assert _encode(server.target) == 1
        assert _answer(socks[0])[0] == 408  # each, once --http-body-timeout passes
    finally:
        for sock in socks:
            sock.close()


def test_a_body_of_too_many_json_values_is_413_unparsed(server: ServerThread) -> None:
    """Parsing holds the GIL however it runs, so a body of 40,000 token ids (80 KB) is
    refused from its commas' count, before it is parsed."""
    ids = b",".join([b"1"] * 40_000)
    body = b'{"input": [[' + ids + b"]]}"
    with _connect(server) as sock:
        sock.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        status, _, answer = _answer(sock)
    assert status == 413
    assert "40,000 JSON values, more than 10,000 (--http-max-json-values)" in answer.decode()


def _lower_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


NOFILE = 256


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text: str = reply.read().decode()
    return text


@pytest.mark.e2e
def test_at_the_connection_cap_metrics_and_grpc_still_answer(bert) -> None:  # type: ignore[no-untyped-def]
    """The server may open 256 files: HTTP connections stop at 192 (three quarters), the
    ones past it get 503 and are closed at once, and the descriptors left keep /metrics and
    gRPC answering."""
    server = start_cli_server(
        [
            str(bert.backbone),
            "--head",
            "encode=encode",
            "--device",
            "cpu",
            "--http-port",
            "0",
            "--metrics-port",
            "0",
        ],
        preexec_fn=_lower_nofile,
    )
    held: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 30
        while (
            "OpenAI-style HTTP on port" not in "".join(server.log) and time.monotonic() < deadline
        ):
            time.sleep(0.1)
        log = "".join(server.log)
        http_port = int(re.search(r"OpenAI-style HTTP on port (\d+)", log).group(1))  # type: ignore[union-attr]
        metrics_port = int(re.search(r"metrics on http://[^:]+:(\d+)/", log).group(1))  # type: ignore[union-attr]
        assert "HTTP connections capped at 192" in log
        busy = 0
        for _ in range(NOFILE + 50):  # more connections than the process may hold files
            sock = socket.create_connection(("127.0.0.1", http_port), timeout=10)
            held.append(sock)
        time.sleep(0.5)
        for sock in held:
            sock.setblocking(False)
            try:
                first = sock.recv(65536)
            except BlockingIOError:
                continue  # held open by the server: no answer yet
            if first.startswith(b"HTTP/1.1 503"):
                busy += 1
        assert busy >= NOFILE + 50 - 192
        text = _metrics(metrics_port)  # at the cap, /metrics answers
        open_now = re.search(r"^headserve_http_connections (\S+)$", text, re.M)
        assert open_now is not None and float(open_now.group(1)) == 192
        full = re.search(
            r'^headserve_http_refused_total\{reason="connections_full"\} (\S+)$', text, re.M
        )
        assert full is not None and float(full.group(1)) >= busy
        assert _encode(server.target) == 1  # and gRPC
        for sock in held:
            sock.close()
        held.clear()
        time.sleep(0.5)
        with socket.create_connection(("127.0.0.1", http_port), timeout=10) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    finally:
        for sock in held:
            sock.close()
        server.proc.terminate()
        server.output()
