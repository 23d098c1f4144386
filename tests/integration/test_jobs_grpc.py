"""Batch jobs over the `Jobs` gRPC service, driven by headserve's own client (sync and async)
on a server with --jobs-dir and no HTTP endpoint: upload in chunks, create, watch, list,
download, cancel, delete. A job's answers equal the unary calls'; refusals name their field;
a server without --jobs-dir answers every Jobs RPC UNIMPLEMENTED (JOBS_OFF), on gRPC and on
its HTTP endpoint. (The same jobs through OpenAI's Files and Batch APIs: test_jobs.py.)"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format
from json_values import assert_close
from serving import ServerThread

from headserve.client import (
    AsyncClient,
    Client,
    InvalidArgumentError,
    Job,
    NotFoundError,
    UnauthenticatedError,
    UnimplementedError,
)
from headserve.plugins.contract import HeadSpec
from headserve.server.calls.security import Security
from headserve.server.loading import Settings
from headserve.v1 import classifier_pb2, classifier_pb2_grpc, jobs_pb2, jobs_pb2_grpc

MAX_JOB_BYTES = 256 * 1024
TEXTS = [f"Line {i}: a server answers a job's requests in the bulk class." for i in range(30)]
CLASSIFY = "/headserve.v1.Classifier/Classify"
TOKEN = "a-callers-token"


@pytest.fixture(scope="module")
def server(bert, tmp_path_factory) -> Iterator[ServerThread]:  # type: ignore[no-untyped-def]
    settings = Settings(
        model_dir=bert.backbone,
        heads=(HeadSpec("classify", "classify", bert.classify),),
        device="cpu",
        jobs_dir=tmp_path_factory.mktemp("jobs"),
        max_job_bytes=MAX_JOB_BYTES,
    )
    thread = ServerThread(settings)
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def client(server: ServerThread) -> Iterator[Client]:
    with Client(server.target, timeout=60) as made:
        yield made


def _classify(i: int) -> dict[str, Any]:
    return {"items": [{"text": TEXTS[i]}, {"text": TEXTS[i + 1]}], "options": {"top_k": 2}}


def _write(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _finished(client: Client, job_id: str, seconds: float = 120) -> Job:
    deadline = time.monotonic() + seconds
    while not (job := client.get_job(job_id)).finished:
        assert time.monotonic() < deadline, f"job still {job.status}"
        time.sleep(0.1)
    return job


def test_a_job_over_grpc_answers_as_the_unary_calls(
    server: ServerThread, client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [
        {"custom_id": f"c{i}", "method": "POST", "url": CLASSIFY, "body": _classify(i)}
        for i in range(20)
    ]
    lines.append({"custom_id": "bad", "url": CLASSIFY, "body": {"items": [{"txt": 1}]}})
    # small upload messages: the file crosses many of them, lines cut anywhere
    monkeypatch.setattr("headserve.client._jobs.UPLOAD_CHUNK", 97)
    uploaded = client.upload_job_file(_write(tmp_path / "in.jsonl", lines), filename="nightly")
    assert (uploaded.filename, uploaded.purpose) == ("nightly", "batch")
    assert uploaded.bytes == (tmp_path / "in.jsonl").stat().st_size
    assert client.get_job_file(uploaded.id) == uploaded

    job = client.create_job(uploaded.id, CLASSIFY, metadata={"run": "nightly"})
    assert job.status in ("validating", "in_progress") and job.metadata == {"run": "nightly"}
    assert job.output_file_id is None  # until it has finished
    job = _finished(client, job.id)
    assert job.status == "completed", job.errors
    assert (job.total, job.completed, job.failed) == (21, 20, 1)
    assert job.finished_at is not None and job.finished_at >= job.created_at

    assert job.output_file_id is not None and job.error_file_id is not None
    out = client.download_job_file(job.output_file_id, tmp_path / "out.jsonl")
    records = {r["custom_id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(records) == {f"c{i}" for i in range(20)}
    assert not list(tmp_path.glob("*.part"))
    with grpc.insecure_channel(server.target) as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        for i in (0, 7, 19):
            request = json_format.ParseDict(_classify(i), classifier_pb2.ClassifyRequest())
            want = json_format.MessageToDict(
                stub.Classify(request), preserving_proto_field_name=True
            )
            assert_close(records[f"c{i}"]["response"]["body"], want, ("timing",))
    errors = client.download_job_file(job.error_file_id, tmp_path / "errors.jsonl")
    (failed,) = map(json.loads, errors.read_text().splitlines())
    assert failed["custom_id"] == "bad" and failed["response"]["status_code"] == 400

    # the same jobs and files through the async client
    async def listed() -> tuple[Any, Any, Any]:
        async with AsyncClient(server.target) as aclient:
            return (
                await aclient.list_jobs(limit=1),
                await aclient.list_job_files(purpose="batch_output"),
                await aclient.get_job(job.id),
            )

    newest, outputs, again = asyncio.run(listed())
    assert [j.id for j in newest] == [job.id] and again == job
    assert {job.output_file_id, job.error_file_id} <= {f.id for f in outputs}


def test_a_download_resumes_and_files_are_deleted(
    server: ServerThread, client: Client, tmp_path: Path
) -> None:
    line = {"custom_id": "one", "url": CLASSIFY, "body": _classify(0)}
    uploaded = client.upload_job_file(_write(tmp_path / "one.jsonl", [line]))
    data = (tmp_path / "one.jsonl").read_bytes()
    with grpc.insecure_channel(server.target) as channel:
        stub = jobs_pb2_grpc.JobsStub(channel)
        rest = stub.DownloadFile(jobs_pb2.DownloadFileRequest(file_id=uploaded.id, offset=5))
        assert b"".join(r.data for r in rest) == data[5:]
        with pytest.raises(grpc.RpcError) as beyond:
            list(stub.DownloadFile(jobs_pb2.DownloadFileRequest(file_id=uploaded.id, offset=-1)))
        assert beyond.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert client.delete_job_file(uploaded.id) is True
    with pytest.raises(NotFoundError, match="no file"):
        client.get_job_file(uploaded.id)
    with pytest.raises(NotFoundError, match="no file"):
        client.download_job_file(uploaded.id, tmp_path / "gone.jsonl")
    assert not (tmp_path / "gone.jsonl").exists() and not list(tmp_path.glob("*.part"))


def test_refusals_name_their_field(client: Client, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("plain text, not JSONL\n")
    with pytest.raises(InvalidArgumentError, match="JSONL") as not_jsonl:
        client.upload_job_file(bad)
    assert not_jsonl.value.field == "file"
    bad.write_text(json.dumps({"custom_id": "a", "url": "/v1/chat/completions"}) + "\n")
    with pytest.raises(InvalidArgumentError, match="line 1 names url"):
        client.upload_job_file(bad)
    bad.write_text((json.dumps({"custom_id": "a", "url": CLASSIFY, "body": {}}) + "\n") * 5000)
    with pytest.raises(InvalidArgumentError, match="--max-job-bytes") as large:
        client.upload_job_file(bad)
    assert large.value.field == "file"
    good = _write(tmp_path / "good.jsonl", [{"custom_id": "a", "url": CLASSIFY, "body": {}}])
    uploaded = client.upload_job_file(good)
    with pytest.raises(InvalidArgumentError) as endpoint:
        client.create_job(uploaded.id, "/v1/chat/completions")
    assert endpoint.value.field == "endpoint"
    with pytest.raises(InvalidArgumentError) as missing:
        client.create_job("file-nope", CLASSIFY)
    assert missing.value.field == "input_file_id"
    with pytest.raises(InvalidArgumentError) as limit:
        client.list_jobs(limit=101)
    assert limit.value.field == "limit"
    with pytest.raises(NotFoundError, match="no batch"):
        client.get_job("batch_nope")
    with pytest.raises(NotFoundError, match="no batch"):
        client.cancel_job("batch_nope")


def test_a_cancelled_job_keeps_what_it_answered(client: Client, tmp_path: Path) -> None:
    lines = [{"custom_id": f"x{i}", "url": CLASSIFY, "body": _classify(i % 20)} for i in range(600)]
    uploaded = client.upload_job_file(_write(tmp_path / "many.jsonl", lines))
    job = client.create_job(uploaded.id, CLASSIFY)
    assert client.cancel_job(job.id).status in ("cancelling", "cancelled")
    job = _finished(client, job.id)
    assert job.status == "cancelled" and job.completed < job.total == 600
    assert job.output_file_id is not None
    out = client.download_job_file(job.output_file_id, tmp_path / "partial.jsonl")
    assert len(out.read_text().splitlines()) == job.completed


def test_a_server_without_a_jobs_dir_answers_jobs_off(bert) -> None:  # type: ignore[no-untyped-def]
    """...to a caller it admits: the Jobs RPCs take the server's tokens as every call does."""
    settings = Settings(
        model_dir=bert.backbone, device="cpu", http_port=0, security=Security(tokens=(TOKEN,))
    )
    thread = ServerThread(settings)
    try:
        with Client(thread.target, max_retries=0) as stranger:
            with pytest.raises(UnauthenticatedError):
                stranger.list_jobs()
            with pytest.raises(UnauthenticatedError):
                stranger.download_job_file("file-x", "/tmp/never-written")
        with Client(thread.target, token=TOKEN) as client:
            with pytest.raises(UnimplementedError, match="--jobs-dir") as off:
                client.list_jobs()
            assert off.value.reason == "JOBS_OFF"
            with pytest.raises(UnimplementedError, match="--jobs-dir"):
                client.download_job_file("file-x", "/tmp/never-written")
        assert thread.server.http is not None
        answer = httpx.get(
            f"http://127.0.0.1:{thread.server.http.port}/v1/batches",
            headers={"authorization": f"Bearer {TOKEN}"},
        )
        assert answer.status_code == 501 and "--jobs-dir" in answer.text
    finally:
        thread.stop()
