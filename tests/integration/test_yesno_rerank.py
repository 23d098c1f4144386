"""The `yesno` head: a causal LM scoring a (query, document) pair by the probability of "yes"
against "no" at the next position, as Qwen3-Reranker is used, equal to that formula computed
with transformers' AutoModelForCausalLM on the same prompts, through gRPC Rerank and Classify
and HTTP /v1/rerank, with Qwen3-Reranker's template and with one of the test's own."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoints import make_decoder
from serving import ServerThread
from transformers import AutoModelForCausalLM, BertTokenizer

from headserve.client import Client
from headserve.plugins.contract import HeadSpec
from headserve.plugins.yesno import QWEN3_RERANKER_INSTRUCTION, QWEN3_RERANKER_TEMPLATE
from headserve.server.core.heads import HeadsFailed
from headserve.server.loading import Settings, build_core

QUERY = "where does Alice work?"
DOCUMENTS = [
    "Alice works in Paris at the bank.",
    "The zoo is open every day.",
    "Bob works in Berlin, and Alice visits him there in the summer holidays.",
]
OWN_TEMPLATE = "Question: {query}\nPassage: {document}\nDoes the passage answer it?"


@pytest.fixture(scope="module")
def reranker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen3 causal LM (a BERT tokenizer, whose vocabulary has yes and no)."""
    folder = tmp_path_factory.mktemp("qwen3-reranker") / "model"
    # weights drawn wide (initializer_range 0.2): scores that differ between the documents
    return make_decoder(
        folder,
        "qwen3",
        AutoModelForCausalLM,
        max_position_embeddings=256,
        initializer_range=0.2,
    )


def _expected(
    folder: Path, template: str, instruction: str = QWEN3_RERANKER_INSTRUCTION
) -> list[float]:
    """P(yes) / (P(yes) + P(no)) at the next token, by transformers, one prompt at a time."""
    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    tokenizer = BertTokenizer.from_pretrained(str(folder))
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    scores = []
    for document in DOCUMENTS:
        prompt = (
            template.replace("{instruction}", instruction)
            .replace("{query}", QUERY)
            .replace("{document}", document)
        )
        with torch.no_grad():
            logits = model(**tokenizer(prompt, return_tensors="pt")).logits[0, -1]
        scores.append(float(torch.stack([logits[no], logits[yes]]).softmax(-1)[1]))
    return scores


@pytest.fixture(scope="module")
def server(reranker: Path) -> Iterator[ServerThread]:
    heads = (
        HeadSpec("encode", "encode"),
        HeadSpec("judge", "yesno", reranker),
        HeadSpec("own", "yesno", reranker, {"template": OWN_TEMPLATE}),
    )
    thread = ServerThread(
        Settings(
            model_dir=reranker,
            heads=heads,
            device="cpu",
            runtime="torch",
            allow_unverified_family=True,
            http_port=0,
        )
    )
    yield thread
    thread.stop()


@pytest.mark.parametrize(
    ("head", "template"), [("judge", QWEN3_RERANKER_TEMPLATE), ("own", OWN_TEMPLATE)]
)
def test_rerank_scores_equal_the_formula_on_transformers(
    server: ServerThread, reranker: Path, head: str, template: str
) -> None:
    want = _expected(reranker, template)
    assert max(want) - min(want) > 1e-3  # the documents score apart
    with Client(server.target, max_retries=0) as client:
        ranked = client.rerank(QUERY, DOCUMENTS, head=head)
        got = {d.index: d.score for d in ranked.results}
        np.testing.assert_allclose([got[i] for i in range(len(DOCUMENTS))], want, atol=1e-4, rtol=0)
        assert [d.index for d in ranked.results] == list(np.argsort(want)[::-1])
        # Classify answers both labels' probabilities, the same yes
        classified = client.classify([(QUERY, d) for d in DOCUMENTS], heads=[head])
        yes = [
            {s.label: s.probability for s in c.heads[0].labels}["yes"]
            for c in classified.classifications
        ]
        np.testing.assert_allclose(yes, want, atol=1e-4, rtol=0)
    body = json.dumps({"query": QUERY, "documents": DOCUMENTS, "model": head}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.server.http.port}/v1/rerank",
        data=body,
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        results = json.loads(answer.read())["results"]
    by_index = {r["index"]: r["relevance_score"] for r in results}
    np.testing.assert_allclose(
        [by_index[i] for i in range(len(DOCUMENTS))], want, atol=1e-4, rtol=0
    )


def test_a_long_document_is_cut_at_its_end_and_the_template_kept(
    server: ServerThread, reranker: Path
) -> None:
    """A prompt past the window is refused naming text_pair, or with truncate cut as
    Qwen3-Reranker's own code cuts it: the document's last tokens go, the template's last
    words (after which the judgement is read) stay. Equal to transformers on those ids."""
    from headserve.client import InvalidArgumentError

    long_document = " ".join(DOCUMENTS * 12)
    model = AutoModelForCausalLM.from_pretrained(str(reranker)).eval()
    tokenizer = BertTokenizer.from_pretrained(str(reranker))
    before, after = OWN_TEMPLATE.replace("{query}", QUERY).split("{document}")
    pieces = [
        tokenizer(p, add_special_tokens=False).input_ids for p in (before, long_document, after)
    ]
    room = 256 - 2 - len(pieces[0]) - len(pieces[2])  # [CLS] and [SEP] too
    assert len(pieces[1]) > room > 0
    ids = [
        tokenizer.cls_token_id,
        *pieces[0],
        *pieces[1][:room],
        *pieces[2],
        tokenizer.sep_token_id,
    ]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    want = float(torch.stack([logits[no], logits[yes]]).softmax(-1)[1])
    with Client(server.target, max_retries=0) as client:
        with pytest.raises(InvalidArgumentError) as refused:
            client.rerank(QUERY, [DOCUMENTS[0], long_document], head="own")
        assert "documents[1]" in str(refused.value) and "options.truncate" in str(refused.value)
        ranked = client.rerank(QUERY, [DOCUMENTS[0], long_document], head="own", truncate=True)
    got = {d.index: d.score for d in ranked.results}
    np.testing.assert_allclose(got[1], want, atol=1e-4, rtol=0)


def test_a_single_text_is_refused_naming_text_pair(server: ServerThread) -> None:
    from headserve.client import InvalidArgumentError

    with (
        Client(server.target, max_retries=0) as client,
        pytest.raises(InvalidArgumentError) as refused,
    ):
        client.classify(["no document here"], heads=["judge"])
    assert "text_pair" in str(refused.value)


def test_a_token_not_in_the_vocabulary_refuses_the_start(reranker: Path) -> None:
    heads = (HeadSpec("judge", "yesno", reranker, {"yes": "ja-wohl-token"}),)
    with pytest.raises(HeadsFailed, match="'ja-wohl-token' is not one token"):
        build_core(
            Settings(
                model_dir=reranker,
                heads=heads,
                device="cpu",
                runtime="torch",
                allow_unverified_family=True,
            )
        )
