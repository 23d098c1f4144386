"""The conformance matrix: every text family of the verified table (server/backbones/families.py), on
every runtime the table gives it, computes transformers' own states for rows of every length
from 1 token to the checkpoint's limit (four local-attention windows where the family has
them): each row alone, packed with the others and padded in a batch with the others. Weights
are drawn wide (initializer_range 0.2), so a wrong mask or position is a large error. The
heads of each family are held to transformers' task classes in test_conformance.py; the
image families in test_images.py. And the table is docs/backbones.md."""

from __future__ import annotations

import inspect
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoints import FAMILY_CONFIGS, MAX_LENGTH, WINDOW, make_tokenizer, tiny_config
from pictures import VISION_ARCHS
from transformers import AutoModel

from headserve.plugins.contract import Row
from headserve.server.backbones import families, packed_pass
from headserve.server.backbones.backbone import TextBackbone

TEXT = families.by_modality("text")
CASES = [(f.model_types[0], runtime) for f in TEXT for runtime in f.runtimes]
DOCS = Path(__file__).parents[2] / "docs" / "backbones.md"


def tolerance(runtime: str) -> float:
    return 1e-4 if runtime == "onnx" else 1e-5


def test_docs_backbones_md_is_the_table() -> None:
    text = DOCS.read_text()
    assert families.markdown() in text, (
        "docs/backbones.md's table differs from server/backbones/families.py: "
        "python -m headserve.server.backbones.families docs/backbones.md writes it"
    )


def test_the_matrix_builds_every_family_of_the_table_and_no_other() -> None:
    text_types = {t for f in TEXT for t in f.model_types}
    assert text_types == set(FAMILY_CONFIGS)
    image = families.by_modality("image")
    assert {t for f in image if f.kind == "transformers-image" for t in f.model_types} == set(
        VISION_ARCHS
    )
    assert [f.name for f in image if f.kind == "efficientnet-lite"] == ["EfficientNet-Lite"]


@pytest.fixture(scope="module", params=CASES, ids=[f"{a}-{r}" for a, r in CASES])
def loaded(request, matrix_families, tmp_path_factory):  # type: ignore[no-untyped-def]
    arch, runtime = request.param
    folder = matrix_families[arch].backbone
    backbone = TextBackbone.load(
        folder, device="cpu", runtime=runtime, onnx_cache=tmp_path_factory.mktemp("onnx")
    )
    reference = AutoModel.from_pretrained(str(folder)).eval()
    return families.family_of(arch), runtime, backbone, reference


def test_each_family_runs_as_the_table_says(loaded) -> None:  # type: ignore[no-untyped-def]
    family, runtime, backbone, _ = loaded
    assert backbone.family == family and family.verified
    assert backbone.packing == family.packed, backbone.packing_detail
    if runtime == "onnx":
        assert backbone.runtime.startswith("onnxruntime")
    else:
        assert backbone.runtime == ("torch (traced)" if family.traced else "torch")
    assert backbone.max_length == MAX_LENGTH


