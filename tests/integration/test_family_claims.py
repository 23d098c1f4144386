"""What the server says and refuses about a checkpoint's family and heads: a family outside
the verified table starts only when allowed (and says so), `headserve info` tells the family
and how it runs before anything is served, a head is trained only when its checkpoint was
trained for its task, and a one-label classifier answers the sigmoid of its logit (what
sentence-transformers' CrossEncoder reports), not a softmax over one logit."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoints import make_decoder, make_tokenizer, tiny_config
from serving import on_core
from transformers import (
    AutoModelForSequenceClassification,
    BertForPreTraining,
    BertTokenizer,
)

from headserve.plugins.contract import HeadSpec
from headserve.plugins.tasks import ClassifyOptions, TextItem
from headserve.server import cli
from headserve.server.backbones.families import UnverifiedFamily
from headserve.server.loading import Settings, build_core
from headserve.server.tasks.models import model_info

PAIRS = [
    ("how do I bake bread?", "Mix flour, water and yeast, then bake it."),
    ("how do I bake bread?", "The zoo is open every day."),
    ("who works in Paris?", "Alice works in Paris at the bank."),
]


@pytest.fixture(autouse=True)
def _keep_the_logging_setup():  # type: ignore[no-untyped-def]
    """cli.main sets the root logger's handlers (to this test's stderr): put them back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _decoder(folder: Path, model_type: str = "smollm3") -> Path:
    """A tiny random decoder (by default a SmolLM3, outside the verified table)."""
    return make_decoder(folder, model_type, bos_token_id=101, eos_token_id=102)


def test_a_family_outside_the_table_stops_the_start_naming_it_and_the_flag(tmp_path) -> None:  # type: ignore[no-untyped-def]
    folder = _decoder(tmp_path / "smollm3")
    with pytest.raises(UnverifiedFamily) as refused:
        build_core(Settings(model_dir=folder, device="cpu"))
    message = str(refused.value)
    assert "'smollm3'" in message and "decoder" in message
    assert "--allow-unverified-family" in message and "\n" not in message


def test_the_cli_says_so_in_one_line(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    folder = _decoder(tmp_path / "smollm3")
    with pytest.raises(SystemExit) as exited:
        cli.main(["info", str(folder), "--log-format", "text"])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if " CRITICAL " in line or " ERROR " in line]
    assert len(lines) == 1 and "cannot start:" in lines[0], err
    assert "--allow-unverified-family" in lines[0] and "smollm3" in lines[0]
    assert "Traceback" not in err


