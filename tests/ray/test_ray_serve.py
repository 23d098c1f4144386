"""headserve on Ray Serve: a local Ray (2 CPUs) started and stopped here, two applications (two
backbones) behind one gRPC proxy port, called with the typed client through the proxy: every
RPC, the same answers and the same error details as the standalone server, routing by
application, and bearer tokens checked in the replica."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opentelemetry.sdk.trace import TracerProvider
from otlp import SERVER, Collector
from pictures import gallery, make_vision
from serving import ServerThread

from headserve.client import (
    AsyncClient,
    Batch,
    Client,
    DeadlineExceededError,
    Embedding,
    FailedPreconditionError,
    HeadClassification,
    HeadOutput,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnimplementedError,
)
from headserve.client._retry import retry_delay
from headserve.plugins.contract import HeadSpec
from headserve.server.calls.security import Security
from headserve.server.core.scheduler import Limits
from headserve.server.loading import Settings
from headserve.server.transports import ray_serve

TOKEN = "a-token-of-at-least-16-chars"
ADMIN = "an-admin-token-of-16-chars-or-more"
caller = TracerProvider().get_tracer("the-caller")
TEXTS = ["Alice works in Paris.", "The quick brown fox jumps over the lazy dog."]


@dataclass(frozen=True)
class Endpoint:
    target: str
    settings: dict[str, Settings]  # per application
    collector: Collector  # the OTLP receiver "en"'s replicas export their spans to
    metrics: str  # Ray's metrics export on this node: every replica's headserve metrics


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _settings(family, **kwargs) -> Settings:  # type: ignore[no-untyped-def]
    heads = (
        HeadSpec("encode", "encode", None, {"pooling": "cls"}),
        HeadSpec("mlm", "mlm", family.mlm),
        HeadSpec("classify", "classify", family.classify),
        HeadSpec("qa", "qa", family.qa),
        HeadSpec("ner", "token_classification", family.ner),
        HeadSpec("raw", "classify", family.backbone),  # no classifier weights: untrained
    )
    return Settings(
        model_dir=family.backbone,
        heads=heads,
        device="cpu",
        limits=Limits(workers=1),
        threads=1,
        **kwargs,
    )


@pytest.fixture(scope="module")
def endpoint(families, tmp_path_factory) -> Iterator[Endpoint]:  # type: ignore[no-untyped-def]
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray
    from ray import serve

    port, metrics_port = _free_port(), _free_port()
    collector = Collector()
    os.environ["OTEL_BSP_SCHEDULE_DELAY"] = "50"  # ms between the replicas' span exports
    settings = {
        "en": _settings(families["bert"], otlp_endpoint=collector.endpoint),
        "other": _settings(families["roberta"], security=Security(tokens=(TOKEN,))),
        # the packaged MiniLM on one thread, one worker, a queue of one full batch: a batch
        # of 64 long rows keeps the model busy for a second or more (see the overload test)
        "mini": Settings(
            heads=(HeadSpec("encode", "encode"),),
            device="cpu",
            threads=1,
            limits=Limits(workers=1, max_queue_items=64, max_batch_items=64),
        ),
        # an image backbone (a tiny random ResNet), behind the same proxy, with tokens
        "images": Settings(
            model_dir=make_vision(tmp_path_factory.mktemp("ray-resnet"), "resnet"),
            device="cpu",
            threads=1,
            limits=Limits(workers=1),
            security=Security(tokens=(TOKEN,)),
        ),
        # a tiny BERT whose replicas give each call 1 µs (see the deadline test)
        "late": _settings(families["bert"]),
        # the packaged MiniLM on two replicas sharing a head store: heads changed at run time
        "live": Settings(
            heads=(HeadSpec("encode", "encode"),),
            device="cpu",
            threads=1,
            limits=Limits(workers=1),
            security=Security(admin_tokens=(ADMIN,)),
            head_store=tmp_path_factory.mktemp("ray-store") / "store",
        ),
    }
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _metrics_export_port=metrics_port,
    )
    try:
        ray_serve.start(port, http_options={"port": _free_port()})
        # two backbones with 2 replicas each at half a CPU fill the 2 CPUs; "mini" (for the
        # overload test), "images" and "late" ask for no CPU so that they fit beside them
        apps = (
            ("en", 2, 0.5, None),
            ("other", 2, 0.5, None),
            ("mini", 1, 0, None),
            ("images", 1, 0, None),
            ("late", 1, 0, 1e-6),
            ("live", 2, 0, None),
        )
        for name, replicas, cpus, timeout in apps:
            app = ray_serve.application(
                settings[name],
                timeout,
                num_replicas=replicas,
                ray_actor_options={"num_cpus": cpus},
            )
            serve.run(app, name=name, route_prefix=f"/{name}")
        yield Endpoint(
            f"127.0.0.1:{port}", settings, collector, f"http://127.0.0.1:{metrics_port}/metrics"
        )
    finally:
        serve.shutdown()
        ray.shutdown()
        collector.stop()


def test_every_rpc_answers_through_the_proxy_as_the_standalone_server_does(
    endpoint: Endpoint,
) -> None:
    standalone = ServerThread(endpoint.settings["en"])
    try:
        with (
            Client(endpoint.target, application="en") as ray_client,
            Client(standalone.target) as local,
        ):
            for client in (ray_client, local):
                assert client.model_info().backbone.model_type == "bert"
            got, want = ray_client.encode(TEXTS), local.encode(TEXTS)
            np.testing.assert_allclose(got.vectors, want.vectors, atol=1e-5)
            assert got.request_id is not None  # sent back in the trailing metadata
            masked = [t.replace("Paris", "[MASK]") for t in TEXTS[:1]]
            got_mlm, want_mlm = ray_client.predict_tokens(masked), local.predict_tokens(masked)
            assert [c.token for c in got_mlm[0].masks[0].candidates] == [
                c.token for c in want_mlm[0].masks[0].candidates
            ]
            got_cls, want_cls = ray_client.classify(TEXTS), local.classify(TEXTS)
            assert [c.heads[0].top for c in got_cls] == [c.heads[0].top for c in want_cls]
            question = [("Where does Alice work?", TEXTS[0])]
            got_qa, want_qa = ray_client.answer_question(question), local.answer_question(question)
            assert got_qa[0].best == want_qa[0].best
            got_ner, want_ner = ray_client.run("ner", TEXTS), local.run("ner", TEXTS)
            assert [o.fields for o in got_ner] == [o.fields for o in want_ner]
            got_tok, want_tok = ray_client.tokenize(TEXTS), local.tokenize(TEXTS)
            assert [t.ids for t in got_tok] == [t.ids for t in want_tok]
            got_rank, want_rank = (
                c.rerank("Where does Alice work?", TEXTS, return_documents=True)
                for c in (ray_client, local)
            )
            assert [d.index for d in got_rank] == [d.index for d in want_rank]
            assert (
                got_rank.head == want_rank.head and got_rank[0].document == TEXTS[got_rank[0].index]
            )
            np.testing.assert_allclose(
                [d.score for d in got_rank], [d.score for d in want_rank], atol=1e-5
            )
            many = ["encode", "classify", "ner", "nope"]
            got_many, want_many = (c.run_heads(TEXTS, many) for c in (ray_client, local))
            assert [h.task for h in got_many.heads] == [
                "encode",
                "classify",
                "token_classification",
                "",
            ]
            for got_item, want_item in zip(got_many, want_many, strict=True):
                np.testing.assert_allclose(
                    got_item[0].unwrap_as(Embedding).vector,  # type: ignore[arg-type]
                    want_item[0].unwrap_as(Embedding).vector,  # type: ignore[arg-type]
                    atol=1e-5,
                )
                assert got_item[1].unwrap_as(HeadClassification).top == (
                    want_item[1].unwrap_as(HeadClassification).top
                )
                assert got_item[2].unwrap_as(HeadOutput).fields == (
                    want_item[2].unwrap_as(HeadOutput).fields
                )
                assert isinstance(got_item[3].error, NotFoundError)
            for stream in (
                ray_client.encode_stream,
                ray_client.classify_stream,
                lambda batches: ray_client.run_stream(batches, head="ner"),
                lambda batches: ray_client.run_heads_stream(batches, ["encode", "ner"]),
            ):
                results = list(stream([Batch([t], id=str(i)) for i, t in enumerate(TEXTS)]))
                assert [r.id for r in results] == ["0", "1"]
                assert all(r.error is None for r in results)
            outcomes = list(ray_client.predict_tokens_stream([Batch(masked, id="m")]))
            assert outcomes[0].error is None
            outcomes = list(ray_client.answer_question_stream([Batch(question, id="q")]))
            assert outcomes[0].result is not None and outcomes[0].result[0].best == want_qa[0].best
    finally:
        standalone.stop()


def test_a_bad_request_mid_stream_fails_alone_with_its_details(endpoint: Endpoint) -> None:
    batches = [Batch(["fine"], id="a"), Batch(["ok", "   "], id="b"), Batch(["after"], id="c")]
    with Client(endpoint.target, application="en") as client:
        results = list(client.encode_stream(batches))
    assert [r.id for r in results] == ["a", "b", "c"]
    assert results[0].error is None and results[2].error is None
    error = results[1].error
    assert isinstance(error, InvalidArgumentError)
    assert (error.field, error.item, error.reason) == ("items[1].text", 1, "INVALID_ARGUMENT")


def test_errors_keep_their_code_and_details_through_the_proxy(endpoint: Endpoint) -> None:
    with Client(endpoint.target, application="en", max_retries=0) as client:
        with pytest.raises(InvalidArgumentError) as bad:
            client.encode(["fine", " "])
        assert (bad.value.field, bad.value.item, bad.value.reason) == (
            "items[1].text",
            1,
            "INVALID_ARGUMENT",
        )
        assert bad.value.request_id is not None
        with pytest.raises(NotFoundError) as missing:
            client.classify(TEXTS, heads="nope")
        assert missing.value.reason == "HEAD_NOT_FOUND" and missing.value.metadata["head"] == "nope"
        with pytest.raises(FailedPreconditionError) as untrained:
            client.classify(TEXTS, heads="raw")
        assert untrained.value.reason == "HEAD_NOT_USABLE"
        assert "untrained" in untrained.value.message


def test_batch_jobs_answer_jobs_off_through_the_proxy(endpoint: Endpoint, tmp_path: Path) -> None:
    """Replicas share no job store: every Jobs RPC answers UNIMPLEMENTED (JOBS_OFF), saying
    so, a client-streamed upload and a server-streamed download included."""
    job_input = tmp_path / "in.jsonl"
    job_input.write_text('{"custom_id": "a", "url": "/v1/embeddings", "body": {}}\n')
    with Client(endpoint.target, application="en", max_retries=0) as client:
        for call in (
            client.list_jobs,
            lambda: client.get_job("batch_x"),
            lambda: client.upload_job_file(job_input),
        ):
            with pytest.raises(UnimplementedError, match="standalone") as off:
                call()
            assert off.value.reason == "JOBS_OFF" and off.value.request_id is not None
        # a stream that fails as it opens keeps its code and message through the proxy
        with pytest.raises(UnimplementedError, match="standalone"):
            client.download_job_file("file-x", tmp_path / "never.jsonl")
    assert not (tmp_path / "never.jsonl").exists()


def test_the_application_metadata_picks_the_backbone(endpoint: Endpoint) -> None:
    with Client(endpoint.target, application="other", token=TOKEN) as other:
        assert other.model_info().backbone.model_type == "roberta"
    with Client(endpoint.target, max_retries=0) as nameless:  # two applications: say which
        with pytest.raises(NotFoundError, match="[Aa]pplication"):
            nameless.encode(TEXTS)

    async def main() -> str:
        async with AsyncClient(endpoint.target, application="en") as client:
            return (await client.model_info()).backbone.model_type

    assert asyncio.run(main()) == "bert"


def test_overload_keeps_its_code_and_reason_through_the_proxy(endpoint: Endpoint) -> None:
    """On "mini" (one worker, a queue of 64 rows): calls A and B, 64 long rows each, fill the
    model (about 3 s on one thread here) and the queue; a one-row call C, sent again every
    50 ms while they are answered, finds no room: RESOURCE_EXHAUSTED with reason OVERLOADED,
    as the standalone server answers it. (Should a C get in before B, B is the one refused,
    with the same code and reason: whichever it is, the refusal must keep them.)"""
    long_text = " ".join(["the model reads every one of these words"] * 14)  # ~115 tokens

    async def main() -> list[BaseException]:
        async with AsyncClient(endpoint.target, application="mini", max_retries=0) as client:
            await client.encode(["warm up"])
            # distinct rows: identical ones would be computed once
            first = asyncio.ensure_future(client.encode([f"{i} {long_text}" for i in range(64)]))
            await asyncio.sleep(0.3)  # A first: its rows go to the model
            second = asyncio.ensure_future(client.encode([f"{long_text} {i}" for i in range(64)]))
            refusals: list[BaseException] = []
            deadline = time.monotonic() + 60
            while not refusals and not second.done() and time.monotonic() < deadline:
                try:
                    await client.encode(["one more call"])
                except ResourceExhaustedError as exc:
                    refusals.append(exc)
                await asyncio.sleep(0.05)
            answered = 0
            for outcome in await asyncio.gather(first, second, return_exceptions=True):
                if isinstance(outcome, ResourceExhaustedError):
                    refusals.append(outcome)
                elif isinstance(outcome, BaseException):
                    raise outcome
                else:
                    assert len(outcome) == 64
                    answered += 1
            assert answered >= 1  # A is answered
            return refusals

    refusals = asyncio.run(main())
    assert refusals, "no call was refused while the queue was full"
    for refused in refusals:
        assert isinstance(refused, ResourceExhaustedError)
        assert refused.reason == "OVERLOADED" and "queue full" in refused.message
        assert refused.request_id is not None


def test_a_call_through_the_proxy_has_its_span_access_line_and_metrics(
    endpoint: Endpoint,
) -> None:
    """A call into a replica gets what a standalone server's call gets: a server span
    continuing the caller's trace, with the tree under it; a line on the access log (the
    replica's stderr, in Ray's worker logs); and headserve's per-call metrics, exported by
    Ray's metrics agent, scraped here as Prometheus scrapes it. The call's class of work
    (`x-priority: bulk`) reaches the replica through the proxy."""
    with caller.start_as_current_span("checkout") as parent:
        with Client(endpoint.target, application="en") as client:
            result = client.with_options(priority="bulk").encode(TEXTS)
    assert result.request_id is not None
    trace_id = f"{parent.get_span_context().trace_id:032x}"
    spans = endpoint.collector.wait_for(
        lambda got: sum(s.trace_id == trace_id for s in got) >= 4, timeout=60
    )
    mine = [s for s in spans if s.trace_id == trace_id]
    (rpc,) = [s for s in mine if s.kind == SERVER]
    assert rpc.parent_span_id == f"{parent.get_span_context().span_id:016x}"
    assert rpc.name == "/headserve.v1.Encoder/Encode"
    assert rpc.attributes["headserve.transport"] == "ray"
    assert rpc.attributes["headserve.request_id"] == result.request_id
    assert rpc.attributes["rpc.grpc.status_code"] == 0
    under = {s.name for s in mine if s.parent_span_id == rpc.span_id}
    assert {"prepare", "queue", "backbone", "head encode"} <= under

    line = _access_line(result.request_id)
    assert line["message"] == "call" and line["logger"] == "headserve.access"
    assert line["transport"] == "ray" and line["rpc"] == "headserve.v1.Encoder/Encode"
    assert line["code"] == "OK" and line["items"] == 2 and line["input_tokens"] > 0
    assert line["priority"] == "bulk"

    calls = _scraped(
        endpoint.metrics,
        "ray_headserve_calls_total",
        {
            "transport": "ray",
            "rpc": "headserve.v1.Encoder/Encode",
            "code": "OK",
            "priority": "bulk",
        },
    )
    assert calls >= 1
    seconds = _scraped(
        endpoint.metrics,
        "ray_headserve_call_seconds_count",
        {"transport": "ray", "rpc": "headserve.v1.Encoder/Encode"},
    )
    assert seconds >= 1
    handled = _scraped(
        endpoint.metrics,
        "ray_grpc_server_handled_total",
        {
            "grpc_type": "unary",
            "grpc_service": "headserve.v1.Encoder",
            "grpc_method": "Encode",
            "grpc_code": "OK",
        },
    )
    assert handled >= 1
    assert _scraped(endpoint.metrics, "ray_headserve_batch_rows_count", {}) >= 1


def test_a_replica_bounds_each_call_by_serves_request_timeout(endpoint: Endpoint) -> None:
    """The proxy passes no caller deadline on: a replica's deadline is the request timeout
    its application was given. "late" gives 1 µs, gone before the rows reach the model:
    headserve's own DEADLINE_EXCEEDED (its ErrorInfo, which the proxy's own timeout would not
    carry), counted as rows dropped for their deadline."""
    with Client(endpoint.target, application="late", max_retries=0) as client:
        with pytest.raises(DeadlineExceededError) as failed:
            client.encode(TEXTS)
    assert failed.value.reason == "DEADLINE_EXCEEDED" and failed.value.request_id is not None
    assert "deadline passed" in failed.value.message
    line = _access_line(failed.value.request_id)
    assert line["code"] == "DEADLINE_EXCEEDED" and line["transport"] == "ray"
    dropped = _scraped(endpoint.metrics, "ray_headserve_rows_dropped_total", {"reason": "deadline"})
    assert dropped >= 2


def _access_line(request_id: str, timeout: float = 30) -> dict[str, Any]:
    """The access-log line of the call `request_id`, from the replicas' logs (JSON lines on
    their stderr, which Ray keeps in its session's worker logs)."""
    logs = Path("/tmp/ray/session_latest/logs")
    deadline = time.monotonic() + timeout
    while True:
        for path in logs.glob("worker-*.err"):
            for text in path.read_text(errors="replace").splitlines():
                if request_id in text and '"headserve.access"' in text:
                    line: dict[str, Any] = json.loads(text)
                    if line.get("request_id") == request_id:
                        return line
        assert time.monotonic() < deadline, f"no access line for {request_id} in {logs}"
        time.sleep(0.5)