def _rows(backbone: TextBackbone, seed: int = 0) -> list[Row]:
    """One row of every length from 1 to the limit, random ids (no padding id: RoBERTa's
    positions skip it); every third one a pair (token types 0 then 1)."""
    rng = random.Random(seed)
    # ids the model embeds (a tokenizer may add tokens past the config's vocabulary)
    vocab = min(len(backbone.tokenizer), backbone.config.vocab_size)
    pads = {backbone.pad_id, backbone.position_pad_id}
    ids = [i for i in range(5, vocab) if i not in pads]
    rows = []
    for n in range(1, backbone.max_length + 1):
        tokens = tuple(rng.choice(ids) for _ in range(n))
        types = tuple(0 if i < n // 2 else 1 for i in range(n)) if n % 3 == 0 else None
        rows.append(Row(tokens, types))
    return rows


def _expected(reference: torch.nn.Module, row: Row) -> torch.Tensor:
    """transformers' states for one row alone, its token types as its config can embed them
    (a model with one token type reads the second segment as the first)."""
    kwargs = {"input_ids": torch.tensor([row.input_ids])}
    config = reference.config
    takes_types = "token_type_ids" in inspect.signature(reference.forward).parameters
    if row.token_type_ids is not None and takes_types:
        types = torch.tensor([row.token_type_ids])
        kinds = getattr(config, "type_vocab_size", 2)
        kwargs["token_type_ids"] = types if kinds > 1 else torch.zeros_like(types)
    states: torch.Tensor = reference(**kwargs).last_hidden_state[0]
    return states


@torch.inference_mode()
def test_every_length_alone_packed_and_batched_equals_transformers(loaded) -> None:  # type: ignore[no-untyped-def]
    family, runtime, backbone, reference = loaded
    rows = _rows(backbone)
    want = [_expected(reference, row) for row in rows]
    shuffled = list(range(len(rows)))
    random.Random(1).shuffle(shuffled)
    ways = {
        "alone": [backbone.run([row]).hidden[0] for row in rows],
        "batched": list(backbone.run_padded(rows).hidden),
        "packed": list(backbone.run(rows).hidden),
    }
    # long rows share sequences with short ones too: sequences of twice the longest row
    mixed = backbone.run_packed([rows[i] for i in shuffled], 2 * backbone.max_length).hidden
    ways["packed with long rows"] = [mixed[shuffled.index(i)] for i in range(len(rows))]
    for way, got in ways.items():
        for row, states, expected in zip(rows, got, want, strict=True):
            n = len(row.input_ids)
            error = float((states[:n] - expected).abs().max())
            assert error <= tolerance(runtime), (
                f"{family.name} on {runtime}, {way}: a row of {n} tokens differs by {error:.2e}"
            )


# Packed passes blind to a window, as ones were: ModernBERT's with one 4D mask for every layer
# (its local layers see too far); a Qwen2's with one causal mask, the sliding one, for its
# full layer too (which then sees too little).
BLIND = {"modernbert": ("call", "masked"), "qwen2": ("layer_types", ())}


@pytest.mark.parametrize("arch", BLIND)
def test_a_packed_pass_blind_to_the_window_is_caught_at_load(  # type: ignore[no-untyped-def]
    arch, matrix_families, monkeypatch, caplog
) -> None:
    """The check rows at load include one longer than the config's window: a packed pass that
    drops the window's own mask differs there, and packing goes off with a warning."""
    real = packed_pass.PackedPass.__init__
    name, value = BLIND[arch]

    def blind(self, model, family, token_types):  # type: ignore[no-untyped-def]
        real(self, model, family, token_types)
        setattr(self, name, value)

    monkeypatch.setattr(packed_pass.PackedPass, "__init__", blind)
    caplog.set_level(logging.WARNING, logger="headserve.server.backbones.backbone")
    folder = matrix_families[arch].backbone
    backbone = TextBackbone.load(folder, device="cpu", runtime="torch")
    assert backbone.check_length == MAX_LENGTH > 2 * WINDOW
    assert not backbone.packing and backbone.traced is None
    family = families.family_of(arch)
    assert f"row packing off for {family.name}: packed rows differ from padded ones by" in (
        caplog.text
    )
    rows = _rows(backbone)[-3:]  # it still serves exactly, padded
    reference = AutoModel.from_pretrained(str(folder)).eval()
    with torch.inference_mode():
        got = backbone.run(rows).hidden
        for row, states in zip(rows, got, strict=True):
            n = len(row.input_ids)
            np.testing.assert_allclose(states[:n], _expected(reference, row), atol=1e-5)


def test_a_checkpoint_that_cannot_pack_runs_padded_on_onnx_runtime(tmp_path: Path) -> None:
    """A DeBERTa-v2 with a convolution layer (v2 xlarge's kind) reads neighbouring tokens,
    across packed rows too: it runs padded, on ONNX Runtime rather than plain torch, and every
    length still equals transformers."""
    tokenizer = make_tokenizer("deberta-v2", tmp_path)
    torch.manual_seed(3)
    config = tiny_config("deberta-v2", len(tokenizer), 0.2, conv_kernel_size=3, conv_act="gelu")
    AutoModel.from_config(config).save_pretrained(tmp_path / "conv")
    tokenizer.save_pretrained(tmp_path / "conv")
    backbone = TextBackbone.load(
        tmp_path / "conv", device="cpu", runtime="onnx", onnx_cache=tmp_path / "onnx"
    )
    assert not backbone.packing and "convolution layer" in backbone.packing_detail
    assert backbone.runtime.startswith("onnxruntime") and backbone.ort is not None
    assert not backbone.ort.packed
    reference = AutoModel.from_pretrained(str(tmp_path / "conv")).eval()
    rows = _rows(backbone)
    with torch.inference_mode():
        got = backbone.run(rows).hidden
        for row, states in zip(rows, got, strict=True):
            n = len(row.input_ids)
            np.testing.assert_allclose(states[:n], _expected(reference, row), atol=1e-4)
