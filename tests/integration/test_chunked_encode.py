"""Encode's chunk_mode (independent chunks and late chunking), against the same computation done
here with transformers' own model, row by row: the packaged all-MiniLM-L6-v2 on torch (1e-5),
a tiny BERT on ONNX Runtime (1e-4); texts of one to five windows of real English (CPython's
reference pages) with CJK and emoji in them, token and sentence boundaries, prompts. Chunk
offsets are checked against the text they cut; the limits and bad options by what they name."""

from __future__ import annotations

import functools
import pydoc_data.topics
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoints import minilm_dir
from semantic_text_splitter import TextSplitter
from serving import ServerThread
from tokenizers import Tokenizer
from transformers import AutoModel, AutoTokenizer

from headserve.client import Client, InvalidArgumentError
from headserve.plugins.contract import HeadSpec
from headserve.server.core.limits import RequestLimits
from headserve.server.loading import Settings

WORDS = pydoc_data.topics.topics["specialnames"].split()


def _text(words: int, start: int = 0) -> str:
    """`words` words of a real reference page, with CJK and emoji sentences among them."""
    picked = WORDS[start : start + words]
    for at in range(40, len(picked), 97):
        picked[at] = "这是一个测试。🌍 Ünïcode 🙂 текст."
    return " ".join(picked)


