"""Batch jobs (--jobs-dir) driven by the official `openai` package, as its users drive OpenAI's
Files and Batch APIs: upload, create, watch, list, download, cancel. A job's answers equal the
unary calls' (the HTTP route's JSON, or the RPC's response in proto3 JSON); bad lines fail
alone, in the error file, with their custom_id and reason; a bad upload is refused whole.
(A server killed mid-job, a full disk and a second server on the same folder:
tests/e2e/test_jobs_faults.py.)"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import openai
import pytest
from google.protobuf import json_format
from json_values import assert_close
from serving import ServerThread

from headserve.plugins.contract import HeadSpec
from headserve.server.core.limits import RequestLimits
from headserve.server.loading import Settings
from headserve.v1 import classifier_pb2, classifier_pb2_grpc, heads_pb2, heads_pb2_grpc

MAX_JOB_BYTES = 64 * 1024
TEXTS = [f"Sentence {i}: the quick brown fox jumps over the lazy dog." for i in range(40)]


@pytest.fixture(scope="module")
def server(bert, tmp_path_factory) -> Iterator[ServerThread]:  # type: ignore[no-untyped-def]
    settings = Settings(
        model_dir=bert.backbone,
        heads=(
            HeadSpec("encode", "encode", None, {"pooling": "mean"}),
            HeadSpec("classify", "classify", bert.classify),
        ),
        device="cpu",
        http_port=0,
        jobs_dir=tmp_path_factory.mktemp("jobs"),
        max_job_bytes=MAX_JOB_BYTES,
        request_limits=RequestLimits(max_request_items=8),
    )
    thread = ServerThread(settings)
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def client(server: ServerThread) -> openai.OpenAI:
    assert server.server.http is not None
    return openai.OpenAI(
        base_url=f"http://127.0.0.1:{server.server.http.port}/v1", api_key="none", max_retries=0
    )


def _line(custom_id: str, url: str, body: Any) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def _upload(client: openai.OpenAI, tmp_path: Path, lines: list[str]) -> str:
    path = tmp_path / "input.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode())
    with path.open("rb") as f:
        return client.files.create(file=f, purpose="batch").id


def _finished(client: openai.OpenAI, batch_id: str, seconds: float = 120) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled"):
            return batch
        assert time.monotonic() < deadline, f"job still {batch.status}: {batch.request_counts}"
        time.sleep(0.1)


def _records(client: openai.OpenAI, file_id: str | None) -> dict[str, dict[str, Any]]:
    """A job's output or error file, by custom_id (None: lines that had none, by id)."""
    assert file_id is not None
    text = client.files.content(file_id).text
    assert text == "" or text.endswith("\n")
    records = [json.loads(line) for line in text.splitlines()]
    by_id = {r["custom_id"] or r["id"]: r for r in records}
    assert len(by_id) == len(records), "a line answered twice"
    return by_id


