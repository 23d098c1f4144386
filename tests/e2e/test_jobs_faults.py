"""Batch jobs from outside, on `headserve serve` processes: one killed with SIGKILL mid-job
resumes it after its restart, and its output has every line exactly once; a second server on
the same --jobs-dir is refused; a disk that fills while results are written fails the job
with the reason, leaves no partial line, and the server goes on serving; and the `headserve
jobs` commands submit, watch, list and fetch a job."""

from __future__ import annotations

import json
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from serving import CliServer, start_cli_server

FILE_LIMIT = 256 * 1024  # RLIMIT_FSIZE of the server whose disk "fills"


def _start(bert: Any, jobs: Path, **kwargs: Any) -> tuple[CliServer, openai.OpenAI]:
    args = [str(bert.backbone), "--head", "encode=encode", "--device", "cpu"]
    args += ["--runtime", "torch", "--http-port", "0", "--jobs-dir", str(jobs)]
    server = start_cli_server(args, **kwargs)
    deadline = time.monotonic() + 30
    while not re.search(r"OpenAI-style HTTP on port (\d+)", "".join(server.log)):
        assert time.monotonic() < deadline, "".join(server.log)
        time.sleep(0.1)
    port = re.search(r"OpenAI-style HTTP on port (\d+)", "".join(server.log)).group(1)  # type: ignore[union-attr]
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
    return server, client


def _stop(server: CliServer) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
    server.output(timeout=30)


def _submit(client: openai.OpenAI, path: Path, lines: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with path.open("rb") as f:
        file_id = client.files.create(file=f, purpose="batch").id
    return client.batches.create(
        input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h"
    ).id


def _wait(
    client: openai.OpenAI, batch_id: str, until: Any, server: CliServer, seconds: float = 240
) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        batch = client.batches.retrieve(batch_id)
        if until(batch):
            return batch
        log = "".join([line for line in server.log if "headserve.access" not in line][-30:])
        assert time.monotonic() < deadline, f"{batch.status} {batch.request_counts}\n{log}"
        time.sleep(0.05)


@pytest.mark.e2e
def test_a_server_killed_mid_job_resumes_it_and_answers_every_line_once(
    bert: Any, tmp_path: Path
) -> None:
    jobs = tmp_path / "jobs"
    texts = [
        f"Line {i} of a corpus, with enough words to take the model a moment." for i in range(64)
    ]
    lines = [
        {
            "custom_id": f"row-{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"input": [texts[(i + k) % 64] for k in range(16)]},
        }
        for i in range(1500)
    ]
    server, client = _start(bert, jobs)
    try:
        batch_id = _submit(client, tmp_path / "input.jsonl", lines)
        half = _wait(client, batch_id, lambda b: b.request_counts.completed >= 64, server)
        assert half.status == "in_progress"
        # a second server on the same folder is refused; the first keeps it
        with pytest.raises(AssertionError, match="in use by another headserve server"):
            _start(bert, jobs)
        server.proc.send_signal(signal.SIGKILL)
        server.output(timeout=30)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    killed_at = half.request_counts.completed
    server, client = _start(bert, jobs)  # the lock went with the killed process
    try:
        batch = _wait(client, batch_id, lambda b: b.status != "in_progress", server)
        assert batch.status == "completed", batch.errors
        assert batch.request_counts.completed == len(lines) and batch.request_counts.failed == 0
        text = client.files.content(batch.output_file_id).text
        records = [json.loads(line) for line in text.splitlines()]
        assert sorted(r["custom_id"] for r in records) == sorted(
            line["custom_id"] for line in lines
        )
        assert len(records) == len(lines)  # none twice
        for record in records[killed_at - 1 : killed_at + 80 : 20]:  # around the kill, and after
            index = int(record["custom_id"].split("-")[1])
            unary = client.embeddings.create(model="encode", input=lines[index]["body"]["input"])
            np.testing.assert_allclose(
                [d["embedding"] for d in record["response"]["body"]["data"]],
                [d.embedding for d in unary.data],
                atol=1e-6,
            )
    finally:
        _stop(server)


def _small_files() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))


