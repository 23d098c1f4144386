"""The OpenAI-style HTTP endpoint under hostile JSON: every answer is 200 with the documented
shape, or an OpenAI error object with a documented status (never 500), and the server goes
on serving."""

from __future__ import annotations

import json
import math
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