def test_allowed_it_starts_warned_and_info_says_unverified(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    folder = _decoder(tmp_path / "smollm3")
    caplog.set_level(logging.INFO)
    core = build_core(
        Settings(model_dir=folder, device="cpu", runtime="torch", allow_unverified_family=True)
    )
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("served UNVERIFIED" in w and "decoder" in w for w in warned), warned
    backbone = model_info(core).backbone
    assert (backbone.family, backbone.verified) == ("smollm3", False)
    # a decoder packs with a causal mask within each row (checked against padded at load)
    assert backbone.packing == "packed, block-diagonal causal mask"
    # no masked-LM class for a decoder: that default head is left out, not a failed plugin
    assert "mlm" not in core.registry.heads and not core.registry.failures
    assert "default heads: no mlm head" in caplog.text


def test_info_tells_the_family_runtime_packing_and_each_heads_settings(  # type: ignore[no-untyped-def]
    matrix_families, capsys
) -> None:
    family = matrix_families["modernbert"]
    cli.main(["info", str(family.backbone), "--runtime", "onnx", "--head", "e=encode,pooling=mean"])
    info = json.loads(capsys.readouterr().out)
    backbone = info["backbone"]
    assert backbone["family"] == "ModernBERT" and backbone["verified"] is True
    assert backbone["runtime"].startswith("onnxruntime")
    assert backbone["packing"] == "packed, block-diagonal mask; local layers' window in the mask"
    (head,) = info["heads"]
    assert head["settings"] == {"pooling": "mean", "normalize": "false"}


def test_a_head_is_trained_only_by_a_checkpoint_of_its_task(tmp_path, matrix_families) -> None:  # type: ignore[no-untyped-def]
    """A ModernBERT classifier's `classifier.weight` loads into its QA class too (two labels,
    the shape of start and end): the architecture it declares says it is no QA head."""
    modern = matrix_families["modernbert"]
    two = tmp_path / "two-labels"
    torch.manual_seed(1)
    vocab = len(make_tokenizer("modernbert", two))
    AutoModelForSequenceClassification.from_config(
        tiny_config("modernbert", vocab, num_labels=2)
    ).save_pretrained(two)
    make_tokenizer("modernbert", two).save_pretrained(two)
    # BERT's pre-training checkpoints (bert-base-uncased's kind) hold a trained LM head
    pretrained = tmp_path / "pretraining"
    bert_tokenizer = make_tokenizer("bert", pretrained)
    BertForPreTraining(tiny_config("bert", len(bert_tokenizer))).save_pretrained(pretrained)
    bert_tokenizer.save_pretrained(pretrained)
    core = build_core(
        Settings(
            model_dir=modern.backbone,
            device="cpu",
            runtime="torch",
            heads=(
                HeadSpec("qa", "qa", two),
                HeadSpec("pairs", "classify", two),
                HeadSpec("mlm", "mlm", modern.mlm),
            ),
        )
    )
    heads = {h.name: h for h in model_info(core).heads}
    assert not heads["qa"].trained and not heads["qa"].usable
    assert heads["qa"].detail == (
        "QA weights not trained for this task: its checkpoint is a "
        "ModernBertForSequenceClassification, not a ModernBertForQuestionAnswering"
    )
    assert heads["pairs"].trained and heads["mlm"].trained
    bert = build_core(
        Settings(
            model_dir=pretrained,
            device="cpu",
            runtime="torch",
            heads=(HeadSpec("mlm", "mlm", pretrained), HeadSpec("qa", "qa", pretrained)),
        )
    )
    bert_heads = {h.name: h for h in model_info(bert).heads}
    assert bert_heads["mlm"].trained  # BertForPreTraining: its LM head is the MLM's
    assert not bert_heads["qa"].trained and "weights missing" in bert_heads["qa"].detail


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    """A one-label BERT cross-encoder (as ms-marco-MiniLM is), random but sharp."""
    folder = tmp_path_factory.mktemp("cross-encoder")
    torch.manual_seed(2)
    tokenizer = make_tokenizer("bert", folder)
    model = AutoModelForSequenceClassification.from_config(
        tiny_config("bert", len(tokenizer), num_labels=1, initializer_range=0.2)
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_one_label_head_answers_the_sigmoid_as_cross_encoder_does(cross_encoder) -> None:  # type: ignore[no-untyped-def]
    from sentence_transformers import CrossEncoder

    reference = CrossEncoder(str(cross_encoder), device="cpu")
    want = reference.predict(PAIRS)  # sigmoid of the one logit, its default for one label
    model = AutoModelForSequenceClassification.from_pretrained(str(cross_encoder)).eval()
    tokenizer = reference.tokenizer
    with torch.inference_mode():
        logits = model(**tokenizer([q for q, _ in PAIRS], [d for _, d in PAIRS], padding=True,
                                   return_tensors="pt")).logits[:, 0]  # fmt: skip
    heads = (
        HeadSpec("ce", "classify", cross_encoder),
        HeadSpec("raw", "classify", cross_encoder, {"activation": "none"}),
        HeadSpec("old", "classify", cross_encoder, {"activation": "softmax"}),
    )
    core = build_core(Settings(model_dir=cross_encoder, device="cpu", heads=heads))
    items = [TextItem(q, d) for q, d in PAIRS]
    results = on_core(
        core, lambda: core.run("classify", ["ce", "raw", "old"], items, ClassifyOptions())
    ).results
    assert len(set(np.round(want, 4))) == len(PAIRS)  # the pairs score differently
    for (ce, raw, old), expected, logit in zip(results, want, logits, strict=True):
        ((label, score),) = ce.labels
        assert (ce.activation, raw.activation, old.activation) == ("sigmoid", "none", "softmax")
        assert score == pytest.approx(float(expected), abs=1e-5)
        assert ce.label_logits == pytest.approx([float(logit)], abs=1e-5)
        assert raw.labels[0][1] == pytest.approx(float(logit), abs=1e-5)
        assert old.labels[0][1] == 1.0  # what every one-label answer used to be
    info = {h.name: h for h in model_info(core).heads}
    assert dict(info["ce"].settings) == {"activation": "sigmoid"}


def test_a_bad_activation_stops_that_head_naming_the_choices(cross_encoder) -> None:  # type: ignore[no-untyped-def]
    heads = (HeadSpec("bad", "classify", cross_encoder, {"activation": "tanh"}),)
    core = build_core(
        Settings(allow_failed_heads=True, model_dir=cross_encoder, device="cpu", heads=heads)
    )
    (failure,) = core.registry.failures
    assert "activation='tanh': choose from softmax, sigmoid, none" in failure.reason


def test_a_decoders_classifier_scores_the_last_real_token_as_transformers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    base = _decoder(tmp_path / "llama", "llama")  # AutoTokenizer keeps its BERT tokenizer
    torch.manual_seed(1)
    classifier = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=3)
    classifier.save_pretrained(tmp_path / "classify")
    tokenizer = BertTokenizer.from_pretrained(str(base))
    tokenizer.save_pretrained(tmp_path / "classify")
    core = build_core(
        Settings(
            model_dir=base,
            heads=(HeadSpec("c", "classify", tmp_path / "classify"),),
            device="cpu",
            runtime="torch",
            allow_unverified_family=True,
        )
    )
    texts = ["short", "a much longer sentence than the first one, padded after the other"]
    results = on_core(
        core, lambda: core.run("classify", ["c"], [TextItem(t) for t in texts], ClassifyOptions())
    ).results
    with torch.no_grad():
        want = classifier.eval()(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    got = np.array([row[0].logits for row in results])
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=0)


def test_a_decoders_one_logit_classifier_reranks_as_a_cross_encoder(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A decoder's sequence classifier with one logit ranks (query, document) pairs in Rerank by
    the sigmoid of its logit on the last real token of each pair, as transformers computes it."""
    from serving import ServerThread

    from headserve.client import Client

    base = _decoder(tmp_path / "llama", "llama")
    torch.manual_seed(2)
    classifier = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=1)
    with torch.no_grad():
        classifier.score.weight.mul_(20.0)  # scores far enough apart to order
    classifier.save_pretrained(tmp_path / "ce")
    tokenizer = BertTokenizer.from_pretrained(str(base))
    tokenizer.save_pretrained(tmp_path / "ce")
    query, documents = PAIRS[0][0], [document for _, document in PAIRS]
    with torch.no_grad():
        encoded = tokenizer([query] * len(documents), documents, padding=True, return_tensors="pt")
        want = classifier.eval()(**encoded).logits[:, 0].sigmoid().numpy()
    server = ServerThread(
        Settings(
            model_dir=base,
            heads=(HeadSpec("ce", "classify", tmp_path / "ce"),),
            device="cpu",
            runtime="torch",
        )
    )
    try:
        with Client(server.target, max_retries=0) as client:
            ranked = client.rerank(query, documents, head="ce")
    finally:
        server.stop()
    got = {d.index: d.score for d in ranked.results}
    np.testing.assert_allclose([got[i] for i in range(len(documents))], want, atol=1e-5, rtol=0)
    assert [d.index for d in ranked.results] == list(np.argsort(-want))