@dataclass(eq=False)
class Reference:
    """The model and tokenizer of a folder, run the plain transformers way, one row a pass."""

    folder: Path
    window: int  # the model's window, in tokens
    cut_at: int  # a chunk row's window (the checkpoint's max_seq_length)
    pooling: str  # what a chunk row is pooled by (late chunks: always the mean)
    normalize: bool

    def __post_init__(self) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        self.model = AutoModel.from_pretrained(self.folder).eval()

    @functools.lru_cache(maxsize=64)  # noqa: B019 - a window serves many chunks
    def states(self, ids: tuple[int, ...]) -> torch.Tensor:
        row = [self.tokenizer.cls_token_id, *ids, self.tokenizer.sep_token_id]
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([row]), attention_mask=torch.ones(1, len(row)))
        return out.last_hidden_state[0]

    def spans(self, text: str, size: int, overlap: int, by: str) -> list[tuple[int, int]]:
        starts = [
            a
            for a, _ in self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)[
                "offset_mapping"
            ]
        ]
        n = len(starts)
        if by == "tokens":
            spans, first = [], 0
            while True:
                spans.append((first, min(first + size, n)))
                if first + size >= n:
                    return spans
                first += size - overlap
        counting = Tokenizer.from_str(self.tokenizer.backend_tokenizer.to_str())
        counting.no_truncation()
        splitter = TextSplitter.from_huggingface_tokenizer(counting, size, overlap=overlap)
        spans = []
        for offset, piece in splitter.chunk_indices(text):
            inside = [i for i, a in enumerate(starts) if offset <= a < offset + len(piece)]
            if inside and (not spans or spans[-1] != (inside[0], inside[-1] + 1)):
                spans.append((inside[0], min(inside[-1] + 1, inside[0] + size)))
        return spans

    def encode(
        self, text: str, mode: str, size: int, overlap: int, by: str, prompt: str
    ) -> tuple[np.ndarray, list[tuple[np.ndarray, int, int, int]]]:
        """The text's vector and its chunks' (vector, start, end, tokens)."""
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
        asked = self.tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        room = self.window - 2 - len(asked)
        if len(ids) <= room:
            starts = [0]
        else:
            starts = [*range(0, len(ids) - room, room // 2), len(ids) - room]
        chunks = []
        for first, end in self.spans(text, size, overlap, by):
            if mode == "independent":
                hidden = self.states((*asked, *ids[first:end]))
                vector = hidden[0] if self.pooling == "cls" else hidden.mean(0)
            else:
                start = max(
                    (s for s in starts if s <= first and end <= s + room),
                    key=lambda s, a=first, b=end: (
                        min(
                            a - s if s > 0 else room, s + room - b if s + room < len(ids) else room
                        ),
                        -s,
                    ),
                )
                hidden = self.states((*asked, *ids[start : start + room]))
                lead = 1 + len(asked) - start
                vector = hidden[lead + first : lead + end].mean(0)
            if self.normalize:
                vector = torch.nn.functional.normalize(vector, dim=-1)
            chunks.append((vector.numpy(), offsets[first][0], offsets[end - 1][1], end - first))
        weights = np.array([c[3] for c in chunks], dtype=np.float32)
        whole = (np.stack([c[0] for c in chunks]) * weights[:, None]).sum(0) / weights.sum()
        if self.normalize:
            whole = whole / np.linalg.norm(whole)
        return whole, chunks


@dataclass
class Served:
    client: Client
    reference: Reference
    tolerance: float
    texts: list[str]  # one to five windows long


@pytest.fixture(scope="module", params=["minilm-torch", "tiny-bert-onnx"])
def served(request, bert, tmp_path_factory) -> Iterator[Served]:  # type: ignore[no-untyped-def]
    if request.param == "minilm-torch":
        folder, runtime = minilm_dir(), "torch"
        reference = Reference(folder, 512, 256, "mean", True)
        texts = [_text(n, at) for n, at in ((150, 0), (700, 900), (1300, 2500), (2100, 6000))]
        # one to five windows of 512
        tolerance = 1e-5
    else:
        folder, runtime = bert.backbone, "onnx"
        reference = Reference(folder, 64, 64, "cls", False)
        texts = [_text(n, at) for n, at in ((20, 0), (90, 300), (160, 700), (260, 1200))]
        tolerance = 1e-4
    settings = Settings(
        model_dir=folder, heads=(HeadSpec("encode", "encode"),), device="cpu", runtime=runtime
    )
    with pytest.MonkeyPatch.context() as patch:  # the ONNX export goes to a fresh cache
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        server = ServerThread(settings)
    assert server.core is not None
    assert server.core.backbone.runtime.startswith("torch" if runtime == "torch" else "onnx")
    try:
        with Client(server.target, max_retries=0) as client:
            yield Served(client, reference, tolerance, texts)
    finally:
        server.stop()


CASES = [
    ("independent", 0, 0, "tokens", ""),
    ("independent", 40, 8, "sentences", "query: "),
    ("late", 0, 0, "tokens", ""),
    ("late", 24, 6, "tokens", "query: "),
    ("late", 30, 0, "sentences", ""),
]


@pytest.mark.parametrize(("mode", "size", "overlap", "by", "prompt"), CASES)
def test_chunk_vectors_equal_transformers(served: Served, mode, size, overlap, by, prompt) -> None:  # type: ignore[no-untyped-def]
    result = served.client.encode(
        served.texts,
        chunk_mode=mode,
        chunk_tokens=size or None,
        chunk_overlap=overlap,
        chunk_by=by,
        prompt=prompt,
    )
    reference = served.reference
    room = (reference.window if mode == "late" else reference.cut_at) - 2
    if prompt:
        room -= len(reference.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    default = min(256, room // 4 if mode == "late" else room)
    for text, got in zip(served.texts, result.embeddings, strict=True):
        whole, chunks = reference.encode(text, mode, size or default, overlap, by, prompt)
        assert [(c.start, c.end, c.tokens) for c in got.chunks] == [c[1:] for c in chunks]
        assert max(c.tokens for c in got.chunks) <= (size or default)
        for mine, theirs in zip(got.chunks, chunks, strict=True):
            np.testing.assert_allclose(mine.vector, theirs[0], atol=served.tolerance, rtol=0)
        np.testing.assert_allclose(got.vector, whole, atol=served.tolerance, rtol=0)


def test_late_chunks_see_their_neighbours_and_independent_ones_do_not(served: Served) -> None:
    text = served.texts[1]
    late, independent = (
        served.client.encode([text], chunk_mode=mode, chunk_tokens=16).embeddings[0]
        for mode in ("late", "independent")
    )
    assert [(c.start, c.end) for c in late.chunks] == [(c.start, c.end) for c in independent.chunks]
    differ = [
        float(np.abs(a.vector - b.vector).max())
        for a, b in zip(late.chunks, independent.chunks, strict=True)
    ]
    assert min(differ) > 1e-3  # every chunk's vector changed with its context


def test_offsets_cut_the_text_sent_at_code_points(packaged: Client) -> None:
    """Words of one token each (CJK characters, emoji, accented and plain words): every
    chunk of N tokens, cut at token boundaries, is exactly N of the words."""
    words = ["猫", "🌍", "the", "犬", "é", "🙂", "cat", "水", "and"] * 40
    text = " ".join(words)
    for mode in ("independent", "late"):
        (got,) = packaged.encode(
            [text], chunk_mode=mode, chunk_tokens=25, chunk_overlap=5
        ).embeddings
        for index, c in enumerate(got.chunks):
            first = index * 20
            assert text[c.start : c.end] == " ".join(words[first : first + 25]), (mode, index)
        assert got.chunks[-1].end == len(text)


@pytest.fixture(scope="module")
def packaged() -> Iterator[Client]:
    settings = Settings(
        model_dir=minilm_dir(),
        heads=(HeadSpec("encode", "encode"), HeadSpec("sparse", "sparse")),
        device="cpu",
        request_limits=RequestLimits(max_document_tokens=1000),
        allow_untrained=True,  # the sparse head: only its refusal is asked of it
    )
    server = ServerThread(settings)
    try:
        with Client(server.target, max_retries=0) as client:
            yield client
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("items", "options", "field", "says"),
    [
        ([_text(900)], {"chunk_mode": "late"}, "items[0].text", "--max-document-tokens"),
        (["short", _text(900)], {"chunk_mode": "independent"}, "items[1].text", "1,000"),
        ([("a", "b")], {"chunk_mode": "late"}, "items[0].text_pair", "one text"),
        (
            ["a text"],
            {"chunk_mode": "independent", "chunk_tokens": 300},
            "options.chunk_tokens",
            "254",
        ),
        (["a text"], {"chunk_mode": "late", "chunk_tokens": 300}, "options.chunk_tokens", "255"),
        (
            ["a text"],
            {"chunk_mode": "late", "chunk_tokens": 8, "chunk_overlap": 8},
            "options.chunk_overlap",
            "less than",
        ),
        (["a text"], {"chunk_mode": "late", "pooling": "cls"}, "options.pooling", "mean"),
        (
            ["a text"],
            {"chunk_mode": "late", "pooling": "none"},
            "options.chunk_mode",
            "POOLING_NONE",
        ),
        (["a text"], {"chunk_tokens": 8}, "options.chunk_tokens", "chunk_mode"),
        (["a text"], {"chunk_mode": "late", "head": "sparse"}, "options.chunk_mode", "sparse"),
        ([_text(600)], {}, "items[0].text", "longer than the model's 512"),
    ],
)
def test_bad_chunking_is_refused_naming_the_field(
    packaged: Client, items, options, field, says
) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgumentError) as caught:
        packaged.encode(items, **options)
    assert caught.value.field == field and says in str(caught.value)


def test_a_stream_chunks_every_batch_and_a_bad_one_fails_alone(packaged: Client) -> None:
    from headserve.client import Batch

    batches = [
        Batch([_text(300)], id="long"),
        Batch([_text(900)], id="too long"),
        Batch(["one sentence."], id="short"),
    ]
    results = {r.id: r for r in packaged.encode_stream(batches, chunk_mode="late")}
    assert len(results["long"].result.embeddings[0].chunks) > 1
    assert results["too long"].error is not None
    assert len(results["short"].result.embeddings[0].chunks) == 1
