"""Classify's long_text (mean, max, first) and return_chunks, against transformers'
AutoModelForSequenceClassification run on each chunk as a text of its own: a tiny BERT
classifier (a window of 64 tokens) on torch and on ONNX Runtime, texts of one to five
windows, token and sentence boundaries."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from checkpoints import CORPUS
from serving import ServerThread
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from headserve.client import Client, InvalidArgumentError
from headserve.plugins.contract import HeadSpec
from headserve.server.loading import Settings

TEXTS = [" ".join(CORPUS[: n * 2]) for n in (1, 4, 9, 14)]  # about 1 to 5 windows of 64


@pytest.fixture(scope="module", params=["torch", "onnx"])
def served(request, bert, tmp_path_factory) -> Iterator[tuple[Client, float]]:  # type: ignore[no-untyped-def]
    settings = Settings(
        model_dir=bert.backbone,
        heads=(HeadSpec("classify", "classify", bert.classify),),
        device="cpu",
        runtime=request.param,
    )
    with pytest.MonkeyPatch.context() as patch:  # the ONNX export goes to a fresh cache
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        server = ServerThread(settings)
    try:
        with Client(server.target, max_retries=0) as client:
            yield client, 1e-5 if request.param == "torch" else 1e-4
    finally:
        server.stop()


@pytest.fixture(scope="module")
def reference(bert):  # type: ignore[no-untyped-def]
    tokenizer = AutoTokenizer.from_pretrained(bert.backbone)
    model = AutoModelForSequenceClassification.from_pretrained(bert.classify).eval()

    def chunk_logits(text: str, size: int, overlap: int) -> tuple[np.ndarray, list]:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
        logits, spans, first = [], [], 0
        while True:
            end = min(first + size, len(ids))
            row = [tokenizer.cls_token_id, *ids[first:end], tokenizer.sep_token_id]
            with torch.inference_mode():
                out = model(
                    input_ids=torch.tensor([row]),
                    token_type_ids=torch.zeros(1, len(row), dtype=torch.long),
                )
            logits.append(out.logits[0].numpy())
            spans.append((offsets[first][0], offsets[end - 1][1], end - first))
            if end == len(ids):
                return np.stack(logits), spans
            first += size - overlap

    return chunk_logits


@pytest.mark.parametrize(("size", "overlap"), [(0, 0), (20, 5)])
def test_aggregated_logits_equal_transformers_on_each_chunk(
    served, reference, size, overlap
) -> None:  # type: ignore[no-untyped-def]
    client, tolerance = served
    for how, combine in (
        ("mean", lambda x: x.mean(0)),
        ("max", lambda x: x.max(0)),
        ("first", lambda x: x[0]),
    ):
        result = client.classify(
            TEXTS,
            long_text=how,
            chunk_tokens=size or None,
            chunk_overlap=overlap,
            return_chunks=True,
        )
        for text, got in zip(TEXTS, result, strict=True):
            logits, spans = reference(text, size or 62, overlap)
            (head,) = got.heads
            mine = {s.label: s.logit for s in head.labels}
            want = combine(logits)
            for index, label in enumerate(("negative", "neutral", "positive")):
                assert mine[label] == pytest.approx(float(want[index]), abs=tolerance), how
            kept = spans[:1] if how == "first" else spans
            assert [(c.start, c.end, c.tokens) for c in head.chunks] == kept
            for chunk, chunk_logits in zip(head.chunks, logits, strict=False):
                theirs = dict(zip(("negative", "neutral", "positive"), chunk_logits, strict=True))
                for s in chunk.labels:
                    assert s.logit == pytest.approx(float(theirs[s.label]), abs=tolerance)
        assert len(result[3].heads[0].chunks) >= (1 if how == "first" else 4)


def test_sentences_and_top_k_and_bad_options(served) -> None:  # type: ignore[no-untyped-def]
    client, _ = served
    result = client.classify(
        [TEXTS[2]],
        long_text="mean",
        chunk_by="sentences",
        chunk_tokens=30,
        top_k=1,
        return_chunks=True,
    )
    chunks = result[0].heads[0].chunks
    assert len(chunks) > 3 and all(len(c.labels) == 1 for c in chunks)
    assert all(TEXTS[2][c.start : c.end].rstrip().endswith((".", "?")) for c in chunks[:-1])
    for options, field in [
        ({"long_text": "mean", "chunk_tokens": 63}, "options.chunk_tokens"),
        ({"return_chunks": True}, "options.return_chunks"),
        ({"long_text": "mean", "chunk_tokens": 10, "chunk_overlap": 10}, "options.chunk_overlap"),
    ]:
        with pytest.raises(InvalidArgumentError) as caught:
            client.classify([TEXTS[1]], **options)
        assert caught.value.field == field
    with pytest.raises(InvalidArgumentError) as caught:
        client.classify([("a", "pair")], long_text="max")
    assert caught.value.field == "items[0].text_pair"
    with pytest.raises(InvalidArgumentError) as caught:
        client.classify([TEXTS[3]])  # without long_text: one row, longer than the window
    assert caught.value.field == "items[0].text"
