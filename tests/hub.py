"""A stub Hugging Face Hub for tests: the few HTTP endpoints huggingface_hub (2.4) calls to read
a model repository, served from local folders by http.server on 127.0.0.1 (port 0), in a daemon
thread. Point HF_ENDPOINT at `StubHub.url` and huggingface_hub's own code runs against it.

    GET  /api/models/{repo_id}                      HfApi.model_info (the default branch, main)
    GET  /api/models/{repo_id}/revision/{revision}  HfApi.model_info(revision=...)
    GET  /api/models/{repo_id}/tree/{revision}[/{path}]?recursive=...&cursor=...
                                                    HfApi.list_repo_tree (Link header pages)
    HEAD /{repo_id}/resolve/{revision}/{path}       hf_hub_download's metadata: X-Repo-Commit,
                                                    ETag (X-Linked-Etag, X-Linked-Size for LFS)
    GET  /{repo_id}/resolve/{revision}/{path}       the file itself (no redirect, no Xet)
    GET  /api/agent-harnesses                       an empty registry (huggingface_hub's
                                                    user-agent look-up, best effort)

A revision is a branch or tag name, or the 40-hex commit sha the stub gives it (sha1 of its
name). Errors are those of the Hub: 404 with X-Error-Code RepoNotFound, RevisionNotFound or
EntryNotFound, which huggingface_hub raises as RepositoryNotFoundError, RevisionNotFoundError and
RemoteEntryNotFoundError. Every file GET is recorded in `StubHub.downloads`.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qs, quote, unquote, urlsplit

DEFAULT_BRANCH = "main"
LFS = (".safetensors", ".bin", ".onnx", ".msgpack", ".h5", ".pt", ".pth")  # .gitattributes' own
_API = re.compile(
    r"/api/models/(?P<repo>.+?)(?:/(?P<op>revision|tree)/(?P<rev>[^/]+)(?P<sub>/.*)?)?"
)
_RESOLVE = re.compile(r"/(?P<repo>.+?)/resolve/(?P<rev>[^/]+)/(?P<path>.+)")


@dataclass(frozen=True)
class Revision:
    name: str
    sha: str  # the commit: sha1 of the name
    folder: Path

    def files(self) -> list[str]:
        return sorted(p.relative_to(self.folder).as_posix() for p in _walk(self.folder))


def _walk(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


class StubHub:
    """`with StubHub({"org/model": {"main": folder, "v2": other}}) as hub: hub.url ...`"""

    def __init__(self, repos: Mapping[str, Mapping[str, Path]], page_size: int = 1000) -> None:
        self.repos = {
            repo_id: {
                name: Revision(name, hashlib.sha1(name.encode()).hexdigest(), Path(folder))
                for name, folder in revisions.items()
            }
            for repo_id, revisions in repos.items()
        }
        self.page_size = page_size
        self.downloads: list[tuple[str, str]] = []  # (repo_id, path) of every file GET
        self.requests: list[str] = []  # "METHOD path?query", for failure messages
        self._lock = threading.Lock()
        self._hashes: dict[Path, tuple[str, str]] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        host, port = self._server.server_address[:2]
        self.url = f"http://{host!s}:{port}"

    def __enter__(self) -> StubHub:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def downloaded(self, repo_id: str) -> set[str]:
        with self._lock:
            return {path for repo, path in self.downloads if repo == repo_id}

    def sha(self, repo_id: str, revision: str) -> str:
        return self.repos[repo_id][revision].sha

    def revision(self, repo_id: str, revision: str | None) -> Revision:
        """The revision a name or commit sha names; LookupError with the Hub's error code."""
        revisions = self.repos.get(repo_id)
        if revisions is None:
            raise LookupError("RepoNotFound", f"Repository {repo_id} not found")
        revision = revision or DEFAULT_BRANCH
        for rev in revisions.values():
            if revision in (rev.name, rev.sha):
                return rev
        raise LookupError("RevisionNotFound", f"Invalid rev id: {revision}")

    def hashes(self, path: Path) -> tuple[str, str]:
        """(git blob sha1, sha256) of a file, as the Hub's oid and LFS oid."""
        with self._lock:
            if path not in self._hashes:
                data = path.read_bytes()
                blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
                self._hashes[path] = (blob, hashlib.sha256(data).hexdigest())
            return self._hashes[path]

    def tree_entry(self, rev: Revision, path: str) -> dict[str, object]:
        file = rev.folder / path
        if file.is_dir():
            return {
                "type": "directory",
                "oid": hashlib.sha1(path.encode()).hexdigest(),
                "size": 0,
                "path": path,
            }
        blob, sha256 = self.hashes(file)
        entry: dict[str, object] = {
            "type": "file",
            "oid": blob,
            "size": file.stat().st_size,
            "path": path,
        }
        if path.endswith(LFS):
            entry["lfs"] = {"oid": sha256, "size": file.stat().st_size, "pointerSize": 134}
        return entry


