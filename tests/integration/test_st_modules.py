"""A sentence-transformers folder's modules, run as sentence-transformers runs them: last-token
pooling, Dense layers and Normalize, on an encoder (the packaged MiniLM's weights) and on a
decoder embedder built like Qwen3-Embedding (last token, Normalize, instruction prompts),
each equal to `SentenceTransformer(folder).encode`; a module, pooling or activation the
encode head cannot run refuses the start, naming it."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoints import make_decoder, minilm_dir
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import (
    Dense,
    Normalize,
    Pooling,
    Transformer,
)
from serving import ServerThread

from headserve.client import Client
from headserve.plugins.contract import HeadSpec
from headserve.server.core.heads import HeadsFailed
from headserve.server.loading import Settings, build_core

TEXTS = [
    "The movie was great!",
    "A dull, tedious film with no redeeming qualities at all.",
    "It's not the best, but the cast makes it worth watching.",
    "Visually stunning; the story, though, goes nowhere.",
]
TOLERANCE = 1e-5
INSTRUCT = "Instruct: find the review\nQuery: "


def _save(modules: list[torch.nn.Module], folder: Path, **settings: object) -> Path:
    torch.manual_seed(0)
    SentenceTransformer(modules=modules, device="cpu", **settings).save(str(folder))  # type: ignore[arg-type]
    return folder


@pytest.fixture(scope="module")
def dense_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MiniLM's weights, last-token pooling, a Dense layer to 32 (tanh) and Normalize."""
    transformer = Transformer(str(minilm_dir()))
    modules = [transformer, Pooling(384, pooling_mode="lasttoken"), Dense(384, 32), Normalize()]
    return _save(modules, tmp_path_factory.mktemp("dense") / "model")


@pytest.fixture(scope="module")
def decoder_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen3 embedder: last token, Normalize, an instruction prompt by default, and
    a tokenizer that pads on the left."""
    root = tmp_path_factory.mktemp("qwen3-embedding")
    transformer = Transformer(str(make_decoder(root / "base", "qwen3")))
    transformer.tokenizer.padding_side = "left"  # as Qwen3-Embedding's tokenizer pads
    modules = [transformer, Pooling(32, pooling_mode="lasttoken"), Normalize()]
    prompts = {"query": INSTRUCT, "document": ""}
    return _save(modules, root / "model", prompts=prompts, default_prompt_name="query")


@pytest.fixture(scope="module")
def gemma_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny EmbeddingGemma-style embedder: a Gemma 3 decoder whose config makes attention
    bidirectional, a local layer of an 8-token window, mean pooling, two Dense layers and
    Normalize."""
    root = tmp_path_factory.mktemp("embedding-gemma")
    make_decoder(
        root / "base",
        "gemma3_text",
        max_position_embeddings=128,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
        use_bidirectional_attention=True,
    )
    transformer = Transformer(str(root / "base"))
    identity = torch.nn.Identity()
    modules = [
        transformer,
        Pooling(32, pooling_mode="mean"),
        Dense(32, 64, activation_function=identity),  # two Dense layers, as EmbeddingGemma's
        Dense(64, 16, activation_function=identity),
        Normalize(),
    ]
    return _save(modules, root / "model")


@contextlib.contextmanager
def _served(folder: Path, **settings: object) -> Iterator[Client]:
    server = ServerThread(
        Settings(model_dir=folder, heads=(HeadSpec("encode", "encode"),), device="cpu", **settings)  # type: ignore[arg-type]
    )
    try:
        with Client(server.target, max_retries=0) as client:
            yield client
    finally:
        server.stop()


def _vectors(client: Client, texts: list[str], **options: object) -> np.ndarray:
    return np.stack([e.vector for e in client.encode(texts, **options).embeddings])  # type: ignore[arg-type]


