"""Between batch jobs' Python values and the ``headserve.v1.Jobs`` messages, both ways: an
input file as the upload's request messages (read again on a retry), and files and jobs as
the client's dataclasses."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import grpc

from headserve.v1 import jobs_pb2

from . import errors
from .types import Job, JobFile, JobStatus

UPLOAD_CHUNK = 1024 * 1024  # bytes per UploadFile message

_STATUS: dict[int, JobStatus] = {
    jobs_pb2.JOB_STATUS_VALIDATING: "validating",
    jobs_pb2.JOB_STATUS_IN_PROGRESS: "in_progress",
    jobs_pb2.JOB_STATUS_FINALIZING: "finalizing",
    jobs_pb2.JOB_STATUS_COMPLETED: "completed",
    jobs_pb2.JOB_STATUS_FAILED: "failed",
    jobs_pb2.JOB_STATUS_CANCELLING: "cancelling",
    jobs_pb2.JOB_STATUS_CANCELLED: "cancelled",
}


class UploadRequests:
    """A file as UploadFile's requests: its name and purpose in the first, then its bytes.
    Iterable more than once (each time from the start), so a retried upload sends it all."""

    def __init__(self, path: str | os.PathLike[str], filename: str | None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no file {self.path}")
        self.filename = filename or self.path.name

    def __iter__(self) -> Iterator[jobs_pb2.UploadFileRequest]:
        with self.path.open("rb") as f:
            first = jobs_pb2.UploadFileRequest(
                filename=self.filename, purpose="batch", data=f.read(UPLOAD_CHUNK)
            )
            yield first
            while data := f.read(UPLOAD_CHUNK):
                yield jobs_pb2.UploadFileRequest(data=data)


def job_file(message: jobs_pb2.File) -> JobFile:
    return JobFile(
        id=message.id,
        bytes=message.bytes,
        created_at=message.created_at,
        filename=message.filename,
        purpose=message.purpose,
    )


def job_files(message: jobs_pb2.ListFilesResponse) -> tuple[JobFile, ...]:
    return tuple(job_file(f) for f in message.files)


def job(message: jobs_pb2.Job) -> Job:
    finished = message.completed_at or message.failed_at or message.cancelled_at
    counts = message.request_counts
    return Job(
        id=message.id,
        status=_STATUS.get(message.status, "validating"),
        endpoint=message.endpoint,
        input_file_id=message.input_file_id,
        total=counts.total,
        completed=counts.completed,
        failed=counts.failed,
        output_file_id=message.output_file_id or None,
        error_file_id=message.error_file_id or None,
        errors=tuple((e.code, e.message) for e in message.errors),
        metadata=dict(message.metadata),
        created_at=message.created_at,
        in_progress_at=message.in_progress_at or None,
        finished_at=finished or None,
    )


def jobs(message: jobs_pb2.ListJobsResponse) -> tuple[Job, ...]:
    return tuple(job(j) for j in message.jobs)


class Download:
    """A file's chunks (DownloadFile's responses) into ``destination``: written beside it
    first, checked to follow each other, moved into place once the stream has ended well.
    A context around reading the stream: on a failure the partial file goes, and a gRPC
    error is raised as the client's."""

    def __init__(self, destination: str | os.PathLike[str]) -> None:
        self.destination = Path(destination)
        self.partial = self.destination.with_name(self.destination.name + ".part")
        self.size = 0

    def __enter__(self) -> Download:
        self._out = self.partial.open("wb")
        return self

    def add(self, response: jobs_pb2.DownloadFileResponse) -> None:
        if response.offset != self.size:
            raise ValueError(f"the server sent bytes from {response.offset}, expected {self.size}")
        self._out.write(response.data)
        self.size += len(response.data)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._out.close()
        if error is None:
            os.replace(self.partial, self.destination)
            return
        self.partial.unlink(missing_ok=True)
        if isinstance(error, grpc.RpcError):
            raise errors.from_rpc_error(error) from error
