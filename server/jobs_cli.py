"""`headserve jobs`: batch jobs on a running server started with --jobs-dir, over its `Jobs`
gRPC service (jobs/grpc_api.py), with headserve's own client.

    headserve jobs submit FILE [--server HOST:PORT] [--endpoint URL] [--watch]
    headserve jobs watch JOB_ID       a progress bar until the job ends
    headserve jobs fetch JOB_ID [--out DIR]   its output and error files
    headserve jobs list

`watch` (and `submit --watch`) exits 0 once the job completed, 1 if it failed or was cancelled.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .remote import open_client, server_args

if TYPE_CHECKING:
    from headserve.client import Client, Job


def add_commands(sub: Any) -> None:
    jobs = sub.add_parser(
        "jobs", help="submit, watch and fetch batch jobs on a server run with --jobs-dir"
    )
    actions = jobs.add_subparsers(dest="action", required=True)
    submit = actions.add_parser("submit", help="upload a JSONL file of requests and start a job")
    submit.add_argument("file", type=Path, help="OpenAI's Batch input format, one request a line")
    submit.add_argument(
        "--endpoint",
        default="/v1/embeddings",
        help="the url of every line: /v1/embeddings, /v1/rerank or a headserve RPC's full "
        "method name such as /headserve.v1.Heads/RunHeads (default: %(default)s)",
    )
    submit.add_argument("--watch", action="store_true", help="then watch it until it ends")
    watch = actions.add_parser("watch", help="a job's progress until it ends")
    fetch = actions.add_parser("fetch", help="download a finished job's output and error files")
    fetch.add_argument("--out", type=Path, default=Path("."), help="folder (default: here)")
    listed = actions.add_parser("list", help="the server's jobs, newest first")
    for parser in (watch, fetch):
        parser.add_argument("job", metavar="JOB_ID")
    for parser in (submit, watch, fetch, listed):
        server_args(parser, admin=False)
        parser.set_defaults(server="127.0.0.1:50051")


def run(args: argparse.Namespace) -> None:
    from headserve.client import HeadserveError

    action = {"submit": _submit, "watch": _watch, "fetch": _fetch, "list": _list}[args.action]
    try:
        with open_client(args, admin=False, timeout=120, max_retries=2) as c:
            action(c, args)
    except HeadserveError as exc:
        raise SystemExit(f"headserve jobs {args.action}: {exc.code.name} {exc.message}") from None


def _submit(client: Client, args: argparse.Namespace) -> None:
    try:
        uploaded = client.upload_job_file(args.file)
    except OSError as exc:
        raise SystemExit(f"headserve jobs submit: {args.file}: {exc.strerror or exc}") from None
    job = client.create_job(uploaded.id, args.endpoint)
    print(f"{job.id}: {job.total} requests, {job.status}")
    if args.watch:
        args.job = job.id
        _watch(client, args)


def _watch(client: Client, args: argparse.Namespace) -> None:
    from tqdm import tqdm

    job = client.get_job(args.job)
    with tqdm(total=job.total, unit="request", desc=args.job) as bar:
        while True:
            bar.update(job.completed + job.failed - bar.n)
            bar.set_postfix(failed=job.failed, status=job.status)
            if job.finished:
                break
            time.sleep(0.5)
            job = client.get_job(args.job)
    print(
        f"{job.id} {job.status}: {job.completed} answered, {job.failed} failed"
        + "".join(f"; {code}: {message}" for code, message in job.errors)
    )
    if job.status != "completed":
        sys.exit(1)


def _fetch(client: Client, args: argparse.Namespace) -> None:
    job = client.get_job(args.job)
    if not job.finished:
        raise SystemExit(f"headserve jobs fetch: {args.job} is {job.status}: not finished")
    args.out.mkdir(parents=True, exist_ok=True)
    for kind, file_id in (("output", job.output_file_id), ("error", job.error_file_id)):
        assert file_id is not None  # set once a job has finished
        target = client.download_job_file(file_id, args.out / f"{args.job}_{kind}.jsonl")
        with target.open("rb") as f:
            print(f"{target}: {sum(1 for _ in f)} lines")


def _list(client: Client, args: argparse.Namespace) -> None:
    after = None
    while page := client.list_jobs(after=after, limit=100):
        for job in page:
            _print(job)
        after = page[-1].id


def _print(job: Job) -> None:
    done = job.completed + job.failed
    print(f"{job.id}  {job.status:<11} {done}/{job.total}  {job.endpoint}")