def _handler(hub: StubHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self._route(body=True)

        def do_HEAD(self) -> None:
            self._route(body=False)

        def _route(self, body: bool) -> None:
            with hub._lock:
                hub.requests.append(f"{self.command} {self.path}")
            url = urlsplit(self.path)
            try:
                if url.path == "/api/agent-harnesses":  # every client's best-effort look-up
                    self._json({"standardEnvVars": [], "harnesses": {}})
                elif api := _API.fullmatch(url.path):
                    repo_id = unquote(api["repo"])
                    rev = hub.revision(repo_id, api["rev"] and unquote(api["rev"]))
                    if api["op"] == "tree":
                        sub = unquote(api["sub"] or "").strip("/")
                        self._tree(repo_id, api["rev"], rev, sub, url.query)
                    else:
                        self._info(repo_id, rev)
                elif resolve := _RESOLVE.fullmatch(url.path):
                    repo_id = unquote(resolve["repo"])
                    rev = hub.revision(repo_id, unquote(resolve["rev"]))
                    self._file(repo_id, rev, unquote(resolve["path"]), body)
                else:
                    self._error(404, "NotFound", f"no route {url.path}")
            except LookupError as exc:
                code, message = exc.args
                self._error(404, code, message)

        def _info(self, repo_id: str, rev: Revision) -> None:
            self._json(
                {
                    "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                    "id": repo_id,
                    "modelId": repo_id,
                    "author": repo_id.split("/")[0],
                    "sha": rev.sha,
                    "lastModified": "2024-01-01T00:00:00.000Z",
                    "private": False,
                    "gated": False,
                    "disabled": False,
                    "tags": [],
                    "siblings": [{"rfilename": name} for name in rev.files()],
                }
            )

        def _tree(self, repo_id: str, named: str, rev: Revision, sub: str, query: str) -> None:
            params = parse_qs(query)
            recursive = params.get("recursive", ["false"])[0].lower() == "true"
            base = rev.folder / sub
            if not base.is_dir():
                raise LookupError("EntryNotFound", f"{sub} does not exist on {rev.name}")
            children = base.rglob("*") if recursive else base.iterdir()
            paths = sorted(p.relative_to(rev.folder).as_posix() for p in children)
            cursor = int(params.get("cursor", ["0"])[0])
            page = paths[cursor : cursor + hub.page_size]
            headers: dict[str, str] = {}
            if cursor + hub.page_size < len(paths):
                path = f"/api/models/{repo_id}/tree/{named}" + (f"/{quote(sub)}" if sub else "")
                more = f"recursive={str(recursive).lower()}&expand=false&cursor={cursor + hub.page_size}"
                headers["Link"] = f'<{hub.url}{path}?{more}>; rel="next"'
            self._json([hub.tree_entry(rev, p) for p in page], headers)

        def _file(self, repo_id: str, rev: Revision, path: str, body: bool) -> None:
            file = rev.folder / path
            if not file.is_file():
                self._error(404, "EntryNotFound", f"{path} does not exist on {rev.name}", rev.sha)
                return
            blob, sha256 = hub.hashes(file)
            size = file.stat().st_size
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.send_header("X-Repo-Commit", rev.sha)
            if path.endswith(LFS):  # the Hub names an LFS file by its sha256
                self.send_header("ETag", f'"{sha256}"')
                self.send_header("X-Linked-Etag", f'"{sha256}"')
                self.send_header("X-Linked-Size", str(size))
            else:
                self.send_header("ETag", f'"{blob}"')
            self.end_headers()
            if body:
                with hub._lock:
                    hub.downloads.append((repo_id, path))
                with file.open("rb") as f:
                    shutil.copyfileobj(f, self.wfile)

        def _json(self, value: object, headers: Mapping[str, str] | None = None) -> None:
            data = json.dumps(value).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, header in (headers or {}).items():
                self.send_header(name, header)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _error(self, status: int, code: str, message: str, commit: str | None = None) -> None:
            data = json.dumps({"error": message}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            if commit is not None:
                self.send_header("X-Repo-Commit", commit)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

    return Handler