def _scraped(url: str, name: str, labels: dict[str, str], timeout: float = 60) -> float:
    """The sum of `name`'s samples carrying `labels`, once there is one (Ray exports its
    workers' metrics every few seconds)."""
    from prometheus_client.parser import text_string_to_metric_families

    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        found = [
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        ]
        if found:
            return float(sum(found))
        assert time.monotonic() < deadline, f"{name}{labels} never exported"
        time.sleep(1)


def test_image_items_answer_through_the_proxy_as_the_standalone_server_does(
    endpoint: Endpoint,
) -> None:
    images = gallery()
    standalone = ServerThread(endpoint.settings["images"])
    try:
        with (
            Client(endpoint.target, application="images", token=TOKEN) as ray_client,
            Client(standalone.target, token=TOKEN) as local,
        ):
            assert ray_client.model_info().backbone.modality == "image"
            got, want = ray_client.encode(images), local.encode(images)
            np.testing.assert_allclose(got.vectors, want.vectors, atol=1e-5)
            got_cls, want_cls = ray_client.classify(images), local.classify(images)
            for a, b in zip(got_cls, want_cls, strict=True):
                want_scores = {s.label: s.probability for s in b.heads[0].labels}
                for score in a.heads[0].labels:
                    assert abs(score.probability - want_scores[score.label]) < 1e-5
            batches = [Batch(images[:2], id="a"), Batch([b"not an image"], id="b")]
            results = list(ray_client.classify_stream(batches))
            assert [r.id for r in results] == ["a", "b"] and results[0].error is None
            assert isinstance(results[1].error, InvalidArgumentError)
            assert results[1].error.field == "items[0].image"
        with Client(endpoint.target, application="images", max_retries=0) as anonymous:
            with pytest.raises(UnauthenticatedError):
                anonymous.encode(images[:1])
    finally:
        standalone.stop()


