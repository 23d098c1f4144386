"""The HeadAdmin service's tasks: load, replace, unload a head and set a task's default while
the server runs (core/live_heads.py does the change). Admin calls only: the call pipeline
admits them on an admin token (`Task.admin`). On Ray Serve the replicas share a head store:
the replica a call reaches makes the change, the others follow it (LiveHeads.follow), and
the answer says how many serve it.

A head's weights come from a folder the server can read (`source`), or are uploaded in the
call as a head artifact's files (`files`): checked before anything is written (the total
size against --max-head-upload-bytes, each path inside the artifact, safetensors weights
only, a head.json), written to a folder of their own, and loaded from there like a
`--head NAME=DIR` artifact; a load that fails removes them again.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import TypeVar

from headserve.plugins.contract import HeadSpec
from headserve.v1 import admin_pb2 as pb

from ..config import ConfigError, artifact_plugin
from ..core.engine import Core
from ..core.live_heads import Change, LiveHeads
from ..errors import AdminOff, HeadserveError, InvalidArgument, StoreFailed, TooLarge
from .models import head_info, shadow_info
from .task import Task
from .wire import Call

M = TypeVar(
    "M",
    pb.LoadHeadResponse,
    pb.UnloadHeadResponse,
    pb.SetDefaultHeadResponse,
    pb.PromoteHeadResponse,
)
PICKLED = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")  # never loaded: safetensors only
MAX_FILES = 64


def _live(core: Core) -> LiveHeads:
    if core.live is None:
        raise AdminOff(core.live_off or "this server's heads cannot change while it runs")
    return core.live


async def _answer(core: Core, change: Change, kind: type[M]) -> M:
    """The change as the RPC's response: the head (as it serves now), and that this one
    server applied it; a load's, the version it replaced."""
    registry = core.registry
    shadow = registry.shadows.get(change.head.spec.name)
    if shadow is not None and shadow.served is change.head:
        info = shadow_info(registry, shadow)
    else:
        info = head_info(registry, change.head)
    applied = await core.live.applied() if core.live is not None else 1
    response = kind(head=info, applied=applied)
    if isinstance(response, pb.LoadHeadResponse | pb.PromoteHeadResponse):
        response.replaced_version = change.replaced_version
    return response


async def load_head(core: Core, request: pb.LoadHeadRequest, call: Call) -> pb.LoadHeadResponse:
    live = _live(core)
    uploaded, fresh = None, False
    if request.files:
        if request.source:
            raise InvalidArgument("files", "send the head's files or name its source, not both")
        limit = min(
            core.request_limits.max_head_upload_bytes, core.request_limits.max_message_bytes
        )
        where = live.store.artifacts if live.store is not None else _uploads()
        uploaded, fresh = await _upload(list(request.files), limit, where)
    try:
        source = uploaded or (Path(request.source) if request.source else None)
        spec = HeadSpec(request.name, _plugin(request, source), source, dict(request.options))
        change = await live.load(
            spec,
            replace=request.replace,
            shadow_of=request.shadow_of or None,
            fraction=request.shadow_fraction or 1.0,
        )
    except HeadserveError as exc:
        if uploaded is not None:
            if fresh:  # written by this call: no other head reads it
                shutil.rmtree(uploaded, ignore_errors=True)
            if isinstance(exc, InvalidArgument) and exc.field == "source":
                raise InvalidArgument("files", exc.description) from exc
        raise
    return await _answer(core, change, pb.LoadHeadResponse)


async def promote_head(
    core: Core, request: pb.PromoteHeadRequest, call: Call
) -> pb.PromoteHeadResponse:
    return await _answer(core, await _live(core).promote(request.name), pb.PromoteHeadResponse)


async def unload_head(
    core: Core, request: pb.UnloadHeadRequest, call: Call
) -> pb.UnloadHeadResponse:
    return await _answer(core, await _live(core).unload(request.name), pb.UnloadHeadResponse)


