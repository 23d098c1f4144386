"""The colbert head against PyLate itself: PyLate (in its own venv, made by `make install`:
tools/pylate-venv.sh) builds a ColBERT checkpoint from the packaged MiniLM, encodes queries
and documents, and reranks the documents; headserve serves that folder as its backbone with
`--head colbert=colbert` and must give the same token vectors and the same MaxSim scores, on
torch and on ONNX Runtime, through gRPC Encode and Rerank, /v1/rerank and the client."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from checkpoints import minilm_dir
from serving import ServerThread

from headserve.client import Client, InvalidArgumentError
from headserve.plugins.contract import HeadSpec
from headserve.server.core.limits import RequestLimits
from headserve.server.loading import Settings

PYLATE = Path(sys.prefix + "-pylate") / "bin" / "python"
TOLERANCE = 1e-4
QUERIES = ["Who works in Paris?", "What does the fox do?", "films with a wonderful cast!"]
DOCUMENTS = [
    "Alice works in Paris at the bank; Bob works in Berlin, at the zoo.",
    "The quick brown fox jumps over the lazy dog.",
    "A great movie (with a wonderful cast), but the ending was terrible...",
    "I loved this film. I hated that film. It was fine, nothing special.",
]

REFERENCE = """
import json, sys
import numpy as np, torch
from pylate import models, rank

source, folder, out = sys.argv[1:4]
queries, documents = json.loads(sys.argv[4]), json.loads(sys.argv[5])
torch.manual_seed(0)
models.ColBERT(model_name_or_path=source, device="cpu").save(folder)
model = models.ColBERT(model_name_or_path=folder, device="cpu")  # as it was saved
q = model.encode(queries, is_query=True, batch_size=2)
d = model.encode(documents, is_query=False, batch_size=2)
ranked = rank.rerank(
    documents_ids=[list(range(len(documents)))] * len(queries),
    queries_embeddings=q,
    documents_embeddings=[d] * len(queries),
)
arrays = {f"q{i}": np.asarray(v) for i, v in enumerate(q)}
arrays |= {f"d{i}": np.asarray(v) for i, v in enumerate(d)}
arrays["scores"] = np.array(
    [[next(r["score"] for r in per if r["id"] == j) for j in range(len(documents))] for per in ranked]
)
np.savez(out, **arrays)
"""


@pytest.fixture(scope="module")
def pylate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """The ColBERT folder PyLate built, and its own vectors and scores."""
    assert PYLATE.exists(), f"{PYLATE} is missing: `make install` makes it"
    work = tmp_path_factory.mktemp("colbert")
    folder, out, script = work / "model", work / "reference.npz", work / "reference.py"
    script.write_text(REFERENCE)
    subprocess.run(
        [PYLATE, script, minilm_dir(), folder, out, json.dumps(QUERIES), json.dumps(DOCUMENTS)],
        check=True,
        capture_output=True,
        timeout=600,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    return folder, dict(np.load(out))


@pytest.fixture(scope="module", params=["torch", "onnx"])
def served(request, pylate, tmp_path_factory) -> Iterator[tuple[ServerThread, Client]]:  # type: ignore[no-untyped-def]
    folder, _ = pylate
    settings = Settings(
        model_dir=folder,
        heads=(HeadSpec("colbert", "colbert"),),
        device="cpu",
        runtime=request.param,
        http_port=0,
    )
    with pytest.MonkeyPatch.context() as patch:  # the ONNX export goes to a fresh cache
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        server = ServerThread(settings)
    try:
        with Client(server.target, max_retries=0) as client:
            yield server, client
    finally:
        server.stop()


def test_token_vectors_equal_pylates(pylate, served) -> None:  # type: ignore[no-untyped-def]
    _, reference = pylate
    _, client = served
    queries = client.encode(QUERIES, head="colbert", prompt_name="query").embeddings
    documents = client.encode(DOCUMENTS, head="colbert").embeddings
    for kind, got in (("q", queries), ("d", documents)):
        for i, embedding in enumerate(got):
            want = reference[f"{kind}{i}"]
            assert embedding.vector is None and embedding.token_states.shape == want.shape
            np.testing.assert_allclose(embedding.token_states, want, atol=TOLERANCE, rtol=0)
            assert len(embedding.tokens) == len(want)
    assert all(e.token_states.shape == (32, 128) for e in queries)  # padded with [MASK]
    assert queries[0].tokens[0] == "[CLS]" and queries[0].tokens[1].strip().lower() == "[q]"
    assert queries[0].tokens[-1] == "[MASK]"
    assert all("," not in e.tokens and "." not in e.tokens for e in documents)  # skiplist


def test_rerank_scores_by_maxsim_as_pylate_does(pylate, served) -> None:  # type: ignore[no-untyped-def]
    _, reference = pylate
    server, client = served
    for q, query in enumerate(QUERIES):
        ranked = client.rerank(query, DOCUMENTS, head="colbert")
        want = reference["scores"][q]
        assert [r.index for r in ranked] == list(np.argsort(-want, kind="stable"))
        for r in ranked:
            assert r.score == pytest.approx(float(want[r.index]), abs=TOLERANCE)
    status, body = _post(
        server, "/v1/rerank", {"model": "colbert", "query": QUERIES[0], "documents": DOCUMENTS}
    )
    assert status == 200
    by_index = {r["index"]: r["relevance_score"] for r in body["results"]}
    for index, score in by_index.items():
        assert score == pytest.approx(float(reference["scores"][0][index]), abs=TOLERANCE)


def test_bad_options_are_refused_naming_the_field(served) -> None:  # type: ignore[no-untyped-def]
    _, client = served
    for options, field in [
        ({"prompt_name": "question"}, "options.prompt_name"),
        ({"dimensions": 64}, "options.dimensions"),
        ({"chunk_mode": "late"}, "options.chunk_mode"),
    ]:
        with pytest.raises(InvalidArgumentError) as caught:
            client.encode(DOCUMENTS, head="colbert", **options)  # type: ignore[arg-type]
        assert caught.value.field == field
    with pytest.raises(InvalidArgumentError) as caught:
        client.encode(["word " * 300], head="colbert")
    assert caught.value.field == "items[0].text" and "truncate" in str(caught.value)
    (cut,) = client.encode(["word " * 300], head="colbert", truncate=True).embeddings
    assert cut.token_states.shape[0] <= 180


def test_a_response_too_large_is_refused_before_anything_is_computed(pylate) -> None:  # type: ignore[no-untyped-def]
    folder, _ = pylate
    limits = RequestLimits(max_message_bytes=64 * 1024)
    settings = Settings(
        model_dir=folder,
        heads=(HeadSpec("colbert", "colbert"),),
        device="cpu",
        runtime="torch",
        request_limits=limits,
    )
    server = ServerThread(settings)
    try:
        assert server.core is not None
        runner = server.core.scheduler.runner
        before = runner.rows_computed
        with Client(server.target, max_retries=0) as client:
            with pytest.raises(InvalidArgumentError) as caught:
                client.encode(["a long document " * 40] * 30, head="colbert", truncate=True)
            assert caught.value.field == "items" and "--max-message-bytes" in str(caught.value)
            assert runner.rows_computed == before  # refused before the backbone ran
            assert len(client.encode(DOCUMENTS[:1], head="colbert").embeddings) == 1
    finally:
        server.stop()


def _post(server: ServerThread, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    import urllib.request

    assert server.server.http is not None
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.server.http.port}{path}",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, json.loads(response.read())
