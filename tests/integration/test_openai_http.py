"""The OpenAI-style HTTP endpoint (--http-port), called with the official `openai` and `cohere`
packages and plain HTTP: its vectors equal gRPC Encode's on the same server (held to sentence-transformers
and transformers in their own tests), float and base64; rerank in the Cohere / Jina shape
equals gRPC Rerank; errors are OpenAI's JSON with the right status; tokens, TLS, limits, the
shared scheduler, metrics and tracing are gRPC's."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cohere
import numpy as np
import openai
import pytest
from certs import Certs, make_certs
from faults import held
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from serving import ServerThread
from transformers import AutoTokenizer

from headserve.client import Client
from headserve.plugins.contract import HeadSpec
from headserve.server.calls.security import Security
from headserve.server.core.limits import RequestLimits
from headserve.server.core.scheduler import Limits
from headserve.server.loading import Settings
from headserve.server.observability.tracing import Tracing

TOL = 1e-5
TEXTS = ["Alice works in Paris at the bank.", "the quick brown fox", "Bob visits Berlin."]
TOKEN = "an-http-token-of-at-least-16-chars"


def _settings(bert, **extra: Any) -> Settings:  # type: ignore[no-untyped-def]
    heads = (
        HeadSpec("encode", "encode", None, {"pooling": "mean"}),
        HeadSpec("classify", "classify", bert.classify, {"rerank_score": "label:positive"}),
    )
    base: dict[str, Any] = dict(model_dir=bert.backbone, heads=heads, device="cpu", http_port=0)
    return Settings(**{**base, **extra})


@pytest.fixture(scope="module")
def server(bert) -> Iterator[ServerThread]:  # type: ignore[no-untyped-def]
    thread = ServerThread(_settings(bert, limits=Limits(workers=1)))
    yield thread
    thread.stop()


def _base(thread: ServerThread, scheme: str = "http") -> str:
    assert thread.server.http is not None
    return f"{scheme}://127.0.0.1:{thread.server.http.port}"


def _openai(thread: ServerThread, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=_base(thread) + "/v1", api_key=api_key, max_retries=0)


def _http(
    url: str,
    body: Any = None,
    *,
    token: str | None = None,
    context: ssl.SSLContext | None = None,
    raw: bytes | None = None,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, JSON body, headers) of a GET (no body) or POST."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
    request.add_header("content-type", "application/json")
    if token is not None:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)


def _declaring(thread: ServerThread, length: int) -> tuple[int, dict[str, Any]]:
    """A POST whose headers declare a body of `length` bytes, and no body sent: the answer."""
    assert thread.server.http is not None
    connection = http.client.HTTPConnection("127.0.0.1", thread.server.http.port, timeout=30)
    try:
        connection.putrequest("POST", "/v1/embeddings")
        connection.putheader("content-type", "application/json")
        connection.putheader("content-length", str(length))
        connection.endheaders()
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_embeddings_through_the_openai_client_equal_grpc_encode(server: ServerThread) -> None:
    client = _openai(server)
    with Client(server.target) as grpc_client:
        want = grpc_client.encode(TEXTS)
        want_short = grpc_client.encode(TEXTS, dimensions=8)
    floats = client.embeddings.create(model="encode", input=TEXTS, encoding_format="float")
    decoded = client.embeddings.create(model="encode", input=TEXTS)  # base64, decoded by openai
    raw = client.embeddings.create(model="encode", input=TEXTS, encoding_format="base64")
    for result in (floats, decoded):
        assert [d.index for d in result.data] == [0, 1, 2]
        got = np.array([d.embedding for d in result.data], dtype=np.float32)
        np.testing.assert_allclose(got, want.vectors, atol=TOL)
        assert result.model == "encode"
        assert result.usage.prompt_tokens == result.usage.total_tokens == want.usage.input_tokens
    from_base64 = np.array(
        [np.frombuffer(base64.b64decode(str(d.embedding)), dtype="<f4") for d in raw.data]
    )
    np.testing.assert_array_equal(from_base64, want.vectors.astype(np.float32))
    single = client.embeddings.create(model="encode", input=TEXTS[0])
    np.testing.assert_allclose(single.data[0].embedding, want.vectors[0], atol=TOL)
    short = client.embeddings.create(model="encode", input=TEXTS, dimensions=8)
    got_short = np.array([d.embedding for d in short.data])
    assert got_short.shape == (3, 8)
    np.testing.assert_allclose(got_short, want_short.vectors, atol=TOL)


def test_chunking_as_extra_body_fields_equals_grpc_encode(server: ServerThread) -> None:
    """chunk_mode, chunk_tokens, chunk_overlap and chunk_by ride in OpenAI's extra body; each
    datum then carries its chunks, as gRPC Encode's, with their offsets and tokens."""
    long = " ".join(TEXTS * 12)
    asked = {"chunk_mode": "late", "chunk_tokens": 12, "chunk_overlap": 2, "chunk_by": "tokens"}
    with Client(server.target) as grpc_client:
        (want,) = grpc_client.encode([long], **asked).embeddings  # type: ignore[arg-type]
    got = _openai(server).embeddings.create(
        model="encode", input=long, encoding_format="float", extra_body=asked
    )
    (datum,) = got.model_dump()["data"]
    np.testing.assert_allclose(datum["embedding"], want.vector, atol=TOL)
    assert len(datum["chunks"]) == len(want.chunks) > 3
    for mine, theirs in zip(datum["chunks"], want.chunks, strict=True):
        assert (mine["start"], mine["end"], mine["tokens"]) == (
            theirs.start,
            theirs.end,
            theirs.tokens,
        )
        np.testing.assert_allclose(mine["embedding"], theirs.vector, atol=TOL)
    status, body, _ = _http(
        _base(server) + "/v1/embeddings",
        {"model": "encode", "input": long, "chunk_mode": "late", "chunk_tokens": 999},
    )
    assert status == 400 and body["error"]["param"] == "chunk_tokens"
    status, body, _ = _http(
        _base(server) + "/v1/embeddings", {"model": "encode", "input": long, "chunk_mode": "lat"}
    )
    assert status == 400 and body["error"]["param"] == "chunk_mode"