async def set_default_head(
    core: Core, request: pb.SetDefaultHeadRequest, call: Call
) -> pb.SetDefaultHeadResponse:
    return await _answer(
        core, await _live(core).set_default(request.name), pb.SetDefaultHeadResponse
    )


def _plugin(request: pb.LoadHeadRequest, source: Path | None) -> str:
    """The plugin named, or the one a head artifact names in its head.json."""
    if request.plugin:
        return request.plugin
    if source is None:
        raise InvalidArgument(
            "plugin", "name the head's plugin, or send a head artifact (which names its own)"
        )
    try:
        return artifact_plugin(source)
    except ConfigError as exc:
        field = "source" if request.source else "files"
        raise InvalidArgument(field, f"no plugin named, and {exc}") from exc


async def _upload(files: Sequence[pb.HeadFile], limit: int, where: Path) -> tuple[Path, bool]:
    """The uploaded artifact checked, then written to a folder of its own under `where`
    (named by its content's digest), and whether this call wrote it (else it was there)."""
    if len(files) > MAX_FILES:
        raise TooLarge("files", f"{len(files)} files, more than a head artifact has ({MAX_FILES})")
    total = sum(len(f.content) for f in files)
    if total > limit:
        raise TooLarge(
            "files",
            f"{total:,} bytes, more than this server takes in one upload "
            f"({limit:,}, --max-head-upload-bytes)",
        )
    paths = [_checked_path(i, f.path) for i, f in enumerate(files)]
    if len(set(paths)) != len(paths):
        raise InvalidArgument("files", "a path is sent twice")
    if PurePosixPath("head.json") not in paths:
        raise InvalidArgument("files", "a head artifact has a head.json: none was sent")
    digest = hashlib.sha256()
    for path, f in sorted(zip(paths, files, strict=True), key=lambda pair: str(pair[0])):
        digest.update(str(path).encode() + b"\0" + f.content + b"\0")
    folder = where / digest.hexdigest()[:16]
    contents = [(p, f.content) for p, f in zip(paths, files, strict=True)]
    return folder, await asyncio.to_thread(_write, folder, contents)


def _checked_path(index: int, text: str) -> PurePosixPath:
    field = f"files[{index}].path"
    path = PurePosixPath(text)
    if not text or path.is_absolute() or "\\" in text or ".." in path.parts or len(text) > 255:
        raise InvalidArgument(field, f"{text!r}: a relative path inside the artifact")
    if path.suffix.lower() in PICKLED:
        raise InvalidArgument(field, f"{text!r}: only safetensors weights are loaded")
    return path


def _write(folder: Path, files: Sequence[tuple[PurePosixPath, bytes]]) -> bool:
    """The files written to a fresh folder beside `folder`, which then takes its name; False
    when a folder there already holds the same content."""
    if folder.exists():
        return False
    partial = None
    try:
        partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=folder.parent))
        for path, content in files:
            target = partial / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        os.replace(partial, folder)
        return True
    except OSError as exc:
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)
        if folder.exists():
            return False  # another call wrote the same content first
        raise StoreFailed(
            f"the uploaded head cannot be written to {folder.parent} ({exc.strerror or exc}): "
            "nothing was changed"
        ) from exc


_UPLOADS: list[Path] = []


def _uploads() -> Path:
    """This process's upload folder (removed when it exits)."""
    if not _UPLOADS:
        made = Path(tempfile.mkdtemp(prefix="headserve-uploads-"))
        atexit.register(shutil.rmtree, made, True)
        _UPLOADS.append(made)
    return _UPLOADS[0]


_ADMIN = pb.DESCRIPTOR.services_by_name["HeadAdmin"]
LOAD = Task("load_head", _ADMIN, "LoadHead", load_head, streams=False, admin=True)
UNLOAD = Task("unload_head", _ADMIN, "UnloadHead", unload_head, streams=False, admin=True)
SET_DEFAULT = Task(
    "set_default_head", _ADMIN, "SetDefaultHead", set_default_head, streams=False, admin=True
)
PROMOTE = Task("promote_head", _ADMIN, "PromoteHead", promote_head, streams=False, admin=True)
