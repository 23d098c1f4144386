"""Batch jobs over the OpenAI-style HTTP endpoint, as OpenAI's Files and Batch APIs shape them,
so that the official SDKs' `files` and `batches` calls work against the server:

    POST   /v1/files                     upload a job's input (multipart: file, purpose=batch)
    GET    /v1/files                     list files (?purpose=)
    GET    /v1/files/{id}                a file
    GET    /v1/files/{id}/content        its bytes (a job's output and error files too)
    DELETE /v1/files/{id}                delete it
    POST   /v1/batches                   create a job (input_file_id, endpoint, completion_window)
    GET    /v1/batches                   list jobs, newest first (?after=, ?limit=)
    GET    /v1/batches/{id}              a job: its status and progress (request_counts)
    POST   /v1/batches/{id}/cancel       cancel it

An upload that is not UTF-8 JSONL, is larger than --max-job-bytes, or has a line naming a url
this server does not answer is refused (400, 413) before it is stored. Each route runs through
the call pipeline as the other routes do (tokens, request ids, the access log).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from ..errors import InvalidArgument, JobNotFound, TooLarge
from .lines import check_upload
from .runner import Jobs
from .store import FileRecord, JobRecord

FORM_OVERHEAD = 64 * 1024  # bytes of a multipart upload besides its file


@dataclass(frozen=True)
class JobRoute:
    method: str
    path: str
    handle: Callable[[Request, Any], Awaitable[Any]]
    raw: bool = False  # the handler reads the body itself (not JSON)


def routes(jobs: Jobs, max_job_bytes: int) -> list[JobRoute]:
    api = _Api(jobs, max_job_bytes)
    return [
        JobRoute("POST", "/v1/files", api.upload, raw=True),
        JobRoute("GET", "/v1/files", api.list_files),
        JobRoute("GET", "/v1/files/{file_id}", api.get_file),
        JobRoute("GET", "/v1/files/{file_id}/content", api.content),
        JobRoute("DELETE", "/v1/files/{file_id}", api.delete_file),
        JobRoute("POST", "/v1/batches", api.create),
        JobRoute("GET", "/v1/batches", api.list_jobs),
        JobRoute("GET", "/v1/batches/{batch_id}", api.get_job),
        JobRoute("POST", "/v1/batches/{batch_id}/cancel", api.cancel, raw=True),  # no body
    ]


class _Api:
    def __init__(self, jobs: Jobs, max_job_bytes: int) -> None:
        self.jobs = jobs
        self.store = jobs.store
        self.max_job_bytes = max_job_bytes

    # --- files ---------------------------------------------------------------------------------

    async def upload(self, request: Request, body: None) -> dict[str, Any]:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_job_bytes + FORM_OVERHEAD:
            raise TooLarge(
                "file",
                f"{int(declared):,} bytes, more than {self.max_job_bytes:,} (--max-job-bytes)",
            )
        async with request.form(max_files=1, max_fields=16) as form:
            purpose = form.get("purpose")
            upload = form.get("file")
            if purpose != "batch":
                raise InvalidArgument("purpose", f"{purpose!r}: this server takes 'batch' files")
            if not isinstance(upload, UploadFile):
                raise InvalidArgument("file", "missing: send the job's JSONL as the file part")
            target = self.store.temporary()
            try:
                size = await asyncio.to_thread(_copy, upload, target, self.max_job_bytes)
                lines = await asyncio.to_thread(
                    lambda: check_upload(target.read_bytes(), list(self.jobs.endpoints))
                )
                record = self.store.add_file(
                    target, upload.filename or "input.jsonl", "batch", lines
                )
            finally:
                target.unlink(missing_ok=True)
        assert record.bytes == size
        return _file(record)

    async def list_files(self, request: Request, body: None) -> dict[str, Any]:
        purpose = request.query_params.get("purpose")
        data = [_file(f) for f in self.store.files(purpose)]
        return {"object": "list", "data": data, "has_more": False}

    async def get_file(self, request: Request, body: None) -> dict[str, Any]:
        return _file(self._file(request))

    async def content(self, request: Request, body: None) -> Response:
        record = self._file(request)
        return FileResponse(
            self.store.path(record.id),
            media_type="application/octet-stream",
            filename=record.filename,
        )

    async def delete_file(self, request: Request, body: None) -> dict[str, Any]:
        record = self._file(request)
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
        return {"id": record.id, "object": "file", "deleted": True}

    def _file(self, request: Request) -> FileRecord:
        file_id = request.path_params["file_id"]
        record = self.store.file(file_id)
        if record is None:
            raise JobNotFound(f"no file {file_id!r} on this server")
        return record

    # --- jobs ----------------------------------------------------------------------------------

    async def create(self, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        file_id = body.get("input_file_id")
        if not isinstance(file_id, str):
            raise InvalidArgument("input_file_id", "missing: the id of an uploaded batch file")
        source = self.store.file(file_id)
        if source is None or source.purpose != "batch":
            raise InvalidArgument("input_file_id", f"{file_id!r} is no uploaded batch file here")
        endpoint = body.get("endpoint")
        if endpoint not in self.jobs.endpoints:
            raise InvalidArgument(
                "endpoint",
                f"{endpoint!r}: this server answers {', '.join(sorted(self.jobs.endpoints))}",
            )
        window = body.get("completion_window", "24h")
        if not isinstance(window, str):
            raise InvalidArgument("completion_window", "must be a string such as '24h'")
        metadata = body.get("metadata")
        if metadata is not None and not (
            isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
        ):
            raise InvalidArgument("metadata", "must be an object of strings")
        job = self.store.add_job(source, endpoint, window, metadata)
        self.jobs.submitted()
        return _job(job)

    async def list_jobs(self, request: Request, body: None) -> dict[str, Any]:
        try:
            limit = int(request.query_params.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 100:
            raise InvalidArgument("limit", "must be a whole number from 1 to 100")
        found = self.store.jobs(request.query_params.get("after"), limit + 1)
        data = [_job(j) for j in found[:limit]]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(found) > limit,
        }

    async def get_job(self, request: Request, body: None) -> dict[str, Any]:
        return _job(self._job(request))

    async def cancel(self, request: Request, body: Any) -> dict[str, Any]:
        job = self._job(request)
        if job.status in ("validating", "in_progress"):
            self.store.set_status(job.id, "cancelling")
            self.jobs.cancel(job.id)
        return _job(self._job(request))

    def _job(self, request: Request) -> JobRecord:
        job_id = request.path_params["batch_id"]
        job = self.store.job(job_id)
        if job is None:
            raise JobNotFound(f"no batch {job_id!r} on this server")
        return job


def _copy(upload: UploadFile, target: Any, most: int) -> int:
    """The upload's bytes into `target`, at most `most` of them (else TooLarge)."""
    size = 0
    upload.file.seek(0)
    with open(target, "wb") as out:
        while chunk := upload.file.read(1024 * 1024):
            size += len(chunk)
            if size > most:
                raise TooLarge("file", f"more than {most:,} bytes (--max-job-bytes)")
            out.write(chunk)
    return size


def _file(record: FileRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "object": "file",
        "bytes": record.bytes,
        "created_at": record.created_at,
        "filename": record.filename,
        "purpose": record.purpose,
        "status": "processed",
        "status_details": None,
    }


def _job(job: JobRecord) -> dict[str, Any]:
    finished = job.status in ("completed", "cancelled", "failed")
    return {
        "id": job.id,
        "object": "batch",
        "endpoint": job.endpoint,
        "errors": {"object": "list", **json.loads(job.errors)} if job.errors else None,
        "input_file_id": job.input_file_id,
        "completion_window": job.completion_window,
        "status": job.status,
        "output_file_id": job.output_file_id if finished else None,
        "error_file_id": job.error_file_id if finished else None,
        "created_at": job.created_at,
        "in_progress_at": job.in_progress_at,
        "expires_at": None,
        "finalizing_at": job.finalizing_at,
        "completed_at": job.completed_at,
        "failed_at": job.failed_at,
        "expired_at": None,
        "cancelling_at": job.cancelling_at,
        "cancelled_at": job.cancelled_at,
        "request_counts": {"total": job.total, "completed": job.completed, "failed": job.failed},
        "metadata": json.loads(job.metadata) if job.metadata else None,
    }
