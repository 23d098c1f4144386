"""What managing batch jobs does, whichever transport asks: the HTTP endpoint's `/v1/files` and
`/v1/batches` (openai_api.py) and the `Jobs` gRPC service (grpc_api.py) are each a thin wire
format over this.

An upload is written to the jobs folder as it comes, at most --max-job-bytes, then checked
whole (UTF-8 JSONL, every line's url one this server answers: lines.check_upload) before it
is kept; a refused upload leaves nothing behind. Errors name the field as both wires call it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Mapping
from pathlib import Path

from ..errors import InvalidArgument, JobNotFound, TooLarge
from .lines import check_upload
from .runner import Jobs
from .store import FileRecord, JobRecord

MAX_PAGE = 100


class JobsApi:
    """Files and jobs of one server's `Jobs`, as callers see them."""

    def __init__(self, jobs: Jobs, max_job_bytes: int) -> None:
        self.jobs = jobs
        self.store = jobs.store
        self.max_job_bytes = max_job_bytes

    # --- files ---------------------------------------------------------------------------------

    async def upload(self, chunks: AsyncIterable[bytes], filename: str, purpose: str) -> FileRecord:
        """A job's input file from its bytes as they come (TooLarge past --max-job-bytes,
        InvalidArgument for a purpose other than "batch" or a file that is not a job's input)."""
        if purpose != "batch":
            raise InvalidArgument("purpose", f"{purpose!r}: this server takes 'batch' files")
        target = self.store.temporary()
        try:
            with target.open("wb") as out:
                size = 0
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_job_bytes:
                        raise TooLarge(
                            "file", f"more than {self.max_job_bytes:,} bytes (--max-job-bytes)"
                        )
                    await asyncio.to_thread(out.write, chunk)
            known = list(self.jobs.endpoints)
            lines = await asyncio.to_thread(lambda: check_upload(target.read_bytes(), known))
            return self.store.add_file(target, filename or "input.jsonl", purpose, lines)
        finally:
            target.unlink(missing_ok=True)

    def file(self, file_id: str) -> FileRecord:
        record = self.store.file(file_id)
        if record is None:
            raise JobNotFound(f"no file {file_id!r} on this server")
        return record

    def files(self, purpose: str | None) -> list[FileRecord]:
        return self.store.files(purpose or None)

    def path(self, record: FileRecord) -> Path:
        return self.store.path(record.id)

    def delete_file(self, file_id: str) -> FileRecord:
        """Delete a file no unfinished job uses; the file as it was."""
        record = self.file(file_id)
        in_use = [
            j.id
            for j in self.store.unfinished()
            if record.id in (j.input_file_id, j.output_file_id, j.error_file_id)
        ]
        if in_use:
            raise InvalidArgument(
                "file_id", f"{record.id} is in use by job {in_use[0]}, not finished"
            )
        self.store.delete_file(record.id)
        return record

    # --- jobs ----------------------------------------------------------------------------------

    def create(
        self,
        input_file_id: object,
        endpoint: object,
        window: object,
        metadata: object,
    ) -> JobRecord:
        """A new job over an uploaded file, queued behind the jobs created before it."""
        if not isinstance(input_file_id, str) or not input_file_id:
            raise InvalidArgument("input_file_id", "missing: the id of an uploaded batch file")
        source = self.store.file(input_file_id)
        if source is None or source.purpose != "batch":
            raise InvalidArgument(
                "input_file_id", f"{input_file_id!r} is no uploaded batch file here"
            )
        if endpoint not in self.jobs.endpoints:
            raise InvalidArgument(
                "endpoint",
                f"{endpoint!r}: this server answers {', '.join(sorted(self.jobs.endpoints))}",
            )
        assert isinstance(endpoint, str)
        if not isinstance(window, str):
            raise InvalidArgument("completion_window", "must be a string such as '24h'")
        if metadata is not None and not (
            isinstance(metadata, Mapping)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
        ):
            raise InvalidArgument("metadata", "must be an object of strings")
        job = self.store.add_job(source, endpoint, window or "24h", dict(metadata or {}))
        self.jobs.submitted()
        return job

    def job(self, job_id: str) -> JobRecord:
        job = self.store.job(job_id)
        if job is None:
            raise JobNotFound(f"no batch {job_id!r} on this server")
        return job

    def page(self, after: str | None, limit: int) -> tuple[list[JobRecord], bool]:
        """Jobs newest first, older than `after` (None: from the newest), and whether more
        follow."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidArgument("limit", f"must be a whole number from 1 to {MAX_PAGE}")
        found = self.store.jobs(after or None, limit + 1)
        return found[:limit], len(found) > limit

    def cancel(self, job_id: str) -> JobRecord:
        """Stop a job after the lines being answered now; the job as it is then."""
        job = self.job(job_id)
        if job.status in ("validating", "in_progress"):
            self.store.set_status(job.id, "cancelling")
            self.jobs.cancel(job.id)
        return self.job(job_id)