def test_tokens_are_checked_in_the_replica(endpoint: Endpoint) -> None:
    with Client(endpoint.target, application="other", max_retries=0) as anonymous:
        with pytest.raises(UnauthenticatedError):
            anonymous.encode(TEXTS)
    with Client(endpoint.target, application="other", token="wrong-token-but-long-enough") as wrong:
        with pytest.raises(UnauthenticatedError):
            wrong.encode(TEXTS)
    with Client(endpoint.target, application="other", token=TOKEN) as known:
        assert len(known.encode(TEXTS)) == 2


def _replica_pids(application: str) -> set[int]:
    """The processes of an application's replicas (Ray names them ray::ServeReplica:APP:...)."""
    mark = f"ray::ServeReplica:{application}:".encode()
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if f.read().startswith(mark):
                        pids.add(int(entry))
            except OSError:  # gone meanwhile
                continue
    return pids


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _busiest(pids: set[int], seconds: float) -> int:
    """The process that used the most CPU over the next ``seconds``."""
    before = {pid: _cpu_ticks(pid) for pid in pids}
    time.sleep(seconds)
    return max(pids, key=lambda pid: _cpu_ticks(pid) - before[pid])


def change_revision(notes: Path) -> int:
    """The head store's revision (its heads.json beside the replicas' notes)."""
    return int(json.loads((notes.parent / "heads.json").read_text())["revision"])