def test_token_arrays_are_the_backbones_own_tokens(server: ServerThread, bert) -> None:  # type: ignore[no-untyped-def]
    tokenizer = AutoTokenizer.from_pretrained(str(bert.backbone))
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    client = _openai(server)
    by_text = client.embeddings.create(model="encode", input=TEXTS, encoding_format="float")
    by_ids = client.embeddings.create(model="encode", input=ids, encoding_format="float")
    one = client.embeddings.create(model="encode", input=ids[1], encoding_format="float")
    np.testing.assert_allclose(
        [d.embedding for d in by_ids.data], [d.embedding for d in by_text.data], atol=TOL
    )
    np.testing.assert_allclose(one.data[0].embedding, by_text.data[1].embedding, atol=TOL)


def test_rerank_in_the_cohere_shape_equals_grpc_rerank(server: ServerThread) -> None:
    query = "Where does Alice work?"
    with Client(server.target) as grpc_client:
        want = grpc_client.rerank(query, TEXTS, head="classify")
    status, body, headers = _http(
        _base(server) + "/v1/rerank",
        {
            "model": "classify",
            "query": query,
            "documents": [TEXTS[0], {"text": TEXTS[1]}, TEXTS[2]],  # Jina's objects too
            "top_n": 2,
            "return_documents": True,
        },
    )
    assert status == 200, body
    assert body["model"] == "classify"
    assert [r["index"] for r in body["results"]] == [d.index for d in want][:2]
    np.testing.assert_allclose(
        [r["relevance_score"] for r in body["results"]], [d.score for d in want][:2], atol=TOL
    )
    assert [r["document"]["text"] for r in body["results"]] == [
        TEXTS[r["index"]] for r in body["results"]
    ]
    assert body["usage"]["total_tokens"] == want.usage.input_tokens
    assert len(headers["x-request-id"]) == 32


def test_the_cohere_clients_rerank_against_it(server: ServerThread) -> None:
    query = "Where does Alice work?"
    with Client(server.target) as grpc_client:
        want = grpc_client.rerank(query, TEXTS, head="classify")
    v1 = cohere.Client(base_url=_base(server), api_key="unused", timeout=30)
    got = v1.rerank(model="classify", query=query, documents=TEXTS, top_n=2, return_documents=True)
    assert [(r.index, r.document.text if r.document else None) for r in got.results] == [
        (d.index, TEXTS[d.index]) for d in want
    ][:2]
    np.testing.assert_allclose(
        [r.relevance_score for r in got.results], [d.score for d in want][:2], atol=TOL
    )
    assert got.id is not None and len(got.id) == 32  # the request id
    v2 = cohere.ClientV2(base_url=_base(server), api_key="unused", timeout=30)
    got2 = v2.rerank(model="classify", query=query, documents=TEXTS)
    assert [r.index for r in got2.results] == [d.index for d in want]


