"""A head's prepare and finish run off the event loop: one that blocks cannot hold up other
calls or the health checks; a cheap head's run inline only for short text."""

from __future__ import annotations

import sys
import threading
import types
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from fakedist import FakeDist
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serving import ServerThread

from headserve.client import Client
from headserve.plugins.contract import (
    CONTRACT_VERSION,
    Features,
    Head,
    HeadSpec,
    LoadContext,
    Output,
    OutputField,
    Prepared,
    Row,
    RunOptions,
)
from headserve.plugins.tasks import TextItem
from headserve.plugins.text import encode_text
from headserve.server import loading
from headserve.server.core.engine import INLINE_CHARS
from headserve.server.discovery import find_plugins


class _Recorder(Head[TextItem, RunOptions, Output]):
    """Records the thread of each prepare and finish; `gate` holds finish until set."""

    task = "recording"
    outputs = (OutputField("tokens", "value", "integer"),)
    gate: threading.Event | None = None
    threads: list[tuple[str, int]] = []  # noqa: RUF012 (the test reads it)

    def __init__(self, context: LoadContext) -> None:
        self.name = context.spec.name
        self._backbone = context.backbone

    def prepare(self, item: TextItem, options: RunOptions) -> Prepared:
        type(self).threads.append(("prepare", threading.get_ident()))
        row, _ = encode_text(self._backbone, item, truncate=True)
        return Prepared((row,))

    def forward(self, features: Features, rows: Sequence[Row]) -> Sequence[Any]:
        return [len(r.input_ids) for r in rows]

    def finish(self, prepared: Prepared, outputs: Sequence[Any], options: RunOptions) -> Output:
        type(self).threads.append(("finish", threading.get_ident()))
        gate = type(self).gate
        if gate is not None:
            assert gate.wait(30), "the test never opened the gate"
        return Output(fields={"tokens": int(outputs[0])})


class _Cheap(_Recorder):
    task = "recording_cheap"
    cheap = True


class SlowPlugin:
    task = "recording"
    contract_version = CONTRACT_VERSION

    def load(self, context: LoadContext) -> _Recorder:
        return _Recorder(context)


class CheapPlugin:
    task = "recording_cheap"
    contract_version = CONTRACT_VERSION

    def load(self, context: LoadContext) -> _Cheap:
        return _Cheap(context)


@pytest.fixture
def server(bert, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerThread]:  # type: ignore[no-untyped-def]
    module = types.ModuleType("fake_recording_heads")
    module.SlowPlugin = SlowPlugin  # type: ignore[attr-defined]
    module.CheapPlugin = CheapPlugin  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_recording_heads", module)
    dist = FakeDist(
        "fake-recording-heads",
        {
            "recording": "fake_recording_heads:SlowPlugin",
            "recording_cheap": "fake_recording_heads:CheapPlugin",
        },
    )
    real = find_plugins()
    monkeypatch.setattr(loading, "find_plugins", lambda: (*real, *find_plugins([dist])))
    heads = (
        HeadSpec("encode", "encode"),
        HeadSpec("slow", "recording"),
        HeadSpec("cheap", "recording_cheap"),
    )
    _Recorder.threads, _Recorder.gate = [], None
    thread = ServerThread(loading.Settings(model_dir=bert.backbone, heads=heads, device="cpu"))
    try:
        yield thread
    finally:
        _Recorder.gate = None
        thread.stop()


def _loop_thread(server: ServerThread) -> int:
    ident = server.call(_ident())
    return ident


async def _ident() -> int:
    return threading.get_ident()


def test_a_head_blocked_in_finish_holds_up_no_other_call(server: ServerThread) -> None:
    gate = _Recorder.gate = threading.Event()
    with Client(server.target, timeout=30) as client, ThreadPoolExecutor(1) as pool:
        blocked = pool.submit(client.run, "slow", ["held in finish"])
        deadline = 30.0
        while not any(step == "finish" for step, _ in _Recorder.threads):
            assert not blocked.done(), blocked.result()
            deadline -= 0.01
            assert deadline > 0, "finish never started"
            threading.Event().wait(0.01)
        # finish is holding its thread: the loop still answers everyone else
        assert len(client.encode(["another caller"])) == 1
        assert client.model_info().backbone.family == "BERT"
        with grpc.insecure_channel(server.target) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5
            )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert not blocked.done()
        gate.set()
        assert blocked.result(timeout=30)[0]["tokens"] > 0
    loop = _loop_thread(server)
    assert all(ident != loop for _, ident in _Recorder.threads)


def test_a_cheap_head_runs_inline_for_short_text_only(server: ServerThread) -> None:
    loop = _loop_thread(server)
    with Client(server.target, timeout=30) as client:
        client.run("cheap", ["a short text"])
        short = list(_Recorder.threads)
        _Recorder.threads.clear()
        client.run("cheap", ["word " * (INLINE_CHARS // 5 + 1)])
        long = list(_Recorder.threads)
    assert [step for step, _ in short] == ["prepare", "finish"]
    assert all(ident == loop for _, ident in short)
    assert [step for step, _ in long] == ["prepare", "finish"]
    assert all(ident != loop for _, ident in long)


def test_tokenizing_long_text_holds_up_no_other_call(bert, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Tokenize of more than INLINE_CHARS of text runs off the event loop: held there, it
    lets GetModelInfo and a short Tokenize through."""
    thread = ServerThread(
        loading.Settings(
            model_dir=bert.backbone, heads=(HeadSpec("encode", "encode"),), device="cpu"
        )
    )
    try:
        assert thread.core is not None
        gate, held = threading.Event(), threading.Event()
        tokenize = thread.core.tokenize

        def slow(items, **options):  # type: ignore[no-untyped-def]
            if sum(len(i.text) for i in items) > INLINE_CHARS:
                held.set()
                assert gate.wait(30)
            return tokenize(items, **options)

        monkeypatch.setattr(thread.core, "tokenize", slow)
        with Client(thread.target, max_retries=0) as client, ThreadPoolExecutor(1) as pool:
            long = pool.submit(client.tokenize, ["word " * (INLINE_CHARS // 4)], truncate=True)
            assert held.wait(10)
            assert client.model_info(timeout=5).backbone.model_type == "bert"
            assert client.tokenize(["short"], timeout=5)[0].ids
            gate.set()
            assert len(long.result(30)[0].ids) > 1
    finally:
        gate.set()
        thread.stop()
