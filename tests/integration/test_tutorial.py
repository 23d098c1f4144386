"""The tutorial this project grew from (shared/seed): bert-base-chinese ids and shapes.

No Chinese weights ship here, so a checkpoint with the bert-base-chinese vocabulary
(from cn-clip), the tutorial's hidden size 768 and random weights stands in: the
tokenizer must give the tutorial's ids, and each head the shapes it prints.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from serving import ServerThread
from transformers import BertConfig, BertForMaskedLM, BertForQuestionAnswering, BertTokenizer

from headserve.client import Client
from headserve.plugins.contract import HeadSpec
from headserve.server.core.runner import Work
from headserve.server.loading import Settings


@pytest.fixture(scope="module")
def chinese(tmp_path_factory: pytest.TempPathFactory) -> Path:
    vocab = resources.files("cn_clip") / "clip" / "vocab.txt"
    folder = tmp_path_factory.mktemp("bert-base-chinese-vocab")
    tokenizer = BertTokenizer(str(vocab))
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=768,
        num_hidden_layers=1,
        num_attention_heads=12,
        intermediate_size=1024,
    )
    torch.manual_seed(0)
    BertForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    qa = folder.parent / "qa"
    BertForQuestionAnswering(config).save_pretrained(qa)
    tokenizer.save_pretrained(qa)
    return folder


@pytest.fixture(scope="module")
def server(chinese: Path) -> Iterator[ServerThread]:
    # The tutorial's classification and QA heads are random too: serve them anyway.
    settings = Settings(
        model_dir=chinese,
        heads=(
            HeadSpec("encode", "encode", None, {"pooling": "none"}),
            HeadSpec("mlm", "mlm"),
            HeadSpec("classify", "classify"),
            HeadSpec("qa", "qa", chinese.parent / "qa"),
        ),
        allow_untrained=True,
        device="cpu",
    )
    thread = ServerThread(settings)
    yield thread
    thread.stop()


def test_tokenize_gives_the_tutorial_ids(server: ServerThread) -> None:
    with Client(server.target) as client:
        single, pair = client.tokenize(["我喜欢户外旅游", ("我在北京工作", "你在哪里工作?")])
    assert list(single.ids) == [101, 2769, 1599, 3614, 2787, 1912, 3180, 3952, 102]
    assert list(pair.ids) == [
        101,
        2769,
        1762,
        1266,
        776,
        2339,
        868,
        102,
        872,
        1762,
        1525,
        7027,
        2339,
        868,
        136,
        102,
    ]
    assert list(pair.token_type_ids) == [0] * 8 + [1] * 8
    assert pair.tokens[0] == "[CLS]" and pair.tokens[3] == "北"
    assert tuple(single.offsets[1]) == (0, 1)  # code points: 我 is one character


def test_heads_give_the_tutorial_shapes(server: ServerThread) -> None:
    with Client(server.target) as client:
        states = client.encode(["我喜欢户外旅游"], pooling="none").embeddings[0].token_states
        assert states is not None and states.shape == (9, 768)  # 1x9x768 in the tutorial
        logits = (
            client.predict_tokens(["我喜欢户外[MASK]游"], return_logits=True).predictions[0].logits
        )
        assert logits is not None and logits.shape == (9, 21128)  # 1x9x21128
        (labels,) = client.classify(["我喜欢户外旅游"]).classifications[0].heads
        assert len(labels.labels) == 2  # 1x2
        assert sum(l.probability for l in labels.labels) == pytest.approx(1.0, abs=1e-5)
    # one start and one end logit per token of the pair (1x16 each)
    assert server.core is not None
    head = server.core.registry.resolve("qa", None)
    from headserve.plugins.tasks import QAItem, QAOptions

    prepared = head.prepare(QAItem("你在哪里工作?", "我在北京工作"), QAOptions())
    (row,) = prepared.rows
    assert len(row.input_ids) == 16
    ((start, end),) = server.core.runner.compute([Work(head, row)])
    assert np.shape(start) == (16,) and np.shape(end) == (16,)
