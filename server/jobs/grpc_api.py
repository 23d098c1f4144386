"""Batch jobs over gRPC: the `Jobs` service (protos/headserve/v1/jobs.proto), each RPC a thin
wire format over the same JobsApi the HTTP endpoint's /v1/files and /v1/batches use.

Its calls run through the call pipeline as the tasks' do (the interceptor in
transports/grpc.py wraps them: tokens, request ids, limits, the access log). Without a jobs
folder (no --jobs-dir), every RPC answers UNIMPLEMENTED (JOBS_OFF), saying why.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from headserve.v1 import jobs_pb2 as pb

from ..calls.decoding import decoded, decoder
from ..errors import InvalidArgument, JobsOff
from .api import JobsApi
from .store import FileRecord, JobRecord

SERVICE = pb.DESCRIPTOR.services_by_name["Jobs"]
DOWNLOAD_CHUNK = 1024 * 1024  # bytes a DownloadFile message carries at most


def methods() -> list[str]:
    """The service's RPCs, as gRPC names them ("/headserve.v1.Jobs/GetJob")."""
    return [f"/{SERVICE.full_name}/{m.name}" for m in SERVICE.methods]


def handler(api: JobsApi | None, off: str, max_message_bytes: int) -> grpc.GenericRpcHandler:
    """The service, answered by `api`; without one, every RPC answers JOBS_OFF saying `off`."""
    wire = _Wire(api, min(DOWNLOAD_CHUNK, max_message_bytes // 2)) if api is not None else None
    made: dict[str, grpc.RpcMethodHandler] = {}
    for method in SERVICE.methods:
        request = pb.DESCRIPTOR.message_types_by_name[method.input_type.name]
        response = pb.DESCRIPTOR.message_types_by_name[method.output_type.name]
        codecs: dict[str, Any] = dict(
            request_deserializer=decoder(_message(request.name)),
            response_serializer=_message(response.name).SerializeToString,
        )
        behavior: Any = getattr(wire, method.name) if wire is not None else _off(off, method)
        if method.client_streaming:
            made[method.name] = grpc.stream_unary_rpc_method_handler(behavior, **codecs)
        elif method.server_streaming:
            made[method.name] = grpc.unary_stream_rpc_method_handler(behavior, **codecs)
        else:
            made[method.name] = grpc.unary_unary_rpc_method_handler(behavior, **codecs)
    return grpc.method_handlers_generic_handler(SERVICE.full_name, made)


def _message(name: str) -> Any:
    return getattr(pb, name)


def _off(off: str, method: Any) -> Callable[..., Any]:
    if method.server_streaming:

        async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
            raise JobsOff(off)
            yield  # pragma: no cover (makes this an async generator)

        return streaming

    async def unary(request: Any, context: Any) -> Any:
        raise JobsOff(off)

    return unary


Context = grpc.aio.ServicerContext


class _Wire:
    """Each RPC: its request read, the api asked, the answer as the contract's message."""

    def __init__(self, api: JobsApi, chunk: int) -> None:
        self.api = api
        self.chunk = chunk

    async def UploadFile(  # noqa: N802 (the RPC's name)
        self, requests: AsyncIterator[Any], context: Context
    ) -> pb.File:
        iterator = aiter(requests)
        first = decoded(await anext(iterator, None))
        if first is None:
            raise InvalidArgument("data", "no message came: send the file's name and bytes")

        async def chunks() -> AsyncIterator[bytes]:
            yield first.data
            async for request in iterator:
                yield decoded(request).data

        return _file(await self.api.upload(chunks(), first.filename, first.purpose))

    async def GetFile(self, request: Any, context: Context) -> pb.File:  # noqa: N802
        return _file(self.api.file(decoded(request).file_id))

    async def ListFiles(self, request: Any, context: Context) -> pb.ListFilesResponse:  # noqa: N802
        found = self.api.files(decoded(request).purpose)
        return pb.ListFilesResponse(files=[_file(f) for f in found])

    async def DownloadFile(  # noqa: N802
        self, request: Any, context: Context
    ) -> AsyncIterator[pb.DownloadFileResponse]:
        request = decoded(request)
        record = self.api.file(request.file_id)
        if not 0 <= request.offset <= record.bytes:
            raise InvalidArgument("offset", f"must be from 0 to the file's {record.bytes} bytes")
        with self.api.path(record).open("rb") as f:
            f.seek(request.offset)
            offset = request.offset
            while data := await asyncio.to_thread(f.read, self.chunk):
                yield pb.DownloadFileResponse(data=data, offset=offset)
                offset += len(data)

    async def DeleteFile(self, request: Any, context: Context) -> pb.DeleteFileResponse:  # noqa: N802
        record = self.api.delete_file(decoded(request).file_id)
        return pb.DeleteFileResponse(file_id=record.id, deleted=True)

    async def CreateJob(self, request: Any, context: Context) -> pb.Job:  # noqa: N802
        request = decoded(request)
        job = self.api.create(
            request.input_file_id,
            request.endpoint,
            request.completion_window,
            dict(request.metadata),
        )
        return _job(job)

    async def GetJob(self, request: Any, context: Context) -> pb.Job:  # noqa: N802
        return _job(self.api.job(decoded(request).job_id))

    async def ListJobs(self, request: Any, context: Context) -> pb.ListJobsResponse:  # noqa: N802
        request = decoded(request)
        found, more = self.api.page(request.after, request.limit or 20)
        return pb.ListJobsResponse(jobs=[_job(j) for j in found], has_more=more)

    async def CancelJob(self, request: Any, context: Context) -> pb.Job:  # noqa: N802
        return _job(self.api.cancel(decoded(request).job_id))


def _file(record: FileRecord) -> pb.File:
    return pb.File(
        id=record.id,
        bytes=record.bytes,
        created_at=record.created_at,
        filename=record.filename,
        purpose=record.purpose,
    )


_STATUS = {
    "validating": pb.JOB_STATUS_VALIDATING,
    "in_progress": pb.JOB_STATUS_IN_PROGRESS,
    "finalizing": pb.JOB_STATUS_FINALIZING,
    "completed": pb.JOB_STATUS_COMPLETED,
    "failed": pb.JOB_STATUS_FAILED,
    "cancelling": pb.JOB_STATUS_CANCELLING,
    "cancelled": pb.JOB_STATUS_CANCELLED,
}


def _job(job: JobRecord) -> pb.Job:
    finished = job.status in ("completed", "cancelled", "failed")
    errors = json.loads(job.errors)["data"] if job.errors else []
    return pb.Job(
        id=job.id,
        endpoint=job.endpoint,
        input_file_id=job.input_file_id,
        completion_window=job.completion_window,
        status=_STATUS[job.status],
        output_file_id=job.output_file_id if finished else "",
        error_file_id=job.error_file_id if finished else "",
        request_counts=pb.JobRequestCounts(
            total=job.total, completed=job.completed, failed=job.failed
        ),
        metadata=json.loads(job.metadata) if job.metadata else {},
        errors=[pb.JobError(code=e["code"], message=e["message"]) for e in errors],
        created_at=job.created_at,
        in_progress_at=job.in_progress_at or 0,
        finalizing_at=job.finalizing_at or 0,
        completed_at=job.completed_at or 0,
        failed_at=job.failed_at or 0,
        cancelling_at=job.cancelling_at or 0,
        cancelled_at=job.cancelled_at or 0,
    )