def test_models_and_health(server: ServerThread) -> None:
    models = _openai(server).models.list()
    assert {m.id for m in models.data} == {"encode", "classify"}
    status, body, _ = _http(_base(server) + "/health")
    assert (status, body) == (200, {"status": "ok"})


def test_errors_are_openai_json_with_their_status(server: ServerThread) -> None:
    client = _openai(server)
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model="encode", input=["fine", ""])
    assert bad.value.status_code == 400 and bad.value.param == "input[1]"
    assert bad.value.code == "invalid_argument"
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model="encode", input=TEXTS, dimensions=10_000)
    assert bad.value.param == "dimensions"  # the body's own field
    with pytest.raises(openai.NotFoundError) as missing:
        client.embeddings.create(model="no-such-model", input=TEXTS)
    assert missing.value.code == "model_not_found" and missing.value.param == "model"
    url = _base(server) + "/v1/embeddings"
    for body, param in (
        ({"input": 5}, "input"),
        ({"input": []}, "input"),
        ({"input": [[1, -3]]}, "input[0][1]"),
        ({"input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"input": "x", "dimensions": "eight"}, "dimensions"),
    ):
        status, answer, _ = _http(url, body)
        assert status == 400 and answer["error"]["param"] == param, answer
        assert answer["error"]["type"] == "invalid_request_error" and answer["error"]["message"]
    status, answer, _ = _http(url, raw=b"{not json")
    assert (status, answer["error"]["param"]) == (400, "body")
    limits = RequestLimits()
    status, answer, _ = _http(url, {"input": ["x"] * (limits.max_request_items + 1)})
    assert (status, answer["error"]["param"]) == (413, "input")
    status, answer, _ = _http(url, {"input": ["x" * (limits.max_item_chars + 1)]})
    assert (status, answer["error"]["param"]) == (413, "input[0]")
    status, answer = _declaring(server, limits.max_message_bytes + 1)
    assert (status, answer["error"]["param"]) == (413, "body")  # refused before it is sent
    status, answer, _ = _http(_base(server) + "/v1/nothing")
    assert status == 404 and answer["error"]["code"] == "not_found"
    # the server is still serving
    assert len(client.embeddings.create(model="encode", input=TEXTS).data) == 3


def test_hostile_bodies_are_400_naming_the_field_and_a_caller_gone_mid_body_is_499(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    url = _base(server) + "/v1/embeddings"
    with caplog.at_level(logging.ERROR):
        deep = b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        status, answer, _ = _http(url, raw=deep)
        assert (status, answer["error"]["param"]) == (400, "body")
        assert "nested too deeply" in answer["error"]["message"]
        status, answer, _ = _http(url, raw=b'{"input": ["fine", "bad \\ud800 text"]}')
        assert (status, answer["error"]["param"]) == (400, "input[1]"), answer
        assert "lone surrogate (U+D800)" in answer["error"]["message"]
        rerank = {"query": "q", "documents": ["ok", "\ud800"]}
        status, answer, _ = _http(_base(server) + "/v1/rerank", raw=json.dumps(rerank).encode())
        assert status == 400 and "lone surrogate" in answer["error"]["message"], answer

        assert server.core is not None
        registry = server.core.scheduler.metrics.registry
        labels = {"route": "/v1/embeddings", "status": "499"}
        before = registry.get_sample_value("headserve_http_requests_total", labels) or 0
        assert server.server.http is not None
        with socket.create_connection(("127.0.0.1", server.server.http.port)) as sock:
            sock.sendall(
                b"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\ncontent-type: application/json"
                b"\r\ncontent-length: 1000\r\n\r\n" + b'{"input": "half'
            )
            time.sleep(0.2)
        deadline = time.monotonic() + 10
        while (registry.get_sample_value("headserve_http_requests_total", labels) or 0) == before:
            assert time.monotonic() < deadline, "the disconnect was never counted as 499"
            time.sleep(0.05)
        # a body a browser could post cross-site without asking (no preflight) is refused
        plain = urllib.request.Request(
            url, data=b'{"input": "x"}', headers={"content-type": "text/plain"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(plain, timeout=30)
        answer = json.loads(refused.value.read())
        assert refused.value.code == 400 and answer["error"]["param"] == "headers.content-type"
        # more token ids than one input may cost: refused before any id is looked at
        many = RequestLimits().max_item_tokens + 1
        status, answer, _ = _http(url, {"input": [[1] * many]})
        assert (status, answer["error"]["param"]) == (413, "input[0]"), answer
        assert "--max-item-tokens" in answer["error"]["message"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert len(_openai(server).embeddings.create(model="encode", input=TEXTS).data) == 3


def test_a_full_queue_is_429_and_http_rows_share_batches_with_grpc(bert) -> None:  # type: ignore[no-untyped-def]
    thread = ServerThread(_settings(bert, limits=Limits(workers=1, max_queue_items=4)))
    try:
        core = thread.core
        assert core is not None
        client = _openai(thread)
        with Client(thread.target) as grpc_client, held(core.runner) as gate:
            with ThreadPoolExecutor(3) as pool:
                blocker = pool.submit(grpc_client.encode, ["hold the model"])
                _until(lambda: core.scheduler.busy)
                before = core.runner.batches
                by_grpc = pool.submit(grpc_client.encode, TEXTS[:2])
                by_http = pool.submit(client.embeddings.create, model="encode", input=TEXTS[:2])
                _until(lambda: core.scheduler.queued >= 4)
                with pytest.raises(openai.RateLimitError) as full:
                    client.embeddings.create(model="encode", input=["one more"])
                assert full.value.status_code == 429
                assert full.value.response.headers["retry-after"] == "1"
                gate.set()
                blocker.result(timeout=60)
                grpc_vectors = by_grpc.result(timeout=60).vectors
                http_vectors = [d.embedding for d in by_http.result(timeout=60).data]
        assert core.runner.batches == before + 2  # the blocker's, then ONE for both calls
        np.testing.assert_allclose(http_vectors, grpc_vectors, atol=TOL)
        registry = core.scheduler.metrics.registry
        sample = registry.get_sample_value
        assert (
            sample("headserve_http_requests_total", {"route": "/v1/embeddings", "status": "429"})
            == 1
        )
        assert sample("headserve_calls_refused_total", {"priority": "interactive"}) == 1
    finally:
        thread.stop()


def test_loading_and_draining_are_503(bert) -> None:  # type: ignore[no-untyped-def]
    thread = ServerThread(_settings(bert), load=False)
    try:
        status, body, _ = _http(_base(thread) + "/health")
        assert (status, body) == (503, {"status": "loading"})
        with pytest.raises(openai.InternalServerError) as loading:
            _openai(thread).embeddings.create(model="encode", input=TEXTS)
        assert loading.value.status_code == 503
        assert loading.value.body["type"] == "service_unavailable"  # type: ignore[index]
    finally:
        thread.stop()


def test_bearer_tokens(bert) -> None:  # type: ignore[no-untyped-def]
    thread = ServerThread(_settings(bert, security=Security(tokens=(TOKEN,))))
    try:
        with pytest.raises(openai.AuthenticationError) as denied:
            _openai(thread, api_key="wrong-token-of-enough-length").embeddings.create(
                model="encode", input=TEXTS
            )
        assert denied.value.status_code == 401 and TOKEN not in str(denied.value)
        status, _, _ = _http(_base(thread) + "/v1/models")
        assert status == 401
        status, _, _ = _http(_base(thread) + "/health")
        assert status == 401  # as gRPC's health checks, unless --open-health
        result = _openai(thread, api_key=TOKEN).embeddings.create(model="encode", input=TEXTS)
        assert len(result.data) == 3
    finally:
        thread.stop()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def test_tls_and_mutual_tls(bert, certs: Certs) -> None:  # type: ignore[no-untyped-def]
    security = Security(
        tls_cert=certs.server.cert_path,
        tls_key=certs.server.key_path,
        tls_client_ca=certs.ca.cert_path,
    )
    thread = ServerThread(_settings(bert, security=security))
    try:
        url = _base(thread, "https") + "/v1/embeddings"
        trusting = ssl.create_default_context(cafile=str(certs.ca.cert_path))
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            _http(url, {"input": TEXTS}, context=trusting)  # no client certificate
        trusting.load_cert_chain(str(certs.client.cert_path), str(certs.client.key_path))
        status, body, _ = _http(url, {"input": TEXTS}, context=trusting)
        assert status == 200 and len(body["data"]) == 3
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            _http(_base(thread) + "/health")  # plaintext to a TLS port
    finally:
        thread.stop()


def test_a_request_is_a_server_span_continuing_the_callers_trace(bert) -> None:  # type: ignore[no-untyped-def]
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    thread = ServerThread(_settings(bert), tracing=Tracing(provider))
    try:
        trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
        request = urllib.request.Request(
            _base(thread) + "/v1/embeddings",
            data=json.dumps({"input": TEXTS}).encode(),
            headers={
                "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01",
                "content-type": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
            s.name == "POST /v1/embeddings" for s in exporter.get_finished_spans()
        ):
            time.sleep(0.05)
        spans = {s.name: s for s in exporter.get_finished_spans()}
        root = spans["POST /v1/embeddings"]
        assert format(root.context.trace_id, "032x") == trace_id
        assert root.attributes is not None and root.attributes["http.response.status_code"] == 200
        for child in ("prepare", "queue", "backbone"):
            assert spans[child].parent is not None
            assert spans[child].parent.span_id == root.context.span_id
    finally:
        thread.stop()
        provider.shutdown()


def test_stopping_answers_the_requests_in_flight(bert) -> None:  # type: ignore[no-untyped-def]
    thread = ServerThread(_settings(bert, limits=Limits(workers=1)))
    core = thread.core
    assert core is not None
    outcome: dict[str, Any] = {}
    with held(core.runner) as gate:

        def call() -> None:
            outcome["result"] = _http(_base(thread) + "/v1/embeddings", {"input": TEXTS})

        caller = threading.Thread(target=call)
        caller.start()
        _until(lambda: core.scheduler.busy)
        stopping = threading.Thread(target=lambda: thread.call(thread.server.stop(10)))
        stopping.start()
        _until(thread.server.state.draining.is_set)  # the drain has begun, the call is held
        assert caller.is_alive() and "result" not in outcome
        gate.set()
        caller.join(timeout=30)
        stopping.join(timeout=30)
    thread.loop.call_soon_threadsafe(thread.loop.stop)
    assert not stopping.is_alive(), "the drain did not finish"
    status, body, _ = outcome["result"]
    assert status == 200 and len(body["data"]) == 3


def test_a_caller_that_disconnects_takes_its_rows_off_the_queue(bert) -> None:  # type: ignore[no-untyped-def]
    thread = ServerThread(_settings(bert, limits=Limits(workers=1)))
    try:
        core = thread.core
        assert core is not None and thread.server.http is not None
        scheduler, registry = core.scheduler, core.scheduler.metrics.registry
        body = json.dumps({"input": TEXTS}).encode()
        head = (
            "POST /v1/embeddings HTTP/1.1\r\nHost: headserve\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        with Client(thread.target) as grpc_client, held(core.runner) as gate:
            with ThreadPoolExecutor(1) as pool:
                blocker = pool.submit(grpc_client.encode, ["hold the model"])
                _until(lambda: scheduler.busy)
                with socket.create_connection(("127.0.0.1", thread.server.http.port)) as sock:
                    sock.sendall(head.encode() + body)
                    _until(lambda: scheduler.queued == len(TEXTS))
                _until(lambda: scheduler.queued == 0)  # gone before the model reached them
                gate.set()
                blocker.result(timeout=60)
        dropped = registry.get_sample_value("headserve_rows_dropped_total", {"reason": "cancelled"})
        assert dropped == len(TEXTS)
        _until(
            lambda: (
                registry.get_sample_value(
                    "headserve_http_requests_total", {"route": "/v1/embeddings", "status": "499"}
                )
                == 1
            )
        )
    finally:
        thread.stop()


def test_the_sdks_read_timeout_is_the_requests_deadline(bert) -> None:  # type: ignore[no-untyped-def]
    thread = ServerThread(_settings(bert, limits=Limits(workers=1)))
    try:
        core = thread.core
        assert core is not None
        registry = core.scheduler.metrics.registry
        url = _base(thread) + "/v1/embeddings"
        with Client(thread.target) as grpc_client, held(core.runner) as gate:
            with ThreadPoolExecutor(1) as pool:
                blocker = pool.submit(grpc_client.encode, ["hold the model"])
                _until(lambda: core.scheduler.busy)
                request = urllib.request.Request(
                    url,
                    data=json.dumps({"input": TEXTS}).encode(),
                    headers={  # as openai's clients send it
                        "x-stainless-read-timeout": "0.3",
                        "content-type": "application/json",
                    },
                )
                with pytest.raises(urllib.error.HTTPError) as late:
                    urllib.request.urlopen(request, timeout=30)
                gate.set()
                blocker.result(timeout=60)
        assert late.value.code == 504
        assert json.loads(late.value.read())["error"]["type"] == "timeout"
        dropped = registry.get_sample_value("headserve_rows_dropped_total", {"reason": "deadline"})
        assert dropped == len(TEXTS)  # they never reached the model
        bad = urllib.request.Request(
            url,
            data=b'{"input": "x"}',
            headers={"x-stainless-read-timeout": "soon", "content-type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(bad, timeout=30)
        assert refused.value.code == 400
        assert json.loads(refused.value.read())["error"]["param"] == (
            "headers.x-stainless-read-timeout"
        )
    finally:
        thread.stop()


def _until(condition: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)
