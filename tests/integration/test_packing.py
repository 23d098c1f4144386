"""Packed rows (several to a sequence, block-diagonal attention) equal padded rows, per architecture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from checkpoints import ARCHS

from headserve.plugins.contract import Row
from headserve.server import packing
from headserve.server.backbone import Backbone

TEXTS = [
    ("Alice works in Paris.", None),
    ("The quick brown fox jumps over the lazy dog, again and again and again.", None),
    ("x", None),
    ("Where does Bob work?", "Bob works in Berlin at the zoo."),
    ("I loved this film.", None),
]


@pytest.mark.parametrize("arch", ARCHS)
def test_packed_equals_padded(families, arch: str) -> None:  # type: ignore[no-untyped-def]
    backbone = Backbone.load(families[arch].backbone, device="cpu")
    assert backbone.packing  # the load-time probe turned it on
    rows = []
    for text, pair in TEXTS:
        enc = backbone.tokenizer(text, pair, return_token_type_ids=True)
        rows.append(Row(tuple(enc["input_ids"]), tuple(enc["token_type_ids"])))
    with torch.inference_mode():
        packed, mask, ids = packing.run_packed(backbone, rows, pack_tokens=24)
        padded, padded_mask, padded_ids = packing.run_padded(backbone, rows)
        assert torch.equal(mask, padded_mask) and torch.equal(ids, padded_ids)
        keep = mask.bool()
        np.testing.assert_allclose(packed[keep].numpy(), padded[keep].numpy(), atol=1e-5)
        for i, row in enumerate(rows):  # and each row alone
            alone, _, _ = packing.run_padded(backbone, [row])
            np.testing.assert_allclose(
                packed[i, : len(row.input_ids)].numpy(), alone[0].numpy(), atol=1e-5
            )


def test_bins_first_fit_decreasing() -> None:
    groups = packing.bins([50, 10, 70, 30, 60, 5], capacity=100)
    assert sorted(i for g in groups for i in g) == list(range(6))
    lengths = [50, 10, 70, 30, 60, 5]
    assert all(sum(lengths[i] for i in g) <= 100 for g in groups)
    assert len(groups) == 3  # 225 tokens need at least 3 sequences of 100
