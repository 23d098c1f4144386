"""Runs batch jobs as bulk work, one job at a time in the order they were created, and resumes
the unfinished ones when the server starts again.

A job's lines are answered a chunk at a time (`CHUNK` lines, at most `IN_FLIGHT` calls at once),
each as the unary call would be (lines.py) but in the bulk class of work: interactive calls go
first, and a job's calls wait for queue room instead of being refused. Once a chunk is
answered, its output and error lines are appended in line order, flushed to disk (fsync), and
only then is the job's progress committed (store.py): a server killed in between answers that
chunk again after its restart, having cut the files back to the committed ends, so every line
is in exactly one of the two files, once. A write that fails (a full disk, a file-size limit)
fails the job with the reason, after cutting the partial lines off; the server goes on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..call_info import CURRENT, PRIORITY, REQUEST_ID_KEY
from ..calls.pipeline import RUNNING, Arrival
from ..calls.pipeline import Call as Running
from ..calls.status import http_error
from ..errors import HeadserveError
from ..tasks import Task
from .lines import Line, endpoints, read_line
from .store import JobRecord, Store

if TYPE_CHECKING:
    from ..calls.state import ServerState
    from ..observability.metrics import Metrics

log = logging.getLogger(__name__)

CHUNK = 256  # lines answered between two commits
IN_FLIGHT = 64  # a job's calls computing or queued at once


class JobFailed(Exception):
    """What ends a job as failed (its message is the job's error)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Jobs:
    """The jobs of one server: its store, and the task that runs them."""

    def __init__(
        self, store: Store, state: ServerState, tasks: Sequence[Task], metrics: Metrics | None
    ) -> None:
        self.store = store
        self._state = state
        self._lines = metrics.watch_jobs(lambda: store.pending) if metrics is not None else None
        self.endpoints = endpoints(tasks)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._cancelled: set[str] = set()

    def start(self) -> None:
        """Run the unfinished jobs, then each new one (on the running event loop)."""
        for job in self.store.unfinished():
            if job.status == "cancelling":
                self.store.set_status(job.id, "cancelled")
        self._task = asyncio.ensure_future(self._run_all())

    async def stop(self) -> None:
        """Stop at once: what was not committed is answered again after the next start."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def close(self) -> None:
        self.store.close()

    def submitted(self) -> None:
        """A job was created: run it when its turn comes."""
        self._wake.set()

    def cancel(self, job_id: str) -> None:
        """Stop `job_id` after the lines being answered now (OpenAI's cancelling, then
        cancelled; what was answered stays in its files)."""
        self._cancelled.add(job_id)
        self._wake.set()

    async def _run_all(self) -> None:
        while True:
            self._wake.clear()
            for job in self.store.unfinished():
                try:
                    await self._run(job)
                except Exception as exc:  # a bug: that job fails, named; the next ones run
                    log.exception("job %s failed", job.id)
                    error = {"code": "internal", "message": f"internal error: {exc!r}"}
                    self.store.set_status(job.id, "failed", [error])
            await self._wake.wait()

    async def _run(self, job: JobRecord) -> None:
        store = self.store
        if job.id in self._cancelled or job.status == "cancelling":
            store.set_status(job.id, "cancelled")
            return
        if job.status == "validating":
            store.set_status(job.id, "in_progress")
        try:
            await self._answer_lines(job)
        except JobFailed as exc:
            log.warning("job %s failed: %s", job.id, exc.message)
            failed = store.job(job.id)
            assert failed is not None
            store.publish(failed)  # what was answered before stays downloadable
            store.set_status(job.id, "failed", [{"code": exc.code, "message": exc.message}])
            return
        finished = store.job(job.id)
        assert finished is not None
        store.publish(finished)
        if job.id in self._cancelled:
            store.set_status(job.id, "cancelled")
        else:
            store.set_status(job.id, "finalizing")
            store.set_status(job.id, "completed")
        log.info(
            "job %s %s: %d lines answered, %d failed",
            job.id,
            "cancelled" if job.id in self._cancelled else "completed",
            finished.completed,
            finished.failed,
        )

    async def _answer_lines(self, job: JobRecord) -> None:
        store = self.store
        source = store.path(job.input_file_id)
        outputs = _Appender(store.path(job.output_file_id), job.output_bytes)
        errors = _Appender(store.path(job.error_file_id), job.error_bytes)
        seen: set[str] = set()
        done, completed, failed = job.done_lines, job.completed, job.failed
        try:
            lines = _raw_lines(source)  # bytes: each chunk's are read as it comes
            for number, raw in lines[:done]:  # answered before a restart: their ids are taken
                custom_id = read_line(number, raw).custom_id
                if custom_id is not None:
                    seen.add(custom_id)
            for start in range(done, len(lines), CHUNK):
                if job.id in self._cancelled:
                    store.set_status(job.id, "cancelling")
                    break
                chunk = [read_line(number, raw) for number, raw in lines[start : start + CHUNK]]
                answers = await self._answer_chunk(job, chunk, seen)
                for ok, record in answers:
                    (outputs if ok else errors).add(record)
                    completed, failed = completed + ok, failed + (not ok)
                    if self._lines is not None:
                        self._lines.labels("completed" if ok else "failed").inc()
                outputs.flush()
                errors.flush()
                store.commit(job.id, start + len(chunk), completed, failed, outputs.end, errors.end)
                outputs.committed()
                errors.committed()
        except (OSError, sqlite3.Error) as exc:
            outputs.cut()
            errors.cut()
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise JobFailed(
                "write_failed",
                f"the job's results could not be written ({reason}); the lines answered "
                "before are in its files, none partly",
            ) from exc
        finally:
            outputs.close()
            errors.close()

    async def _answer_chunk(
        self, job: JobRecord, chunk: Sequence[Line], seen: set[str]
    ) -> list[tuple[bool, dict[str, Any]]]:
        window = asyncio.Semaphore(IN_FLIGHT)
        calls = []
        for line in chunk:
            duplicate = line.custom_id is not None and line.custom_id in seen
            if line.custom_id is not None:
                seen.add(line.custom_id)
            calls.append(self._answer(job, line, window, duplicate))
        return list(await asyncio.gather(*calls))

    async def _answer(
        self, job: JobRecord, line: Line, window: asyncio.Semaphore, duplicate: bool
    ) -> tuple[bool, dict[str, Any]]:
        request_id = f"{job.id}-{line.number}"
        record: dict[str, Any] = {"id": request_id, "custom_id": line.custom_id}
        if line.problem is not None or duplicate:
            problem = line.problem or f"custom_id {line.custom_id!r} is taken by an earlier line"
            code = "duplicate_custom_id" if duplicate else "invalid_line"
            error = {"code": code, "message": problem, "line": line.number}
            return False, {**record, "response": None, "error": error}
        answer = self.endpoints.get(line.url or "")
        if answer is None:
            error = {"code": "invalid_url", "message": f"url {line.url!r}", "line": line.number}
            return False, {**record, "response": None, "error": error}
        async with window:
            # this task's own context: the line is a call of its own, bulk work
            call = Running(Arrival("job", line.url or "", ((REQUEST_ID_KEY, request_id),)), None)
            CURRENT.set(call.info)
            RUNNING.set(call)
            PRIORITY.set("bulk")
            core = self._state.core
            assert core is not None  # jobs start once the model is loaded
            try:
                body = await answer(core, line.body)
            except HeadserveError as exc:
                status, error_body = http_error(exc)
                response = {"status_code": status, "request_id": request_id, "body": error_body}
                return False, {**record, "response": response, "error": None}
        response = {"status_code": 200, "request_id": request_id, "body": body}
        return True, {**record, "response": response, "error": None}


def _raw_lines(source: Path) -> list[tuple[int, bytes]]:
    """The input file's lines that are not blank: their numbers (from 1) and bytes."""
    with source.open("rb") as f:
        raw = f.read().split(b"\n")
    return [(n, r.rstrip(b"\r")) for n, r in enumerate(raw, 1) if r.strip()]


class _Appender:
    """A job's output (or error) file, from its committed end: lines added, then flushed to
    disk together; cut back to the committed end when a write fails."""

    def __init__(self, path: Path, committed: int) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(self._fd, committed)  # what a killed run wrote past it: answered again
        self.end = committed
        self._committed = committed
        self._pending = bytearray()

    def add(self, record: dict[str, Any]) -> None:
        self._pending += json.dumps(record, ensure_ascii=False).encode() + b"\n"

    def flush(self) -> None:
        """The lines added, written and on disk (OSError: a full disk, a file-size limit)."""
        data, written = bytes(self._pending), 0
        self._pending.clear()
        while written < len(data):  # a short write: the rest next (or its error)
            count = os.pwrite(self._fd, data[written:], self.end)
            written += count
            self.end += count
        os.fsync(self._fd)

    def committed(self) -> None:
        """The job's progress names the file's end now."""
        self._committed = self.end

    def cut(self) -> None:
        try:
            os.ftruncate(self._fd, self._committed)
        except OSError:
            log.exception("could not cut a job's file back to its committed end")
        self.end = self._committed
        self._pending.clear()

    def close(self) -> None:
        os.close(self._fd)
