"""Where batch jobs live (`--jobs-dir DIR`): their state in SQLite (`DIR/jobs.sqlite3`), their
files' bytes in `DIR/files/`, and a lock (`DIR/lock`) that one server holds while it runs.

A file is an upload (a job's input) or a job's output or errors. A job's progress is what the
runner committed: the input lines it has answered, how many bytes of its output and error
files hold their answers, and its counts; bytes past those offsets were written by a run that
did not commit them (the server was killed between), so a run that resumes the job cuts them
off first, and every line is answered exactly once.

Everything here runs on the event loop, in short transactions (a job's progress is committed
once per chunk of lines, not per line).
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..discovery import StartupError

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    lines INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    input_file_id TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    completion_window TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    in_progress_at INTEGER,
    finalizing_at INTEGER,
    completed_at INTEGER,
    failed_at INTEGER,
    cancelling_at INTEGER,
    cancelled_at INTEGER,
    total INTEGER NOT NULL,
    done_lines INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    output_file_id TEXT NOT NULL,
    error_file_id TEXT NOT NULL,
    output_bytes INTEGER NOT NULL DEFAULT 0,
    error_bytes INTEGER NOT NULL DEFAULT 0,
    metadata TEXT,
    errors TEXT
);
"""

# a job's life, OpenAI's names: queued as "validating", then in_progress, finalizing,
# completed; or failed; or cancelling, cancelled
UNFINISHED = ("validating", "in_progress", "finalizing", "cancelling")


@dataclass(frozen=True)
class FileRecord:
    id: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    lines: int = 0


@dataclass(frozen=True)
class JobRecord:
    id: str
    seq: int
    input_file_id: str
    endpoint: str
    completion_window: str
    status: str
    created_at: int
    in_progress_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    total: int
    done_lines: int
    completed: int
    failed: int
    output_file_id: str
    error_file_id: str
    output_bytes: int
    error_bytes: int
    metadata: str | None
    errors: str | None


_JOB_COLUMNS = ", ".join(f.name for f in fields(JobRecord))
_FILE_COLUMNS = ", ".join(f.name for f in fields(FileRecord))


