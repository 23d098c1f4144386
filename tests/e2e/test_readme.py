"""A newcomer's first five minutes: `make serve`, then the README's Python example and its curl
to /v1/embeddings as written.

The server is started as `make serve` starts it (`headserve serve --http-port`: the packaged
model and its heads); only the ports differ, so the examples' addresses are pointed at them.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from serving import CliServer, start_cli_server

pytestmark = pytest.mark.e2e
README = Path(__file__).resolve().parents[2] / "README.md"


def _python_example() -> str:
    section = README.read_text().split("## Call it from Python", 1)[1]
    (code,) = re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], re.DOTALL)
    return code


@pytest.fixture(scope="module")
def default_server() -> Iterator[CliServer]:
    server = start_cli_server(["--http-port", "0"])  # as `make serve`, on free ports
    yield server
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=30)


def test_the_readme_python_example_runs_against_the_default_server(
    default_server: CliServer,
) -> None:
    code = _python_example()
    assert '"localhost:50051"' in code  # the address `make serve` listens on
    code = code.replace('"localhost:50051"', f'"{default_server.target}"')
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert re.fullmatch(r"\(2, 384\) [0-9a-f]{32}", lines[0]), lines
    label, probability = lines[1].split()
    assert label == "positive" and 0.5 < float(probability) <= 1.0
    assert lines[2:] == ["0 (1, 384)", "1 (1, 384)", "(1, 128)", "1 encode", "(64,) positive"]


def test_the_readme_long_document_example_finds_the_chunk_that_answers(
    default_server: CliServer,
) -> None:
    section = README.read_text().split("## Long documents", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    code = code.replace('"localhost:50051"', f'"{default_server.target}"')
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    chunks, shape = run.stdout.splitlines()[0].split(" ", 1)
    assert int(chunks) > 10 and shape == "(384,)"
    tokens, text = run.stdout.splitlines()[1].split(" ", 1)
    assert int(tokens) <= 128 and "__eq__" in text


def test_the_readme_curl_to_v1_embeddings_answers_as_it_shows(default_server: CliServer) -> None:
    section = README.read_text().split("## Call it over HTTP (OpenAI-style)", 1)[1]
    (block,) = re.findall(r"```sh\n(.*?)```", section.split("\n## ", 1)[0], re.DOTALL)
    command = "\n".join(line for line in block.splitlines() if not line.startswith("#"))
    assert "curl" in command and "localhost:8080/v1/embeddings" in command
    (port,) = re.findall(r"OpenAI-style HTTP on port (\d+)", "".join(default_server.log))
    command = command.replace("localhost:8080", f"127.0.0.1:{port}")
    run = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    (data,) = answer["data"]
    assert (answer["object"], answer["model"], data["index"]) == ("list", "encode", 0)
    vector = data["embedding"]
    assert len(vector) == 64 and abs(sum(v * v for v in vector) - 1) < 1e-4  # unit length
    (shown,) = re.findall(r'"usage":(\{[^}]*\})', block)  # the answer the README prints
    assert answer["usage"] == json.loads(shown)
