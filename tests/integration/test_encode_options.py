"""Encode's `dimensions`, prompts and `truncation_side`, against sentence-transformers itself
(`SentenceTransformer(folder).encode`) on the packaged all-MiniLM-L6-v2, and on a copy of it
that names prompts and leaves them out of its pooling (include_prompt false)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from checkpoints import minilm_dir
from sentence_transformers import SentenceTransformer
from serving import ServerThread

from headserve.client import Client, InvalidArgumentError
from headserve.plugins.contract import HeadSpec
from headserve.server.loading import Settings

TEXTS = [
    "The movie was great!",
    "A dull, tedious film with no redeeming qualities at all.",
    "It's not the best, but the cast makes it worth watching.",
    "Visually stunning; the story, though, goes nowhere.",
]
PROMPTS = {"query": "query: ", "passage": "passage: "}
TOLERANCE = 1e-5


def _server(folder: Path, **settings) -> ServerThread:  # type: ignore[no-untyped-def]
    return ServerThread(
        Settings(model_dir=folder, heads=(HeadSpec("encode", "encode"),), device="cpu", **settings)
    )


@pytest.fixture(scope="module")
def prompted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged model, naming two prompts (query the default) and pooling without them."""
    folder = tmp_path_factory.mktemp("prompted") / "model"
    shutil.copytree(minilm_dir(), folder)
    settings = json.loads((folder / "config_sentence_transformers.json").read_text())
    settings.update(prompts=PROMPTS, default_prompt_name="query")
    (folder / "config_sentence_transformers.json").write_text(json.dumps(settings))
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    pooling["include_prompt"] = False
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return folder


@pytest.fixture(scope="module")
def packaged() -> Iterator[tuple[Client, SentenceTransformer]]:
    server = _server(minilm_dir())
    try:
        with Client(server.target, max_retries=0) as client:
            yield client, SentenceTransformer(str(minilm_dir()), device="cpu")
    finally:
        server.stop()


def _vectors(client: Client, texts: list[str], **options) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.stack([e.vector for e in client.encode(texts, **options).embeddings])


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ({}, {}),
        ({"prompt": "query: "}, {"prompt": "query: "}),
        ({"dimensions": 128}, {"truncate_dim": 128}),
        ({"dimensions": 64, "normalize": True}, {"truncate_dim": 64, "normalize_embeddings": True}),
        ({"normalize": True}, {"normalize_embeddings": True}),
    ],
)
def test_vectors_equal_sentence_transformers(packaged, ours, theirs) -> None:  # type: ignore[no-untyped-def]
    client, reference = packaged
    got, want = _vectors(client, TEXTS, **ours), reference.encode(TEXTS, **theirs)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0)


def test_dimensions_then_normalize_gives_unit_vectors(packaged) -> None:  # type: ignore[no-untyped-def]
    client, _ = packaged
    full = _vectors(client, TEXTS)
    cut = _vectors(client, TEXTS, dimensions=32)
    np.testing.assert_allclose(cut, full[:, :32], atol=1e-6)  # the model's normalised, cut
    unit = _vectors(client, TEXTS, dimensions=32, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)


def test_named_prompts_and_the_default_one_leave_the_prompt_out_of_pooling(prompted) -> None:  # type: ignore[no-untyped-def]
    reference = SentenceTransformer(str(prompted), device="cpu")
    assert reference.default_prompt_name == "query"
    server = _server(prompted)
    try:
        with Client(server.target, max_retries=0) as client:
            cases = [
                ({}, {}),  # the checkpoint's default prompt, query
                ({"prompt_name": "passage"}, {"prompt_name": "passage"}),
                ({"prompt": "represent this: "}, {"prompt": "represent this: "}),
                ({"prompt": ""}, {"prompt": ""}),  # none at all
            ]
            for ours, theirs in cases:
                got, want = _vectors(client, TEXTS, **ours), reference.encode(TEXTS, **theirs)
                np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0, err_msg=str(ours))
            # the prompt changes the vectors (it is there), and is left out of their mean
            assert not np.allclose(_vectors(client, TEXTS), _vectors(client, TEXTS, prompt=""))
            with pytest.raises(InvalidArgumentError) as unknown:
                client.encode(TEXTS, prompt_name="document")
            assert unknown.value.field == "options.prompt_name"
            assert "passage, query" in str(unknown.value)
    finally:
        server.stop()


def test_the_servers_default_prompt_name(prompted) -> None:  # type: ignore[no-untyped-def]
    reference = SentenceTransformer(str(prompted), device="cpu")
    server = _server(prompted, default_prompt_name="passage")
    try:
        with Client(server.target, max_retries=0) as client:
            got = _vectors(client, TEXTS)
            assert client.model_info().heads[0].detail.endswith("(default passage)")
    finally:
        server.stop()
    np.testing.assert_allclose(got, reference.encode(TEXTS, prompt_name="passage"), atol=TOLERANCE)


def test_a_default_prompt_the_checkpoint_does_not_name_fails_the_head(prompted) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Exception, match="default prompt 'nope' is not one of"):
        _server(prompted, default_prompt_name="nope", require_heads=("encode",))


def test_truncation_side_keeps_the_start_or_the_end(packaged) -> None:  # type: ignore[no-untyped-def]
    client, reference = packaged
    words = [f"word{n}" for n in range(400)]
    text = " ".join(words)
    right = client.encode([text], truncate=True, pooling="none").embeddings[0].tokens
    left = client.encode([text], truncate=True, truncation_side="left", pooling="none")
    tokens = left.embeddings[0].tokens
    window = reference.max_seq_length  # 256: where sentence-transformers cuts
    assert len(right) == len(tokens) == window
    assert right[:3] == ("[CLS]", "word", "##0") and tokens[0] == "[CLS]"
    assert "".join(tokens[-4:-1]).replace("##", "") == "word399"  # the end is kept
    np.testing.assert_allclose(
        _vectors(client, [text], truncate=True), reference.encode([text]), atol=TOLERANCE
    )
    reference.tokenizer.truncation_side = "left"
    try:
        want = reference.encode([text])
    finally:
        reference.tokenizer.truncation_side = "right"
    got = _vectors(client, [text], truncate=True, truncation_side="left")
    np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize(
    ("options", "field", "says"),
    [
        ({"dimensions": 385}, "options.dimensions", "more than the model's 384"),
        ({"dimensions": 8, "pooling": "none"}, "options.dimensions", "POOLING_NONE"),
        ({"prompt": "q: ", "prompt_name": "query"}, "options.prompt", "not both"),
        ({"prompt_name": "query"}, "options.prompt_name", "unknown prompt 'query'"),
    ],
)
def test_bad_options_are_refused_naming_the_field(packaged, options, field, says) -> None:  # type: ignore[no-untyped-def]
    client, _ = packaged
    with pytest.raises(InvalidArgumentError) as refused:
        client.encode(TEXTS, **options)
    assert refused.value.field == field and says in str(refused.value)
    assert client.encode(TEXTS[:1]).embeddings  # and the server goes on


def test_options_apply_to_every_batch_of_a_stream(packaged) -> None:  # type: ignore[no-untyped-def]
    from headserve.client import Batch

    client, reference = packaged
    batches = [Batch(TEXTS[:2], id="a"), Batch(TEXTS[2:], id="b")]
    results = list(client.encode_stream(batches, dimensions=48, normalize=True))
    got = np.stack([e.vector for r in results for e in r.unwrap().embeddings])
    want = reference.encode(TEXTS, truncate_dim=48, normalize_embeddings=True)
    np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0)
