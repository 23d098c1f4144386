"""The CLI's log lines (text or JSON, an access line per call) and its failed starts: one clear
line, exit status 1, no traceback."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from serving import CliServer, start_cli_server

from headserve.client import Batch, Client

pytestmark = pytest.mark.e2e
HEADSERVE = str(Path(sys.executable).parent / "headserve")


def test_json_logs_are_one_object_per_line_with_an_access_line_per_call() -> None:
    server = start_cli_server(["--plugins", "encode", "--log-format", "json"])
    try:
        with Client(server.target, metadata=[("x-request-id", "json-test-1")]) as client:
            result = client.encode(["A man is playing a guitar.", "Someone plays."])
            outcomes = list(client.encode_stream([Batch(["one"], id="m1")]))
        text = _stopped(server)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    lines = [json.loads(line) for line in text.splitlines()]  # every line is JSON
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    (call,) = [
        line for line in lines if line["logger"] == "headserve.access" and line["message"] == "call"
    ]
    assert call["request_id"] == "json-test-1" == result.request_id
    assert call["rpc"] == "headserve.v1.Encoder/Encode" and call["code"] == "OK"
    assert call["items"] == 2 and call["input_tokens"] == result.usage.input_tokens
    assert call["queue_ms"] >= 0 and call["inference_ms"] > 0 and call["ms"] > 0
    assert call["peer"].startswith("ipv4:127.0.0.1:")
    streamed = [line for line in lines if line.get("rpc") == "headserve.v1.Encoder/EncodeStream"]
    assert [line["message"] for line in streamed] == ["stream message", "stream"]
    assert {line["request_id"] for line in streamed} == {outcomes[0].request_id}
    assert streamed[0]["message_id"] == "m1"
    assert any(line["message"] == "stopped" for line in lines)


def test_text_logs_name_the_request_id_and_access_log_off_silences_calls() -> None:
    server = start_cli_server(["--plugins", "encode", "--access-log", "off"])
    try:
        with Client(server.target) as client:
            result = client.encode(["quiet"])
        text = _stopped(server)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    assert result.request_id is not None
    assert "headserve.access" not in text and result.request_id not in text
    assert " INFO headserve.server.app: stopped" in text  # text lines, not JSON


def _stopped(server: CliServer) -> str:
    """Everything the server logged, once SIGTERM has stopped it cleanly."""
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0
    return server.output()


def _failed_start(*args: str) -> list[str]:
    run = subprocess.run(
        [HEADSERVE, "serve", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr and "Exception ignored" not in run.stderr, run.stderr
    lines = run.stderr.splitlines()
    errors = [line for line in lines if " INFO " not in line]
    assert len(errors) == 1, run.stderr  # one line says why...
    assert errors == lines[-1:], run.stderr  # ...and it is the last
    return errors


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["{tmp}"], "{tmp} is not a Hugging Face checkpoint folder (no config.json)"),
        (["--head", "sentiment"], "--head 'sentiment': expected NAME=PLUGIN[:SOURCE]"),
        (["--head", "a=encode", "--head", "a=encode"], "head name 'a' configured twice"),
        (["--device", "cuda"], "--device cuda: this torch sees no CUDA device"),
        (["--config", "{tmp}/heads.toml"], "--config {tmp}/heads.toml: No such file"),
        (["--max-streams", "0"], "--max-streams must be at least 1"),
        (["--max-concurrent-calls", "70"], "--max-streams (64) + --max-health-watches (16) must"),
        (["--require-head", "nope"], "nope"),
    ],
    ids=[
        "not-a-checkpoint",
        "bad-head-spec",
        "duplicate-head",
        "no-cuda",
        "no-config",
        "bad-limit",
        "budgets-leave-no-room",
        "required-head-missing",
    ],
)
def test_a_start_that_fails_ends_with_one_clear_line(
    args: list[str], why: str, tmp_path: Path
) -> None:
    (line,) = _failed_start("--port", "0", *(a.format(tmp=tmp_path) for a in args))
    assert "CRITICAL headserve: cannot start: " in line
    assert why.format(tmp=tmp_path) in line


def test_a_port_in_use_ends_with_one_clear_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (line,) = _failed_start("--port", str(port))
    assert f"cannot start: cannot listen on 127.0.0.1:{port}: the port is in use" in line


def test_an_http_port_in_use_ends_with_one_clear_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (line,) = _failed_start("--port", "0", "--http-port", str(port))
    assert f"cannot start: cannot serve HTTP on 127.0.0.1:{port}: the port is in use" in line


def test_a_second_server_on_the_same_port_does_not_start() -> None:
    """gRPC would let it share the port (SO_REUSEPORT) and take half the calls silently."""
    first = start_cli_server(["--plugins", "encode"])
    try:
        port = first.target.rsplit(":", 1)[1]
        (line,) = _failed_start("--port", port, "--plugins", "encode")
        assert "the port is in use" in line
    finally:
        first.proc.kill()
        first.proc.wait(timeout=30)


def test_sigterm_while_the_model_loads_stops_cleanly() -> None:
    """Stopped before it ever served: NOT_SERVING all along, exit 0, no traceback."""
    proc = subprocess.Popen(
        [HEADSERVE, "serve", "--port", "0"],  # the packaged model: loading takes seconds
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:  # the port is open before the model loads
        lines.append(line)
        if "loading the model" in line:
            proc.send_signal(signal.SIGTERM)
            break
    try:
        _, rest = proc.communicate(timeout=120)
    finally:
        proc.kill()
    text = "".join(lines) + rest
    assert proc.returncode == 0, text
    assert "stopping" in text and "stopped" in text, text
    assert "serving on port" not in text  # it never served
    assert "Traceback" not in text and "Exception ignored" not in text, text