def test_a_head_change_reaches_every_replica_and_a_new_one(endpoint: Endpoint) -> None:
    """An admin call through the proxy reaches one replica of "live"; the other follows the
    store they share: the answer says both serve the change, and every call after it, on
    either replica, sees it. A replica started later (the killed one brought back) loads the
    store's heads. Without an admin token the call is refused in the replica."""
    from headserve.client import UnauthenticatedError as Unauthenticated
    from headserve.server.config import packaged_sentiment_head
    from headserve.server.core.versions import folder_version

    version = folder_version(packaged_sentiment_head())
    with Client(endpoint.target, application="live", max_retries=0) as anonymous:
        with pytest.raises(Unauthenticated):
            anonymous.load_head("mood", artifact=packaged_sentiment_head())
    with Client(endpoint.target, application="live", token=ADMIN, timeout=120) as admin:
        started = time.monotonic()
        change = admin.load_head("mood", artifact=packaged_sentiment_head())
        assert change.applied == 2 and time.monotonic() - started < 30
    with Client(endpoint.target, application="live") as client:
        for _ in range(20):  # Serve spreads them over both replicas
            assert client.classify(TEXTS, heads=["mood"]).head_versions == {"mood": version}
    notes = endpoint.settings["live"].head_store / "replicas"  # type: ignore[operator]

    def heard() -> dict[str, int]:
        """The replicas that noted the revision they serve in the last 3 s."""
        found = {}
        for path in notes.glob("[!.]*.json"):
            note = json.loads(path.read_text())
            if time.time() - note["at"] < 3:
                found[path.name] = note["revision"]
        return found

    before = heard()
    assert len(before) == 2, before
    pids = _replica_pids("live")
    assert len(pids) == 2
    os.kill(min(pids), signal.SIGKILL)
    deadline = time.monotonic() + 120
    while len(heard()) < 2 or set(heard()) == set(before):  # the new replica, up
        assert time.monotonic() < deadline, "Serve did not bring the replica back"
        time.sleep(0.5)
    assert set(heard().values()) == {change_revision(notes)}  # the store's, on both
    with Client(endpoint.target, application="live", max_retries=10, timeout=120) as client:
        for _ in range(10):  # both replicas serve the stored head
            assert "mood" in {h.name for h in client.model_info().heads}
    with Client(endpoint.target, application="live", token=ADMIN, timeout=120) as admin:
        applied = admin.unload_head("mood").applied
        seen = {p.name: p.read_text() for p in notes.iterdir()}
        assert applied == 2, (time.time(), seen)
    with Client(endpoint.target, application="live") as client:
        for _ in range(10):
            with pytest.raises(NotFoundError):
                client.classify(TEXTS, heads=["mood"])


