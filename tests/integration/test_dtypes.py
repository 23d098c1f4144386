"""Serving in float16 and bfloat16 (here on the CPU; on a GPU they are the usual choice): the
backbone really computes in that dtype, and the served embeddings and class probabilities agree
with transformers' own model classes loaded in the same dtype.

Tolerance: the two compute the same layers in the same dtype but in other batch shapes (the
server pads or packs rows with others), so they round differently. float16 keeps 11 significant
bits, bfloat16 8: on hidden states of magnitude 1-3 after the test model's layers, differences
stay under 0.02 (float16) and 0.06 (bfloat16); probabilities under 0.01 and 0.03. The logits are
compared as the states are: the checkpoint's weights are drawn wide (the conformance matrix's),
so its labels' logits lie further apart than the tolerance and a label swap fails."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from serving import on_core
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from headserve.plugins.contract import HeadSpec
from headserve.plugins.tasks import ClassifyOptions, EncodeOptions, TextItem
from headserve.server.loading import Settings, build_core

TEXTS = [
    TextItem("Alice works in Paris."),
    TextItem("The quick brown fox jumps over the lazy dog, again and again."),
    TextItem("Where does Bob work?", "Bob works in Berlin at the zoo."),
]
TOLERANCE = {  # hidden states, probabilities
    "float16": (0.02, 0.01),
    "bfloat16": (0.06, 0.03),
}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@torch.inference_mode()
def test_reduced_precision_serves_what_transformers_computes(matrix_families, dtype: str) -> None:  # type: ignore[no-untyped-def]
    bert = matrix_families["bert"]
    torch_dtype = getattr(torch, dtype)
    heads = (
        HeadSpec("encode", "encode", None, {"pooling": "cls"}),
        HeadSpec("classify", "classify", bert.classify),
    )
    core = build_core(Settings(model_dir=bert.backbone, heads=heads, device="cpu", dtype=dtype))
    assert core.backbone.dtype == torch_dtype
    assert {p.dtype for p in core.backbone.model.parameters()} == {torch_dtype}

    async def both() -> tuple[list[list[object]], list[list[object]]]:
        options = EncodeOptions(pooling="cls", normalize=False)
        encoded = await core.run("encode", [None], TEXTS, options)
        classified = await core.run("classify", [None], TEXTS, ClassifyOptions())
        return encoded.results, classified.results

    encoded, classified = on_core(core, both)
    tokenizer = AutoTokenizer.from_pretrained(str(bert.backbone))
    backbone = AutoModel.from_pretrained(str(bert.backbone), dtype=torch_dtype).eval()
    classifier = AutoModelForSequenceClassification.from_pretrained(
        str(bert.classify), dtype=torch_dtype
    ).eval()
    states_tol, probs_tol = TOLERANCE[dtype]
    for item, (embedding,), (classification,) in zip(TEXTS, encoded, classified, strict=True):
        inputs = tokenizer(item.text, item.text_pair, return_tensors="pt")
        expected = backbone(**inputs).last_hidden_state[0, 0].float().numpy()
        got = embedding.vector  # type: ignore[attr-defined]
        assert np.abs(expected).max() > 0.5  # states of a real magnitude, not zeros
        np.testing.assert_allclose(got, expected, atol=states_tol)
        logits = classifier(**inputs).logits[0].float()
        probs = logits.softmax(-1).numpy()
        labels = classifier.config.id2label
        served = dict(classification.labels)  # type: ignore[attr-defined]
        np.testing.assert_allclose(
            [served[labels[i]] for i in range(len(probs))], probs, atol=probs_tol
        )
        gaps = np.diff(np.sort(logits.numpy()))
        assert gaps.min() > 2 * states_tol  # a swap of two labels would show
        np.testing.assert_allclose(classification.logits, logits.numpy(), atol=states_tol)  # type: ignore[attr-defined]
