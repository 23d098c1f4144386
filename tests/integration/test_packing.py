"""Packed rows (several to a sequence, block-diagonal attention) equal padded rows, per architecture."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from checkpoints import ARCHS
from hypothesis import given, settings
from hypothesis import strategies as st

from headserve.plugins.contract import Row
from headserve.server.backbones import packing
from headserve.server.backbones.backbone import TextBackbone

TEXTS = [
    ("Alice works in Paris.", None),
    ("The quick brown fox jumps over the lazy dog, again and again and again.", None),
    ("x", None),
    ("Where does Bob work?", "Bob works in Berlin at the zoo."),
    ("I loved this film.", None),
]


@pytest.mark.parametrize("arch", ARCHS)
def test_packed_equals_padded(families, arch: str) -> None:  # type: ignore[no-untyped-def]
    backbone = TextBackbone.load(families[arch].backbone, device="cpu")
    assert backbone.packing  # the load-time probe turned it on
    assert backbone.traced is not None  # and the packed pass runs as a checked trace
    rows = []
    for text, pair in TEXTS:
        enc = backbone.tokenizer(text, pair, return_token_type_ids=True)
        rows.append(Row(tuple(enc["input_ids"]), tuple(enc["token_type_ids"])))
    with torch.inference_mode():
        packed, mask, ids, computed = backbone.run_packed(rows, pack_tokens=24)[:4]
        padded, padded_mask, padded_ids, padded_computed = backbone.run_padded(rows)[:4]
        assert torch.equal(mask, padded_mask) and torch.equal(ids, padded_ids)
        real = sum(len(r.input_ids) for r in rows)
        assert padded_computed == len(rows) * max(len(r.input_ids) for r in rows)
        # packed into sequences of at least the longest row: less padding, never fewer tokens
        assert real <= computed < padded_computed
        keep = mask.bool()
        np.testing.assert_allclose(packed[keep].numpy(), padded[keep].numpy(), atol=1e-5)
        for i, row in enumerate(rows):  # and each row alone
            alone = backbone.run_padded([row]).hidden
            np.testing.assert_allclose(
                packed[i, : len(row.input_ids)].numpy(), alone[0].numpy(), atol=1e-5
            )


def test_bins_first_fit_decreasing() -> None:
    groups = packing.bins([50, 10, 70, 30, 60, 5], capacity=100)
    assert sorted(i for g in groups for i in g) == list(range(6))
    lengths = [50, 10, 70, 30, 60, 5]
    assert all(sum(lengths[i] for i in g) <= 100 for g in groups)
    assert len(groups) == 3  # 225 tokens need at least 3 sequences of 100


@settings(max_examples=300, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 300), min_size=1, max_size=64),
    pack_tokens=st.sampled_from([24, 64, 128, 256]),
)
def test_balanced_sequences_never_hold_more_padding(lengths: list[int], pack_tokens: int) -> None:
    capacity, groups = packing.balanced(lengths, pack_tokens)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))  # each row once
    assert all(sum(lengths[i] for i in g) <= capacity for g in groups)
    assert max(lengths) <= capacity <= max(max(lengths), pack_tokens)
    # never more sequences, nor more slots, than sequences of a fixed pack_tokens would take
    fixed = max(max(lengths), min(pack_tokens, sum(lengths)))
    before = packing.bins(lengths, fixed)
    assert len(groups) <= len(before)
    assert capacity * len(groups) <= fixed * len(before)


def test_balanced_sequences_share_the_tokens_evenly() -> None:
    # 16 rows of 27 tokens (432): four sequences of 128 leave 80 slots empty; four of 112
    # (the next multiple of 8 above 108, to keep few shapes) leave 16
    capacity, groups = packing.balanced([27] * 16, 128)
    assert (capacity, len(groups)) == (112, 4)
    # rows that fit in one sequence get exactly their tokens
    assert packing.balanced([5, 9, 3], 128) == (17, [[0, 1, 2]])


def _rows(backbone: TextBackbone) -> list[Row]:
    return [Row(tuple(backbone.tokenizer(t, p)["input_ids"])) for t, p in TEXTS]


@pytest.mark.parametrize("arch", ARCHS)
def test_the_trace_gives_the_models_own_states(families, arch: str) -> None:  # type: ignore[no-untyped-def]
    traced = TextBackbone.load(families[arch].backbone, device="cpu")
    plain = TextBackbone.load(families[arch].backbone, device="cpu", trace=False)
    assert traced.traced is not None and plain.traced is None
    rows = _rows(traced)
    with torch.inference_mode():
        for batch in (rows, rows[:1], rows[1:3]):  # a lone row goes through the trace too
            got, mask = traced.run(batch)[:2]
            expected = plain.run(batch).hidden
            keep = mask.bool()
            np.testing.assert_allclose(got[keep].numpy(), expected[keep].numpy(), atol=1e-5)


def test_a_trace_that_differs_is_not_used(bert, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    real_trace = torch.jit.trace

    def off_by_a_little(module, inputs, **kwargs):  # type: ignore[no-untyped-def]
        traced = real_trace(module, inputs, **kwargs)
        return lambda *args: traced(*args) + 1e-3

    monkeypatch.setattr(torch.jit, "trace", off_by_a_little)
    caplog.set_level(logging.INFO, logger="headserve.server.backbones.traced")
    backbone = TextBackbone.load(bert.backbone, device="cpu")
    assert backbone.packing and backbone.traced is None
    assert "the trace differs by 1.00e-03" in caplog.text


def test_sequences_are_no_longer_than_their_rows_need(bert) -> None:  # type: ignore[no-untyped-def]
    backbone = TextBackbone.load(bert.backbone, device="cpu", trace=False)
    rows = _rows(backbone)
    lengths = [len(r.input_ids) for r in rows]
    pad = backbone.pad_id

    def pack(rows: list[Row], tokens: int) -> packing.Packed:
        return packing.pack(rows, pad=pad, first_position=0, pack_tokens=tokens)

    alone = pack(rows[:1], 128)
    assert alone.ids.shape == (1, lengths[0])  # a lone row is not padded out to 128
    few = pack(rows, 128)
    assert few.ids.shape == (1, sum(lengths))  # fewer tokens than 128: one sequence of them
    many = pack(rows, 24)
    limit = max(max(lengths), 24)
    assert max(lengths) <= many.ids.shape[1] <= limit
    assert many.ids.shape[0] == len(packing.bins(lengths, limit))  # no more sequences


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_tokens_past_attended_are_read_by_none_as_masked_padding_is(
    bert, runtime, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """Row.attended (ColBERT's query expansion): the row's tokens past it get their states, as
    the model's own pass computes padding positions masked out, and change no other token's:
    packed with other rows, on the trace and on ONNX Runtime."""
    from transformers import AutoModel

    backbone = TextBackbone.load(bert.backbone, device="cpu", runtime=runtime, onnx_cache=tmp_path)
    model = AutoModel.from_pretrained(bert.backbone).eval()
    mask_id = backbone.tokenizer.mask_token_id
    rows, attended = [], []
    for text, _ in TEXTS:
        ids = backbone.tokenizer(text)["input_ids"]
        rows.append(Row(tuple(ids + [mask_id] * 6), attended=len(ids)))
        attended.append(len(ids))
    rows.append(Row(tuple(backbone.tokenizer("no expansion here")["input_ids"])))
    with torch.inference_mode():
        got = backbone.run(rows).hidden
        for i, row in enumerate(rows):
            n = len(row.input_ids)
            mask = torch.zeros(1, n, dtype=torch.long)
            mask[0, : row.attended or n] = 1
            want = model(input_ids=torch.tensor([row.input_ids]), attention_mask=mask)
            np.testing.assert_allclose(
                got[i, :n].numpy(),
                want.last_hidden_state[0].numpy(),
                atol=1e-5 if runtime == "torch" else 1e-4,
                rtol=0,
            )
    assert not torch.allclose(got[0, attended[0]], got[0, attended[0] + 1])  # positions differ
