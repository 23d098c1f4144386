"""The OpenAI-style HTTP endpoint under hostile JSON: every answer is 200 with the documented
shape, or an OpenAI error object with a documented status (never 500), and the server goes
on serving."""

from __future__ import annotations

import json
import math
import socket
import urllib.error
import urllib.request
from typing import Any

import strategies as S
from hypothesis import example, given
from hypothesis import strategies as st
from serving import ServerThread

DOCUMENTED = {400, 404, 413, 429}  # 429: the fuzz server's queue is small
ROUTES = ("/v1/embeddings", "/v1/rerank")


def _post(server: ServerThread, path: str, body: bytes) -> tuple[int, Any]:
    assert server.server.http is not None
    url = f"http://127.0.0.1:{server.server.http.port}{path}"
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _inputs() -> st.SearchStrategy[Any]:
    token_ids = st.lists(st.integers(-5, 40_000), max_size=8)
    return st.one_of(
        S.texts(),
        st.lists(S.texts(), max_size=S.MAX_ITEMS + 2),
        token_ids,
        st.lists(token_ids, max_size=3),
        S.json_values(),
    )


def embeddings_bodies() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"input": _inputs()},
        optional={
            "model": st.one_of(st.sampled_from(list(S.HEADS)), S.json_values()),
            "dimensions": st.one_of(st.integers(-2, 1000), S.json_values()),
            "encoding_format": st.one_of(st.sampled_from(["float", "base64"]), S.json_values()),
            "user": S.json_values(),
        },
    )


def rerank_bodies() -> st.SearchStrategy[dict[str, Any]]:
    documents = st.lists(
        st.one_of(S.texts(), st.builds(lambda t: {"text": t}, S.texts()), S.json_values()),
        max_size=S.MAX_ITEMS + 2,
    )
    return st.fixed_dictionaries(
        {"query": st.one_of(S.texts(), S.json_values()), "documents": documents},
        optional={
            "model": st.one_of(st.sampled_from(["rank", "encode", "mlm", "nope"]), S.json_values()),
            "top_n": st.one_of(st.integers(-1, 5), S.json_values()),
            "return_documents": st.one_of(st.booleans(), S.json_values()),
        },
    )


def _check(status: int, body: Any, sent: dict[str, Any], path: str) -> None:
    if status != 200:
        assert status in DOCUMENTED, (status, body)
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], body
        return
    if path == "/v1/embeddings":
        assert body["object"] == "list" and body["usage"]["prompt_tokens"] >= 2
        for index, item in enumerate(body["data"]):
            assert item["index"] == index
            if sent.get("encoding_format") != "base64":
                assert all(math.isfinite(v) for v in item["embedding"])
    else:
        scores = [r["relevance_score"] for r in body["results"]]
        assert scores == sorted(scores, reverse=True)


@given(path=st.sampled_from(ROUTES), data=st.data())
@example(path="/v1/embeddings", data=None)
def test_http_bodies(fuzz_server: ServerThread, path: str, data: Any) -> None:
    if data is None:
        sent: dict[str, Any] = {"input": ["Alice works in Paris."], "model": "encode"}
    else:
        strategy = embeddings_bodies() if path == "/v1/embeddings" else rerank_bodies()
        sent = data.draw(strategy)
    try:
        body = json.dumps(sent, allow_nan=True).encode()
    except (TypeError, ValueError):
        return
    status, answer = _post(fuzz_server, path, body)
    _check(status, answer, sent, path)
    good = {"input": "still serving", "model": "encode"}
    assert _post(fuzz_server, "/v1/embeddings", json.dumps(good).encode())[0] == 200


@given(body=S.raw_bodies())
def test_http_raw_bytes(fuzz_server: ServerThread, body: bytes) -> None:
    for path in ROUTES:
        status, answer = _post(fuzz_server, path, body)
        assert status in DOCUMENTED, (status, answer)
        assert answer["error"]["message"]


# --- the request's head: method, path and header fields, as raw bytes ------------------------

HEAD_STATUSES = {200, 400, 404, 405, 413, 431}
_FRAMING = (b"content-length", b"transfer-encoding", b"expect")  # would make it wait for a body


def _field_names() -> st.SearchStrategy[bytes]:
    names = st.one_of(
        st.sampled_from([b"host", b"accept", b"x-request-id", b"content-type", b"authorization"]),
        st.binary(min_size=0, max_size=40),
    )
    return names.filter(
        lambda n: not any(f in n.lower() for f in _FRAMING) and b"\r" not in n and b"\n" not in n
    )


def _field_values() -> st.SearchStrategy[bytes]:
    short = st.binary(max_size=60)
    # long ones, up to past --http-max-header-bytes (16 KiB): a few bytes repeated
    long = st.builds(
        lambda unit, n: unit * n, st.binary(min_size=1, max_size=3), st.integers(0, 9000)
    )
    return st.one_of(short, long).filter(lambda v: b"\r" not in v and b"\n" not in v)


@st.composite
def request_heads(draw: st.DrawFn) -> bytes:
    method = draw(
        st.one_of(st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD"]), st.binary(max_size=8))
    )
    path = draw(
        st.one_of(
            st.sampled_from([b"/health", b"/v1/models", b"/v1/embeddings", b"/nope"]),
            st.binary(max_size=30).map(lambda p: b"/" + p),
        )
    )
    count = draw(st.sampled_from([0, 1, 5, 30, 99, 101, 400]))  # around --http-max-headers
    fields = draw(
        st.lists(st.tuples(_field_names(), _field_values()), min_size=count, max_size=count)
    )
    lines = [method + b" " + path + b" HTTP/1.1", b"host: fuzz"]
    lines += [name + b": " + value for name, value in fields]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _status_of(server: ServerThread, head: bytes) -> int | None:
    """The status the server answers `head` with; None if it closed without an answer."""
    assert server.server.http is not None
    with socket.create_connection(("127.0.0.1", server.server.http.port), timeout=30) as sock:
        try:
            sock.sendall(head)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before all of it was read (a head over the limit)
        try:
            first = sock.recv(64)
        except ConnectionResetError:
            return None
    if not first:
        return None
    return int(first.split(b" ", 2)[1])


@given(head=request_heads())
@example(head=b"GET /health HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 20_000 + b"\r\n\r\n")
@example(head=b"GET /health HTTP/1.1\r\n" + b"x: 1\r\n" * 150 + b"\r\n")
def test_http_request_heads(fuzz_server: ServerThread, head: bytes) -> None:
    status = _status_of(fuzz_server, head)
    if len(head) > 16 * 1024:  # over --http-max-header-bytes: 431 (400 if also malformed),
        assert status in (400, 431, None), status  # or refused before it was all sent
        if head.startswith(b"GET /health HTTP/1.1\r\nhost: x\r\nx-big: "):
            assert status in (431, None), status
    else:
        assert status in HEAD_STATUSES, (status, head[:200])
    good = {"input": "still serving", "model": "encode"}
    assert _post(fuzz_server, "/v1/embeddings", json.dumps(good).encode())[0] == 200
