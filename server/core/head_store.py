"""The head store (`--head-store DIR`): what the heads changed at run time are, kept so that a
restarted server comes up with them.

    DIR/heads.json            the state: heads loaded at run time (name, plugin, source,
                              options, version; a shadow's live head and share), configured
                              heads unloaded, and each task's default head when a call made
                              one
    DIR/artifacts/<digest>/   head artifacts uploaded in LoadHead calls, by their content

A change writes the whole state to a new file and renames it over heads.json (fsynced, then
the folder too): a server killed in the middle of a change finds the state from before it or
after it, never half. Each write is the next revision: the replicas of a Ray Serve
application share the store, each looks for a newer revision twice a second and serves it
(live_heads.LiveHeads.follow), and notes in DIR/replicas/ which revision it serves. The
state is written before the change is served, so a store that
cannot be written (read-only, full) refuses the change, and nothing else changes either.

At start, the store's heads are loaded as configured ones are (`--head`), after them: a head
of the same name replaces the configured one, an unloaded one is left out, and the stored
defaults are the defaults.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from headserve.plugins.contract import HeadSpec

from ..discovery import StartupError
from ..errors import StoreFailed

FORMAT = "headserve-head-store"
MANIFEST = "heads.json"


class UnreadableStore(StartupError):
    pass


@dataclass(frozen=True)
class StoredHead:
    name: str
    plugin: str
    source: str | None  # absolute, or relative to the store (an uploaded artifact)
    options: Mapping[str, str]
    version: str
    shadow_of: str | None = None  # a shadow head: the live head it runs beside
    fraction: float = 1.0  # a shadow's share of the live head's calls


@dataclass(frozen=True)
class StoreState:
    heads: tuple[StoredHead, ...] = ()
    unloaded: tuple[str, ...] = ()  # configured heads unloaded at run time
    defaults: Mapping[str, str] = field(default_factory=dict)  # task -> head name
    revision: int = 0  # one more at every change written

    def loaded(self, head: StoredHead, default_of: str | None) -> StoreState:
        """With `head` loaded (in place of one of its name), the default of `default_of`."""
        heads = (*(h for h in self.heads if h.name != head.name), head)
        unloaded = tuple(n for n in self.unloaded if n != head.name)
        defaults = dict(self.defaults)
        if default_of is not None:
            defaults[default_of] = head.name
        return StoreState(heads, unloaded, defaults)

    def without(self, name: str, task: str, heir: str | None) -> StoreState:
        """With head `name` (of `task`) unloaded; `heir`: its task's default now, if it was."""
        heads = tuple(h for h in self.heads if h.name != name)
        defaults = {t: n for t, n in self.defaults.items() if n != name}
        if heir is not None:
            defaults[task] = heir
        unloaded = (*(n for n in self.unloaded if n != name), name)
        return StoreState(heads, unloaded, defaults)

    def shadowed(self, head: StoredHead) -> StoreState:
        """With shadow `head` (in place of one of its name)."""
        return replace(self, heads=(*(h for h in self.heads if h.name != head.name), head))

    def dropped(self, name: str) -> StoreState:
        """Without the shadow `name`."""
        return replace(self, heads=tuple(h for h in self.heads if h.name != name))

    def with_default(self, task: str, name: str) -> StoreState:
        return replace(self, defaults={**self.defaults, task: name})


class HeadStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.artifacts = root / "artifacts"
        try:
            self.artifacts.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UnreadableStore(f"--head-store {root}: {exc.strerror or exc}") from exc
        self.state = self._read()

    def _read(self) -> StoreState:
        path = self.root / MANIFEST
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return StoreState()
        except (OSError, ValueError) as exc:
            raise UnreadableStore(f"--head-store {path}: unreadable: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise UnreadableStore(f"--head-store {path}: not a headserve head store")
        try:
            return StoreState(
                tuple(StoredHead(**h) for h in data.get("heads", ())),
                tuple(data.get("unloaded", ())),
                dict(data.get("defaults", {})),
                int(data.get("revision", 0)),
            )
        except TypeError as exc:
            raise UnreadableStore(f"--head-store {path}: malformed: {exc}") from exc

    def write(self, state: StoreState) -> None:
        """`state` in place of the store's, whole or not at all (StoreFailed: not at all),
        as the next revision."""
        state = replace(state, revision=self.state.revision + 1)
        body: dict[str, Any] = {"format": FORMAT, "version": 1, **asdict(state)}
        text = json.dumps(body, indent=2, sort_keys=True) + "\n"
        partial = None
        try:
            handle, partial = tempfile.mkstemp(prefix=".heads-", suffix=".json", dir=self.root)
            with os.fdopen(handle, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, self.root / MANIFEST)
            partial = None
            _fsync_folder(self.root)
        except OSError as exc:
            raise StoreFailed(
                f"the head store {self.root} cannot be written ({exc.strerror or exc}): "
                "nothing was changed"
            ) from exc
        finally:
            if partial is not None:
                Path(partial).unlink(missing_ok=True)
        self.state = state

    def reread(self) -> bool:
        """Whether another server (a replica beside this one) wrote a newer revision since
        this one last read or wrote it; the state is then that one."""
        try:
            latest = self._read()
        except UnreadableStore:
            return False  # being written now: read it at the next look
        if latest.revision <= self.state.revision:
            return False
        self.state = latest
        return True

    def ack(self, replica: str, revision: int) -> None:
        """Note that `replica` serves `revision` (replaced whole; no sync: it is news, not
        state, and the next look writes it again)."""
        folder = self.root / "replicas"
        folder.mkdir(exist_ok=True)
        partial = folder / f".{replica}.json"
        partial.write_text(json.dumps({"revision": revision, "at": time.time()}))
        os.replace(partial, folder / f"{replica}.json")

    def heard(self, within: float) -> dict[str, int]:
        """The replicas heard from in the last `within` seconds, each with the revision it
        serves."""
        found, now = {}, time.time()
        for path in (self.root / "replicas").glob("[!.]*.json"):  # not a note being written
            try:
                seen = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if now - float(seen.get("at", 0)) <= within:
                found[path.stem] = int(seen.get("revision", 0))
        return found

    def record(
        self, spec: HeadSpec, version: str, shadow_of: str | None = None, fraction: float = 1.0
    ) -> StoredHead:
        """How `spec` is kept: its source relative to the store when it is in it."""
        source = None
        if spec.source is not None:
            resolved = spec.source.resolve()
            inside = resolved.is_relative_to(self.root.resolve())
            source = str(resolved.relative_to(self.root.resolve()) if inside else resolved)
        options = dict(spec.options)
        return StoredHead(spec.name, spec.plugin, source, options, version, shadow_of, fraction)

    def shadows(self) -> list[tuple[StoredHead, HeadSpec]]:
        """The stored shadow heads, with their specs."""
        return [(h, self.spec(h)) for h in self.state.heads if h.shadow_of]

    def spec(self, head: StoredHead) -> HeadSpec:
        source = None if head.source is None else self.root / head.source
        return HeadSpec(head.name, head.plugin, source, dict(head.options))


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def merged(
    configured: tuple[HeadSpec, ...], store: HeadStore, task_of: Mapping[str, str]
) -> tuple[HeadSpec, ...]:
    """The heads a start loads: the configured ones but those the store unloaded or holds
    anew, then the store's; each stored default marked (`task_of`: plugin -> task)."""
    state = store.state
    stored = [store.spec(h) for h in state.heads if not h.shadow_of]  # shadows: loaded apart
    names = {s.name for s in stored} | set(state.unloaded)
    specs = [s for s in configured if s.name not in names] + stored
    chosen = set(state.defaults.values())
    out = []
    for spec in specs:
        task = task_of.get(spec.plugin)
        options = dict(spec.options)
        if task in state.defaults:
            options.pop("default", None)
            if spec.name in chosen:
                options["default"] = "true"
        out.append(replace(spec, options=options))
    return tuple(out)
