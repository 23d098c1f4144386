"""A head's version: a digest of the files its weights come from.

A trained head artifact's version is its folder's digest (head.json and its weights); a head
read from a checkpoint folder (the backbone's own, or a task checkpoint) is that folder's. A
retrained head has new weights, hence a new version; the same files give the same version on
every server and replica. GetModelInfo shows it, every response names the versions that
answered it (metadata `headserve-head-versions`), and a head's errors carry it.

A folder is read once per process while its files are unchanged (their names, sizes and
modification times): several heads on one backbone folder, or a test suite's many servers,
hash it once.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

PREFIX = "sha256:"
DIGITS = 16  # of the hex digest: 64 bits, plenty to tell versions of one head apart

_SEEN: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}
_LOCK = threading.Lock()


def _files(folder: Path) -> list[Path]:
    """The folder's files, hidden ones (a hub cache's .cache/, .git/) left out, in order."""
    found = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def folder_version(folder: Path) -> str:
    """`sha256:` and 16 hex digits over the folder's files (their paths and bytes); for a
    source that is a name rather than a folder, over the name."""
    folder = folder.resolve()
    if not folder.exists():  # a packaged model named, not a folder (efficientnet-lite0)
        return PREFIX + hashlib.sha256(folder.name.encode()).hexdigest()[:DIGITS]
    files = _files(folder) if folder.is_dir() else [folder]
    stats = tuple(
        (p.relative_to(folder).as_posix() if p != folder else p.name, s.st_size, s.st_mtime_ns)
        for p in files
        for s in (p.stat(),)
    )
    key = (str(folder), stats)
    with _LOCK:
        known = _SEEN.get(key)
    if known is not None:
        return known
    digest = hashlib.sha256()
    for path, (name, _, _) in zip(files, stats, strict=True):
        digest.update(name.encode() + b"\0")
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    version = PREFIX + digest.hexdigest()[:DIGITS]
    with _LOCK:
        _SEEN[key] = version
    return version