@pytest.mark.e2e
def test_a_full_disk_fails_the_job_cleanly_and_the_server_goes_on(
    bert: Any, tmp_path: Path
) -> None:
    """Files may grow to 256 KiB (RLIMIT_FSIZE): the job's output passes it."""
    server, client = _start(bert, tmp_path / "jobs", preexec_fn=_small_files)
    try:
        lines = [
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/embeddings",
                "body": {"input": [f"sentence {i}"]},
            }
            for i in range(400)
        ]
        batch_id = _submit(client, tmp_path / "input.jsonl", lines)
        batch = _wait(client, batch_id, lambda b: b.status in ("completed", "failed"), server, 60)
        assert batch.status == "failed"
        (error,) = batch.errors.data
        assert error.code == "write_failed" and "File too large" in error.message, error.message
        text = client.files.content(batch.output_file_id).text
        assert 0 < len(text.encode()) <= FILE_LIMIT and text.endswith("\n")
        answered = [json.loads(line) for line in text.splitlines()]  # whole lines only
        assert len(answered) == batch.request_counts.completed > 0
        # the server goes on: a call, and a job small enough to fit
        assert len(client.embeddings.create(model="encode", input=["still here"]).data) == 1
        small = _submit(client, tmp_path / "small.jsonl", lines[:3])
        done = _wait(client, small, lambda b: b.status in ("completed", "failed"), server)
        assert done.status == "completed" and done.request_counts.completed == 3
    finally:
        _stop(server)


@pytest.mark.e2e
def test_the_jobs_commands_submit_watch_list_and_fetch(bert: Any, tmp_path: Path) -> None:
    # the commands talk gRPC to the Jobs service: no HTTP endpoint needed
    args = [str(bert.backbone), "--head", "encode=encode", "--device", "cpu"]
    server = start_cli_server([*args, "--runtime", "torch", "--jobs-dir", str(tmp_path / "jobs")])
    headserve = str(Path(sys.executable).parent / "headserve")
    try:
        source = tmp_path / "requests.jsonl"
        lines = [
            {"custom_id": f"q{i}", "url": "/v1/embeddings", "body": {"input": f"query {i}"}}
            for i in range(20)
        ]
        source.write_text("".join(json.dumps(line) + "\n" for line in lines) + "{broken\n")

        def jobs(*args: str) -> subprocess.CompletedProcess[str]:
            command = [headserve, "jobs", *args, "--server", server.target]
            return subprocess.run(command, capture_output=True, text=True, timeout=120)

        submitted = jobs("submit", str(source), "--watch")
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.split(":")[0]
        assert f"{job_id} completed: 20 answered, 1 failed" in submitted.stdout
        assert "21/21" in submitted.stderr  # the progress bar's last state
        listed = jobs("list")
        assert job_id in listed.stdout and "completed" in listed.stdout
        fetched = jobs("fetch", job_id, "--out", str(tmp_path / "out"))
        assert fetched.returncode == 0, fetched.stderr
        output = (tmp_path / "out" / f"{job_id}_output.jsonl").read_text().splitlines()
        errors = (tmp_path / "out" / f"{job_id}_error.jsonl").read_text().splitlines()
        assert sorted(json.loads(line)["custom_id"] for line in output) == sorted(
            line["custom_id"] for line in lines
        )
        assert len(errors) == 1 and "is not JSON" in errors[0]
        missing = jobs("watch", "batch_nope")
        assert missing.returncode != 0 and "NOT_FOUND no batch 'batch_nope'" in missing.stderr
        refused = jobs("submit", str(tmp_path / "absent.jsonl"))
        assert refused.returncode != 0 and "absent.jsonl" in refused.stderr
    finally:
        _stop(server)