def test_last_token_dense_and_normalize_equal_sentence_transformers(dense_folder: Path) -> None:
    reference = SentenceTransformer(str(dense_folder), device="cpu")
    with _served(dense_folder) as client:
        got = _vectors(client, TEXTS)
        assert got.shape == (len(TEXTS), 32)
        np.testing.assert_allclose(got, reference.encode(TEXTS), atol=TOLERANCE, rtol=0)
        cut = _vectors(client, TEXTS, dimensions=16)
        want = reference.encode(TEXTS, truncate_dim=16)
        np.testing.assert_allclose(cut, want, atol=TOLERANCE, rtol=0)
        info = {h.name: h for h in client.model_info().heads}["encode"]
        assert "lasttoken" in str(info) and "1 Dense to 32 dimensions" in str(info)


def _tolerance(runtime: str) -> float:
    return 1e-4 if runtime == "onnx" else TOLERANCE


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_a_decoder_embedder_equals_sentence_transformers(
    decoder_folder: Path, runtime: str
) -> None:
    reference = SentenceTransformer(str(decoder_folder), device="cpu")
    tolerance = _tolerance(runtime)
    with _served(decoder_folder, runtime=runtime) as client:  # Qwen3: a verified family
        # the default prompt (query), another named one, and a call's own
        np.testing.assert_allclose(
            _vectors(client, TEXTS), reference.encode(TEXTS), atol=tolerance, rtol=0
        )
        got = _vectors(client, TEXTS, prompt_name="document")
        np.testing.assert_allclose(
            got, reference.encode(TEXTS, prompt_name="document"), atol=tolerance, rtol=0
        )
        # rows of many lengths batched together: the last real token of each, not padding
        mixed = [t * (1 + i) for i, t in enumerate(TEXTS)]
        np.testing.assert_allclose(
            _vectors(client, mixed), reference.encode(mixed), atol=tolerance, rtol=0
        )
        assert client.model_info().backbone.packing == "packed, block-diagonal causal mask"


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_a_bidirectional_decoder_with_dense_equals_sentence_transformers(
    gemma_folder: Path, runtime: str
) -> None:
    reference = SentenceTransformer(str(gemma_folder), device="cpu")
    texts = [*TEXTS, TEXTS[1] * 3]  # rows past the 8-token window, with short ones
    with _served(gemma_folder, runtime=runtime) as client:  # Gemma 3: a verified family
        got = _vectors(client, texts)
        assert got.shape == (len(texts), 16)
        np.testing.assert_allclose(got, reference.encode(texts), atol=_tolerance(runtime), rtol=0)
        # packed: both the global layer's bidirectional mask and the local layer's window
        backbone = client.model_info().backbone
        assert (backbone.family, backbone.packing) == (
            "Gemma 3",
            "packed, block-diagonal bidirectional mask (the config's)",
        )


def _edited(folder: Path, tmp_path: Path, edit: dict[str, object], where: str) -> Path:
    """A copy of `folder` with the JSON file `where` updated by `edit`."""
    copy = tmp_path / "edited"
    shutil.copytree(folder, copy)
    path = copy / where
    content = json.loads(path.read_text())
    if isinstance(content, list):
        content.append(edit)
    else:
        content.update(edit)
    path.write_text(json.dumps(content))
    return copy


@pytest.mark.parametrize(
    ("where", "edit", "refusal"),
    [
        ("1_Pooling/config.json", {"pooling_mode": "max"}, "pooling max is not one headserve runs"),
        (
            "2_Dense/config.json",
            {"activation_function": "torch.nn.modules.activation.Softsign"},
            "Dense activation 'torch.nn.modules.activation.Softsign'",
        ),
        (
            "modules.json",
            {
                "idx": 4,
                "name": "4",
                "path": "4_LayerNorm",
                "type": "sentence_transformers.models.LayerNorm",
            },
            "modules.json module 4 (LayerNorm): a module headserve does not run",
        ),
    ],
)
def test_what_the_head_cannot_run_refuses_the_start_naming_it(
    dense_folder: Path, tmp_path: Path, where: str, edit: dict[str, object], refusal: str
) -> None:
    folder = _edited(dense_folder, tmp_path, edit, where)
    with pytest.raises(HeadsFailed) as refused:
        build_core(Settings(model_dir=folder, heads=(HeadSpec("encode", "encode"),), device="cpu"))
    assert refusal in str(refused.value)
