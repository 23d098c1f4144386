"""The CLI on the packaged default model (all-MiniLM-L6-v2), as a user starts it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from serving import CliServer, start_cli_server

from headserve.client import Client

pytestmark = pytest.mark.e2e
HEADSERVE = str(Path(sys.executable).parent / "headserve")


@pytest.fixture(scope="module")
def default_server() -> Iterator[tuple[subprocess.Popen[str], str, CliServer]]:
    server = start_cli_server([])
    yield server.proc, server.target, server
    if server.proc.poll() is None:
        server.proc.kill()


def test_serve_with_no_arguments_encodes_with_the_default_model(default_server) -> None:  # type: ignore[no-untyped-def]
    _, target, _ = default_server
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service, expected in (
            ("", health_pb2.HealthCheckResponse.SERVING),
            ("headserve.v1.Encoder", health_pb2.HealthCheckResponse.SERVING),
            ("headserve.v1.Models", health_pb2.HealthCheckResponse.SERVING),
            # the packaged sentiment head (make sentiment-head) serves Classify
            ("headserve.v1.Classifier", health_pb2.HealthCheckResponse.SERVING),
            # the packaged model has no trained QA head
            ("headserve.v1.QuestionAnswerer", health_pb2.HealthCheckResponse.NOT_SERVING),
        ):
            assert (
                health.Check(health_pb2.HealthCheckRequest(service=service)).status == expected
            ), service
    with Client(target) as client:
        result = client.encode(
            [
                "A man is playing a guitar.",
                "Someone is playing the guitar.",
                "The stock market fell sharply today.",
            ]
        )
        vectors = np.stack([e.vector for e in result.embeddings])
        assert vectors.shape == (3, 384)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        paraphrase = float(vectors[0] @ vectors[1])
        unrelated = float(vectors[0] @ vectors[2])
        assert paraphrase > unrelated + 0.3, (paraphrase, unrelated)
        info = client.model_info()
        assert info.backbone.hidden_size == 384 and info.backbone.model_type == "bert"
        assert {h.name: h.trained for h in info.heads} == {
            "encode": True,
            "mlm": False,
            "sentiment": True,
            "qa": False,
        }


def test_the_default_server_answers_classify_out_of_the_box(default_server) -> None:  # type: ignore[no-untyped-def]
    _, target, _ = default_server
    reviews = {
        "A wonderful, moving film with a brilliant cast.": "positive",
        "I loved every minute of it; a delight.": "positive",
        "A dull, tedious mess that wastes its actors.": "negative",
        "Boring and badly written; I hated it.": "negative",
    }
    with Client(target) as client:
        result = client.classify(list(reviews))
    for (text, expected), classification in zip(reviews.items(), result.classifications):
        head = classification.heads[0]
        assert head.head == "sentiment"
        assert head.top is not None and head.top.label == expected, (text, head)


def test_sigterm_stops_gracefully_and_the_log_says_what_was_loaded(default_server) -> None:  # type: ignore[no-untyped-def]
    proc, _, server = default_server
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    text = server.output()
    assert re.search(r"backbone .* loaded on cpu as float32 in [\d.]+s", text), text
    assert "head encode: encode" in text and "stopped" in text
    assert "(uvloop event loop)" in text  # the default where uvloop is installed (it is here)


def test_the_plain_asyncio_loop_serves_and_drains_too() -> None:
    server = start_cli_server(["--event-loop", "asyncio", "--plugins", "encode"])
    try:
        with Client(server.target) as client:
            result = client.encode(["A man is playing a guitar."])
        assert len(result.embeddings[0].vector) == 384
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=30) == 0
        text = server.output()
        assert "(asyncio event loop)" in text and "stopped" in text
    finally:
        if server.proc.poll() is None:
            server.proc.kill()


def test_the_metrics_endpoint_counts_what_the_model_computed() -> None:
    server = start_cli_server(["--plugins", "encode", "--workers", "1", "--metrics-port", "0"])
    try:
        (url,) = re.findall(r"metrics on (http://127\.0\.0\.1:\d+/metrics)", "".join(server.log))
        texts = ["A man is playing a guitar.", "Someone plays.", "The stock market fell."]
        with Client(server.target) as client:
            client.encode(texts)
            client.encode(["One more sentence, alone."])
            tokens = sum(len(t.ids) for t in client.tokenize([*texts, "One more sentence, alone."]))
        with urllib.request.urlopen(url, timeout=10) as reply:
            body = reply.read().decode()
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body)
            for s in family.samples
        }

        def value(name: str, **labels: str) -> float:
            return samples[(name, tuple(sorted(labels.items())))]

        assert value("headserve_batch_rows_sum") == 4
        assert 1 <= value("headserve_batch_rows_count") <= 2  # the second call's own batch
        assert value("headserve_batch_tokens_sum") == tokens
        assert value("headserve_model_cpu_seconds_total") > 0
        assert value("headserve_model_workers") == 1
        assert value("headserve_queue_rows") == 0 and value("headserve_batches_running") == 0
        assert value("headserve_calls_refused_total", priority="interactive") == 0
        assert value("process_resident_memory_bytes") > 100e6  # the model is in there
        # the loop is watched: a 20 ms timer, running from before the server said SERVING
        deadline = time.monotonic() + 10
        while not _scraped(url, "headserve_event_loop_lag_seconds_count"):
            assert time.monotonic() < deadline, "the event loop's lag is not observed"
            time.sleep(0.05)
    finally:
        server.proc.kill()


def test_info_prints_what_would_be_served() -> None:
    run = subprocess.run(
        [
            HEADSERVE,
            "info",
            "--head",
            "enc=encode",
            "--head",
            "mlm=mlm",
            "--head",
            "bogus=no-such-plugin",
            "--allow-failed-heads",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    info = json.loads(run.stdout)
    assert info["backbone"]["hiddenSize"] == 384
    # an untrained head says so, false fields included
    assert [(h["name"], h["trained"], h["usable"]) for h in info["heads"]] == [
        ("enc", True, True),
        ("mlm", False, False),
    ]
    assert info["failedPlugins"][0]["plugin"] == "bogus"
    assert "no plugin 'no-such-plugin'" in info["failedPlugins"][0]["reason"]


def test_info_reports_the_int8_runtime(tmp_path: Path) -> None:
    run = subprocess.run(
        [HEADSERVE, "info", "--head", "enc=encode", "--quantize", "int8", "--runtime", "onnx"],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)},  # the export and int8 files
    )
    assert run.returncode == 0, run.stderr
    runtime = json.loads(run.stdout)["backbone"]["runtime"]
    assert runtime.startswith("onnxruntime") and "int8" in runtime
    assert len(list((tmp_path / "headserve" / "onnx").glob("*-int8.onnx"))) == 1


def test_quantize_with_the_torch_runtime_stops_the_server_saying_why() -> None:
    run = subprocess.run(
        [HEADSERVE, "info", "--quantize", "int8", "--runtime", "torch"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0 and "--quantize int8 runs on ONNX Runtime" in run.stderr


def test_duplicate_head_names_stop_the_server_naming_both() -> None:
    run = subprocess.run(
        [HEADSERVE, "info", "--head", "x=classify:/a", "--head", "x=classify:/b"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    assert "/a" in run.stderr and "/b" in run.stderr


def _scraped(url: str, name: str) -> float:
    """The value of the unlabelled sample `name` that `url` shows now (0 if none)."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        body = reply.read().decode()
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return float(sample.value)
    return 0.0


def test_ctrl_c_while_loading_stops_without_serving() -> None:
    proc = subprocess.Popen([HEADSERVE, "serve", "--port", "0"], stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:  # the port is open and the model is loading
        if "loading the model" in line:
            break
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 0
    text = proc.stderr.read()
    assert "stopped while loading" in text and "stopped" in text
    assert "ready:" not in text and "serving on port" not in text
    assert "Traceback" not in text and "never retrieved" not in text, text