def test_a_killed_replica_fails_its_stream_cleanly_and_serve_brings_it_back(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs last. A stream runs on one of the two replicas of "other" while eight callers send
    unary calls to both; the stream's replica is killed (SIGKILL). The stream ends with an
    error after answering only ids it was sent; every unary call succeeds, those caught on
    the dead replica through the client's retry (Ray's proxy answers them INTERNAL, without
    headserve's details); Serve starts a new replica."""
    pids = _replica_pids("other")
    assert len(pids) == 2
    retried: list[BaseException] = []

    def counted_retry_delay(error, attempt, max_retries, deadline):  # type: ignore[no-untyped-def]
        delay = retry_delay(error, attempt, max_retries, deadline)
        if delay is not None:
            retried.append(error)
        return delay

    monkeypatch.setattr("headserve.client._retry.retry_delay", counted_retry_delay)
    sent: list[str] = []
    answered: list[str] = []
    stream_error: list[BaseException] = []
    failed: list[BaseException] = []
    unary_errors: list[BaseException] = []
    unary_done = [0]
    killed, stop = threading.Event(), threading.Event()

    def batches() -> Iterator[Batch[str]]:
        for i in range(100_000):
            if killed.is_set() and i > len(answered) + 50:
                return  # the replica is gone: stop feeding a stream that cannot be answered
            sent.append(str(i))
            yield Batch([f"sentence {i}"], id=str(i))
            if i % 10 == 0:
                time.sleep(0.01)

    def stream() -> None:
        with Client(endpoint.target, application="other", token=TOKEN) as client:
            try:
                for result in client.encode_stream(batches()):
                    if result.error is not None:  # a request's own error: not expected here
                        failed.append(result.error)
                    answered.append(result.id)
            except Exception as exc:  # the stream's end, as the client sees it
                stream_error.append(exc)

    def caller(n: int) -> None:
        with Client(endpoint.target, application="other", token=TOKEN, max_retries=10) as client:
            while not stop.is_set():
                try:
                    rows = [f"caller {n} row {i} " * 3 for i in range(64)]
                    assert len(client.encode(rows, timeout=120)) == 64
                    unary_done[0] += 1
                except Exception as exc:
                    unary_errors.append(exc)

    streaming = threading.Thread(target=stream)
    streaming.start()
    deadline = time.monotonic() + 60
    while len(answered) < 20:
        assert time.monotonic() < deadline and streaming.is_alive()
        time.sleep(0.05)
    victim = _busiest(pids, 1.0)  # the stream keeps its replica busy; the other one idles
    # 8 callers of 64-row calls: Serve's router spreads them over both replicas (it sends
    # each to the less busy one), so the killed one is running some when it dies
    callers = [threading.Thread(target=caller, args=(n,)) for n in range(8)]
    for thread in callers:
        thread.start()
    time.sleep(1.0)
    os.kill(victim, signal.SIGKILL)
    killed.set()
    streaming.join(timeout=60)
    time.sleep(3.0)  # calls go on while Serve notices the death and replaces the replica
    stop.set()
    for thread in callers:
        thread.join(timeout=150)
    assert not streaming.is_alive() and not any(t.is_alive() for t in callers)
    assert stream_error, "a stream on the killed replica must end with an error"
    assert not failed
    # nothing answered twice, nothing invented: the answers are the first ids sent, in order
    assert answered == sent[: len(answered)]
    assert not unary_errors, unary_errors
    assert unary_done[0] > 4
    # calls of 64 rows keep both replicas busy, so some are running on the one killed: Ray's
    # proxy answers them INTERNAL without headserve's details, and the client retried them
    assert retried, "no unary call was caught on the dead replica"
    assert all(not e.reason for e in retried), retried  # none of headserve's own errors
    deadline = time.monotonic() + 60
    while len(_replica_pids("other") - {victim}) < 2:
        assert time.monotonic() < deadline, "Serve did not bring the replica back"
        time.sleep(0.5)


def test_replicas_keep_transformers_load_reports_out_of_their_logs(endpoint: Endpoint) -> None:
    """A head loaded without weights is reported untrained by headserve (ModelInfo, its own
    log line), as the standalone server does; transformers' LOAD REPORT tables stay out."""
    with Client(endpoint.target, application="en") as client:
        untrained = [h.name for h in client.model_info().heads if not h.trained]
    assert untrained  # the tiny BERT's heads load without task weights
    logs = list(Path("/tmp/ray/session_latest/logs").glob("worker-*.err"))
    assert logs
    for path in logs:
        assert "LOAD REPORT" not in path.read_text(errors="replace"), path
