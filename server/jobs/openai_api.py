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

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from ..errors import InvalidArgument, JobsOff, TooLarge
from .api import JobsApi
from .store import FileRecord, JobRecord

FORM_OVERHEAD = 64 * 1024  # bytes of a multipart upload besides its file
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class JobRoute:
    method: str
    path: str
    handle: Callable[[Request, Any], Awaitable[Any]]
    raw: bool = False  # the handler reads the body itself (not JSON)


# method, path, the _Wire method that answers it, whether that reads the body itself
_ROUTES = (
    ("POST", "/v1/files", "upload", True),  # multipart
    ("GET", "/v1/files", "list_files", False),
    ("GET", "/v1/files/{file_id}", "get_file", False),
    ("GET", "/v1/files/{file_id}/content", "content", False),
    ("DELETE", "/v1/files/{file_id}", "delete_file", False),
    ("POST", "/v1/batches", "create", False),
    ("GET", "/v1/batches", "list_jobs", False),
    ("GET", "/v1/batches/{batch_id}", "get_job", False),
    ("POST", "/v1/batches/{batch_id}/cancel", "cancel", True),  # no body
)


def routes(api: JobsApi | None, off: str) -> list[JobRoute]:
    """The routes, answered by `api`; without one (no --jobs-dir), each answers JOBS_OFF
    saying `off`."""

    async def jobs_off(request: Request, body: Any) -> Any:
        raise JobsOff(off)

    wire = _Wire(api) if api is not None else None
    return [
        JobRoute(method, path, getattr(wire, name) if wire else jobs_off, raw)
        for method, path, name, raw in _ROUTES
    ]


class _Wire:
    """Each route: its request read, the api asked, the answer as OpenAI's JSON."""

    def __init__(self, api: JobsApi) -> None:
        self.api = api

    async def upload(self, request: Request, body: None) -> dict[str, Any]:
        most = self.api.max_job_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > most + FORM_OVERHEAD:
            raise TooLarge("file", f"{int(declared):,} bytes, more than {most:,} (--max-job-bytes)")
        async with request.form(max_files=1, max_fields=16) as form:
            purpose, upload = form.get("purpose"), form.get("file")
            if not isinstance(upload, UploadFile):
                raise InvalidArgument("file", "missing: send the job's JSONL as the file part")
            record = await self.api.upload(
                _chunks(upload), upload.filename or "", purpose if isinstance(purpose, str) else ""
            )
        return _file(record)

    async def list_files(self, request: Request, body: None) -> dict[str, Any]:
        data = [_file(f) for f in self.api.files(request.query_params.get("purpose"))]
        return {"object": "list", "data": data, "has_more": False}

    async def get_file(self, request: Request, body: None) -> dict[str, Any]:
        return _file(self.api.file(request.path_params["file_id"]))

    async def content(self, request: Request, body: None) -> Response:
        record = self.api.file(request.path_params["file_id"])
        return FileResponse(
            self.api.path(record), media_type="application/octet-stream", filename=record.filename
        )

    async def delete_file(self, request: Request, body: None) -> dict[str, Any]:
        record = self.api.delete_file(request.path_params["file_id"])
        return {"id": record.id, "object": "file", "deleted": True}

    async def create(self, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        job = self.api.create(
            body.get("input_file_id"),
            body.get("endpoint"),
            body.get("completion_window", "24h"),
            body.get("metadata"),
        )
        return _job(job)

    async def list_jobs(self, request: Request, body: None) -> dict[str, Any]:
        try:
            limit = int(request.query_params.get("limit", "20"))
        except ValueError:
            limit = 0
        found, more = self.api.page(request.query_params.get("after"), limit)
        data = [_job(j) for j in found]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": more,
        }

    async def get_job(self, request: Request, body: None) -> dict[str, Any]:
        return _job(self.api.job(request.path_params["batch_id"]))

    async def cancel(self, request: Request, body: Any) -> dict[str, Any]:
        return _job(self.api.cancel(request.path_params["batch_id"]))


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    await upload.seek(0)
    while chunk := await upload.read(CHUNK):
        yield chunk


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
