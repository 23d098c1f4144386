"""`headserve jobs`: batch jobs on a running server started with --jobs-dir, over its
OpenAI-style HTTP endpoint (the Files and Batch APIs, jobs/openai_api.py).

    headserve jobs submit FILE --server URL [--endpoint /v1/embeddings] [--watch]
    headserve jobs watch JOB_ID --server URL      a progress bar until the job ends
    headserve jobs fetch JOB_ID --server URL [--out DIR]   its output and error files
    headserve jobs list --server URL

`watch` (and `submit --watch`) exits 0 once the job completed, 1 if it failed or was cancelled.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from .calls.security import TOKENS_ENV, SecurityError, read_tokens

FINISHED = ("completed", "failed", "cancelled")


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
        help="the job's endpoint, as OpenAI's batches take it (default: %(default)s)",
    )
    submit.add_argument("--watch", action="store_true", help="then watch it until it ends")
    watch = actions.add_parser("watch", help="a job's progress until it ends")
    fetch = actions.add_parser("fetch", help="download a finished job's output and error files")
    fetch.add_argument("--out", type=Path, default=Path("."), help="folder (default: here)")
    listed = actions.add_parser("list", help="the server's jobs, newest first")
    for parser in (watch, fetch):
        parser.add_argument("job", metavar="JOB_ID")
    for parser in (submit, watch, fetch, listed):
        parser.add_argument(
            "--server",
            default="http://127.0.0.1:8080",
            metavar="URL",
            help="the server's OpenAI-style HTTP endpoint (its --http-port; default: %(default)s)",
        )
        parser.add_argument(
            "--token-file",
            type=Path,
            help=f"a file whose first token is a caller's token (or ${TOKENS_ENV})",
        )


def run(args: argparse.Namespace) -> None:
    import httpx

    try:
        tokens = read_tokens(args.token_file, variable=TOKENS_ENV, flag="--token-file")
    except SecurityError as exc:
        raise SystemExit(f"headserve jobs: {exc}") from None
    headers = {"authorization": f"Bearer {tokens[0]}"} if tokens else {}
    base = args.server.rstrip("/") + "/v1"
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=120) as http:
            {"submit": _submit, "watch": _watch, "fetch": _fetch, "list": _list}[args.action](
                http, args
            )
    except httpx.HTTPStatusError as exc:
        raise SystemExit(f"headserve jobs {args.action}: {_message(exc.response)}") from None
    except httpx.HTTPError as exc:
        raise SystemExit(f"headserve jobs {args.action}: {args.server}: {exc}") from None


def _message(response: Any) -> str:
    try:
        error = response.json()["error"]
        return f"{response.status_code} {error['message']}"
    except (ValueError, KeyError, TypeError):
        return f"{response.status_code} {response.text[:200]}"


def _submit(http: Any, args: argparse.Namespace) -> None:
    try:
        source = args.file.open("rb")
    except OSError as exc:
        raise SystemExit(f"headserve jobs submit: {args.file}: {exc.strerror}") from None
    with source:
        files = {"file": (args.file.name, source, "application/jsonl")}
        uploaded = http.post("/files", data={"purpose": "batch"}, files=files)
    uploaded.raise_for_status()
    file_id = uploaded.json()["id"]
    body = {"input_file_id": file_id, "endpoint": args.endpoint, "completion_window": "24h"}
    created = http.post("/batches", json=body)
    created.raise_for_status()
    job = created.json()
    print(f"{job['id']}: {job['request_counts']['total']} requests, {job['status']}")
    if args.watch:
        args.job = job["id"]
        _watch(http, args)


def _watch(http: Any, args: argparse.Namespace) -> None:
    from tqdm import tqdm

    job = _job(http, args.job)
    with tqdm(total=job["request_counts"]["total"], unit="request", desc=args.job) as bar:
        while True:
            counts = job["request_counts"]
            bar.update(counts["completed"] + counts["failed"] - bar.n)
            bar.set_postfix(failed=counts["failed"], status=job["status"])
            if job["status"] in FINISHED:
                break
            time.sleep(0.5)
            job = _job(http, args.job)
    counts = job["request_counts"]
    print(
        f"{job['id']} {job['status']}: {counts['completed']} answered, {counts['failed']} failed"
        + "".join(f"; {e['code']}: {e['message']}" for e in (job["errors"] or {}).get("data", []))
    )
    if job["status"] != "completed":
        sys.exit(1)


def _fetch(http: Any, args: argparse.Namespace) -> None:
    job = _job(http, args.job)
    if job["status"] not in FINISHED:
        raise SystemExit(f"headserve jobs fetch: {args.job} is {job['status']}: not finished")
    args.out.mkdir(parents=True, exist_ok=True)
    for kind in ("output", "error"):
        file_id = job[f"{kind}_file_id"]
        target = args.out / f"{args.job}_{kind}.jsonl"
        with http.stream("GET", f"/files/{file_id}/content") as response:
            response.raise_for_status()
            with target.open("wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
        lines = sum(1 for _ in target.open("rb"))
        print(f"{target}: {lines} lines")


def _list(http: Any, args: argparse.Namespace) -> None:
    reply = http.get("/batches", params={"limit": 100})
    reply.raise_for_status()
    for job in reply.json()["data"]:
        counts = job["request_counts"]
        done = counts["completed"] + counts["failed"]
        print(f"{job['id']}  {job['status']:<11} {done}/{counts['total']}  {job['endpoint']}")


def _job(http: Any, job_id: str) -> dict[str, Any]:
    reply = http.get(f"/batches/{job_id}")
    reply.raise_for_status()
    job: dict[str, Any] = reply.json()
    return job