def test_a_job_driven_by_the_openai_package_answers_as_the_unary_calls(
    server: ServerThread, client: openai.OpenAI, tmp_path: Path
) -> None:
    classify = {
        "items": [{"text": TEXTS[0]}, {"text": TEXTS[1]}],
        "options": {"heads": ["classify"]},
    }
    run_heads = {
        "items": [{"text": TEXTS[2]}],
        "heads": [{"head": "encode"}, {"head": "classify"}],
    }
    good = [
        *(_line(f"embed-{i}", "/v1/embeddings", {"input": TEXTS[i : i + 3]}) for i in range(12)),
        _line("rerank", "/v1/rerank", {"query": TEXTS[0], "documents": TEXTS[:5]}),
        _line("classify", "/headserve.v1.Classifier/Classify", classify),
        _line("run-heads", "/headserve.v1.Heads/RunHeads", run_heads),
    ]
    bad = {
        "broken": "{not json",
        "no-id": json.dumps({"method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}}),
        "duplicate": _line("embed-0", "/v1/embeddings", {"input": "the same id again"}),
        "too-many": _line("too-many", "/v1/embeddings", {"input": TEXTS[:9]}),  # limit: 8
        "bad-body": _line("bad-body", "/headserve.v1.Classifier/Classify", {"itemz": []}),
        "empty": _line("empty", "/v1/embeddings", {"input": []}),
    }
    # a raw U+2028 inside a JSON string is no line end (str.splitlines would cut there)
    separator = json.dumps(
        {"custom_id": "sep", "url": "/v1/embeddings", "body": {"input": "a\u2028b"}},
        ensure_ascii=False,
    )
    good.append(separator)
    file_id = _upload(client, tmp_path, [*good[:6], *bad.values(), *good[6:]])
    assert client.files.retrieve(file_id).purpose == "batch"
    batch = client.batches.create(
        input_file_id=file_id,
        endpoint="/v1/embeddings",
        completion_window="24h",
        metadata={"run": "nightly"},
    )
    assert batch.status in ("validating", "in_progress") and batch.metadata == {"run": "nightly"}
    batch = _finished(client, batch.id)
    assert batch.status == "completed", batch.errors
    counts = batch.request_counts
    assert counts is not None
    assert (counts.total, counts.completed, counts.failed) == (
        len(good) + len(bad),
        len(good),
        len(bad),
    )
    outputs = _records(client, batch.output_file_id)
    errors = _records(client, batch.error_file_id)
    assert set(outputs) == {json.loads(line)["custom_id"] for line in good}
    for record in outputs.values():
        assert record["response"]["status_code"] == 200 and record["error"] is None

    # the answers: what the unary calls give
    for i in range(12):
        unary = client.embeddings.create(model="encode", input=TEXTS[i : i + 3])
        served = outputs[f"embed-{i}"]["response"]["body"]["data"]
        np.testing.assert_allclose(
            [d["embedding"] for d in served], [d.embedding for d in unary.data], atol=1e-6
        )
    with grpc.insecure_channel(server.target) as channel:
        request = classifier_pb2.ClassifyRequest()
        json_format.ParseDict(classify, request)
        want = json_format.MessageToDict(
            classifier_pb2_grpc.ClassifierStub(channel).Classify(request),
            preserving_proto_field_name=True,
        )
        ran = heads_pb2.RunHeadsRequest()
        json_format.ParseDict(run_heads, ran)
        want_heads = json_format.MessageToDict(
            heads_pb2_grpc.HeadsStub(channel).RunHeads(ran), preserving_proto_field_name=True
        )
    assert_close(outputs["classify"]["response"]["body"], want, ("timing",))
    assert_close(outputs["run-heads"]["response"]["body"], want_heads, ("timing",))
    ranked = outputs["rerank"]["response"]["body"]["results"]
    assert sorted(r["index"] for r in ranked) == list(range(5)) and ranked[0]["index"] == 0

    # the bad lines, each alone, named
    by_line = {record["error"]["line"]: record for record in errors.values() if record["error"]}
    assert "is not JSON" in by_line[7]["error"]["message"]
    assert "no custom_id" in by_line[8]["error"]["message"]
    assert errors["embed-0"]["error"]["code"] == "duplicate_custom_id"  # the second line only
    too_many = errors["too-many"]["response"]
    assert too_many["status_code"] == 413 and "input" in too_many["body"]["error"]["message"]
    bad_body = errors["bad-body"]["response"]
    assert bad_body["status_code"] == 400 and "itemz" in bad_body["body"]["error"]["message"]
    assert errors["empty"]["response"]["status_code"] == 400

    # listed, and the files as files
    assert batch.id in [b.id for b in client.batches.list()]
    listed = {f.id: f for f in client.files.list()}
    assert {file_id, batch.output_file_id, batch.error_file_id} <= set(listed)
    # a job's calls are bulk work: their rows waited in the bulk class
    registry = server.server.pipeline.metrics.registry
    assert registry.get_sample_value("headserve_queue_wait_seconds_count", {"priority": "bulk"})
    # and their progress
    lines = "headserve_job_lines_total"
    assert registry.get_sample_value(lines, {"outcome": "completed"}) == len(good)
    assert registry.get_sample_value(lines, {"outcome": "failed"}) == len(bad)
    assert registry.get_sample_value("headserve_job_lines_pending") == 0


def test_a_bad_upload_is_refused_whole(client: openai.OpenAI, tmp_path: Path) -> None:
    def upload(data: bytes, purpose: str = "batch") -> Any:
        path = tmp_path / "upload.jsonl"
        path.write_bytes(data)
        with path.open("rb") as f:
            return client.files.create(file=f, purpose=purpose)  # type: ignore[arg-type]

    with pytest.raises(openai.BadRequestError, match="not UTF-8"):
        upload(b'{"custom_id": "a", "url": "/v1/embeddings", "body": {"input": "\xff"}}\n')
    with pytest.raises(openai.BadRequestError, match="no line that is a JSON object"):
        upload(b'[{"custom_id": "a"}]\nplain text\n')
    with pytest.raises(openai.BadRequestError, match="line 2 names url '/v1/chat/completions'"):
        upload(
            (
                _line("a", "/v1/embeddings", {}) + "\n" + _line("b", "/v1/chat/completions", {})
            ).encode()
        )
    with pytest.raises(openai.APIStatusError, match="--max-job-bytes") as large:
        upload(("\n".join([_line("x", "/v1/embeddings", {"input": "y" * 100})] * 700)).encode())
    assert large.value.status_code == 413
    with pytest.raises(openai.BadRequestError, match="purpose"):
        upload(_line("a", "/v1/embeddings", {}).encode(), purpose="fine-tune")
    with pytest.raises(openai.NotFoundError, match="no batch"):
        client.batches.retrieve("batch_nope")
    with pytest.raises(openai.NotFoundError, match="no file"):
        client.files.content("file-nope")
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        file_id = upload(_line("a", "/v1/embeddings", {"input": "x"}).encode()).id
        client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )


def test_a_cancelled_job_stops_and_keeps_what_it_answered(
    client: openai.OpenAI, tmp_path: Path
) -> None:
    lines = [_line(f"c{i}", "/v1/embeddings", {"input": [f"w{i}"] * 8}) for i in range(300)]
    file_id = _upload(client, tmp_path, lines)
    batch = client.batches.create(
        input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h"
    )
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    batch = _finished(client, batch.id)
    assert batch.status == "cancelled" and batch.cancelled_at is not None
    counts = batch.request_counts
    assert counts is not None and counts.completed < counts.total == 300
    assert len(_records(client, batch.output_file_id)) == counts.completed
    deleted = client.files.delete(file_id)
    assert deleted.deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(file_id)