class Store:
    """The jobs folder of one server, locked for it while open."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files_dir = folder / "files"
        try:
            self.files_dir.mkdir(parents=True, exist_ok=True)
            (folder / "tmp").mkdir(exist_ok=True)
            self._lock = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StartupError(f"--jobs-dir {folder}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._lock, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self._lock)
            raise StartupError(
                f"--jobs-dir {folder} is in use by another headserve server (pid {holder}); "
                "each server needs a folder of its own"
            ) from None
        os.ftruncate(self._lock, 0)
        os.pwrite(self._lock, f"{os.getpid()}\n".encode(), 0)
        self._db = sqlite3.connect(folder / "jobs.sqlite3", isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self.pending = 0
        self._count_pending()

    def close(self) -> None:
        self._db.close()
        os.close(self._lock)  # the lock goes with it

    # --- files ---------------------------------------------------------------------------------

    def path(self, file_id: str) -> Path:
        return self.files_dir / file_id

    def temporary(self) -> Path:
        """A path in the folder for an upload still being written (renamed once checked)."""
        return self.folder / "tmp" / uuid.uuid4().hex

    def add_file(self, source: Path, filename: str, purpose: str, lines: int) -> FileRecord:
        """`source` (written in the folder) as a new file."""
        record = FileRecord(
            f"file-{uuid.uuid4().hex[:24]}",
            filename,
            purpose,
            source.stat().st_size,
            int(time.time()),
            lines,
        )
        os.replace(source, self.path(record.id))
        self._db.execute(
            f"INSERT INTO files ({_FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            (
                record.id,
                record.filename,
                record.purpose,
                record.bytes,
                record.created_at,
                record.lines,
            ),
        )
        return record

    def file(self, file_id: str) -> FileRecord | None:
        row = self._db.execute(
            f"SELECT {_FILE_COLUMNS} FROM files WHERE id = ?", (file_id,)
        ).fetchone()
        return FileRecord(*row) if row else None

    def files(self, purpose: str | None = None) -> list[FileRecord]:
        query = f"SELECT {_FILE_COLUMNS} FROM files"
        rows = (
            self._db.execute(query + " WHERE purpose = ? ORDER BY created_at, id", (purpose,))
            if purpose
            else self._db.execute(query + " ORDER BY created_at, id")
        )
        return [FileRecord(*row) for row in rows]

    def delete_file(self, file_id: str) -> bool:
        deleted = self._db.execute("DELETE FROM files WHERE id = ?", (file_id,)).rowcount > 0
        if deleted:
            self.path(file_id).unlink(missing_ok=True)
        return deleted

    # --- jobs ----------------------------------------------------------------------------------

    def add_job(
        self, source: FileRecord, endpoint: str, window: str, metadata: dict[str, Any] | None
    ) -> JobRecord:
        job_id = f"batch_{uuid.uuid4().hex[:24]}"
        now = int(time.time())
        output, errors = f"file-{job_id}-output", f"file-{job_id}-errors"
        for file_id in (output, errors):
            self.path(file_id).touch()
        with self._db:
            self._db.execute("BEGIN")
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            self._db.execute(
                "INSERT INTO jobs (id, seq, input_file_id, endpoint, completion_window, status, "
                "created_at, total, output_file_id, error_file_id, metadata) "
                "VALUES (?, ?, ?, ?, ?, 'validating', ?, ?, ?, ?, ?)",
                (
                    job_id,
                    seq,
                    source.id,
                    endpoint,
                    window,
                    now,
                    source.lines,
                    output,
                    errors,
                    json.dumps(metadata) if metadata else None,
                ),
            )
        self._count_pending()
        job = self.job(job_id)
        assert job is not None
        return job

    def job(self, job_id: str) -> JobRecord | None:
        row = self._db.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        return JobRecord(*row) if row else None

    def jobs(self, after: str | None = None, limit: int = 20) -> list[JobRecord]:
        """Newest first; `after`: those older than that job."""
        if after:
            anchor = self.job(after)
            seq = anchor.seq if anchor else 0
            rows = self._db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE seq < ? ORDER BY seq DESC LIMIT ?",
                (seq, limit),
            )
        else:
            rows = self._db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY seq DESC LIMIT ?", (limit,)
            )
        return [JobRecord(*row) for row in rows]

    def unfinished(self) -> Iterator[JobRecord]:
        """Jobs still to run or finish, oldest first."""
        marks = ", ".join("?" * len(UNFINISHED))
        rows = self._db.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status IN ({marks}) ORDER BY seq", UNFINISHED
        ).fetchall()
        return (JobRecord(*row) for row in rows)

    def _count_pending(self) -> None:
        """`pending`: lines of unfinished jobs not answered yet (read by the metrics' thread,
        which may not use the connection)."""
        marks = ", ".join("?" * len(UNFINISHED))
        row = self._db.execute(
            f"SELECT COALESCE(SUM(total - done_lines), 0) FROM jobs WHERE status IN ({marks})",
            UNFINISHED,
        ).fetchone()
        self.pending = int(row[0])

    def set_status(self, job_id: str, status: str, errors: list[dict] | None = None) -> None:
        """`status`, and its time (`<status>_at`) now."""
        column = f"{status}_at"
        with self._db:
            self._db.execute(
                f"UPDATE jobs SET status = ?, {column} = ?, errors = COALESCE(?, errors) "
                "WHERE id = ?",
                (
                    status,
                    int(time.time()),
                    json.dumps({"data": errors}) if errors else None,
                    job_id,
                ),
            )
        self._count_pending()

    def commit(
        self, job_id: str, done_lines: int, completed: int, failed: int, output: int, error: int
    ) -> None:
        """A chunk of lines answered: its lines, counts and the files' committed ends."""
        with self._db:
            self._db.execute(
                "UPDATE jobs SET done_lines = ?, completed = ?, failed = ?, output_bytes = ?, "
                "error_bytes = ? WHERE id = ?",
                (done_lines, completed, failed, output, error, job_id),
            )
        self._count_pending()

    def publish(self, job: JobRecord) -> None:
        """A finished job's output and error files, listed as files."""
        now = int(time.time())
        with self._db:
            for file_id, size in (
                (job.output_file_id, job.output_bytes),
                (job.error_file_id, job.error_bytes),
            ):
                self._db.execute(
                    f"INSERT OR REPLACE INTO files ({_FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, 0)",
                    (
                        file_id,
                        f"{job.id}_{file_id.rsplit('-', 1)[1]}.jsonl",
                        "batch_output",
                        size,
                        now,
                    ),
                )
