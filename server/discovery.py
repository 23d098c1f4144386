"""Finding head plugins, in two phases (after flake8's finder).

`find_plugins` lists the entry points of group `headserve.heads` without
importing anything; `load_plugins` imports and validates them. Both are pure
functions over `importlib.metadata` distributions and return immutable
records, so tests can feed fake distributions.
"""

from __future__ import annotations

import importlib.metadata as md
import logging
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from headserve.plugins.contract import CONTRACT_VERSION, ENTRY_POINT_GROUP, HeadPlugin

log = logging.getLogger(__name__)


class StartupError(ValueError):
    """A configuration the server must not start with; the message says why."""


class DuplicatePlugin(StartupError):
    pass


class PluginRef(NamedTuple):
    name: str
    value: str  # "module:attr"
    distribution: str
    version: str
    entry_point: md.EntryPoint

    @property
    def label(self) -> str:
        return f"{self.distribution}[{self.name}]"


@dataclass(frozen=True)
class LoadedPlugin:
    ref: PluginRef
    plugin: HeadPlugin


@dataclass(frozen=True)
class FailedPlugin:
    label: str
    reason: str


def find_plugins(
    distributions: Iterable[md.Distribution] | None = None, group: str = ENTRY_POINT_GROUP
) -> tuple[PluginRef, ...]:
    """Entry points of `group` (headserve.heads), sorted and de-duplicated, not imported."""
    dists = md.distributions() if distributions is None else distributions
    seen: dict[tuple[str, str, str], PluginRef] = {}
    for dist in dists:
        name = dist.metadata["Name"] or "?"
        for ep in dist.entry_points:
            if ep.group != group:
                continue
            ref = PluginRef(ep.name, ep.value, name, dist.version or "", ep)
            seen.setdefault((name, ep.name, ep.value), ref)
    return tuple(sorted(seen.values(), key=lambda r: (r.name, r.distribution)))


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def allowed(
    refs: Iterable[PluginRef], allow: Collection[str] | None
) -> tuple[tuple[PluginRef, ...], tuple[PluginRef, ...]]:
    """Split `refs` by the allow-list (plugin or distribution names); None allows all.

    Filtering happens before import: a plugin off the list never runs code in the server.
    """
    refs = tuple(refs)
    if allow is None:
        return refs, ()
    names = {_normal(a) for a in allow}
    keep = tuple(r for r in refs if _normal(r.name) in names or _normal(r.distribution) in names)
    return keep, tuple(r for r in refs if r not in keep)


def clashes(refs: Iterable[PluginRef]) -> dict[str, tuple[PluginRef, ...]]:
    """Plugin names provided by more than one entry point."""
    by_name: dict[str, list[PluginRef]] = {}
    for ref in refs:
        by_name.setdefault(ref.name, []).append(ref)
    return {name: tuple(found) for name, found in by_name.items() if len(found) > 1}


def check_unique(refs: Iterable[PluginRef]) -> None:
    """Two plugins of one name stop the server: which one would serve is a guess."""
    for name, found in sorted(clashes(refs).items()):
        sources = " and ".join(f"{r.distribution} {r.version} ({r.value})" for r in found)
        raise DuplicatePlugin(
            f"plugin name {name!r} is provided twice: {sources}; uninstall one, "
            "or keep one out with --plugins"
        )


_MEMBERS = ("task", "contract_version", "load")  # HeadPlugin's


def validate(plugin: object) -> str | None:
    """Why `plugin` does not meet the head contract (HeadPlugin), or None when it does."""
    if not isinstance(plugin, HeadPlugin):
        missing = [a for a in _MEMBERS if not hasattr(plugin, a)]
        return "not a head plugin: missing " + ", ".join(missing)
    if not callable(plugin.load):
        return "not a head plugin: load is not callable"
    if not isinstance(plugin.task, str) or not plugin.task:
        return "not a head plugin: task must be a non-empty string"
    if plugin.contract_version != CONTRACT_VERSION:
        return (
            f"written for head contract version {plugin.contract_version!r}, "
            f"this server speaks {CONTRACT_VERSION}"
        )
    return None


def load_plugins(
    refs: Iterable[PluginRef],
) -> tuple[tuple[LoadedPlugin, ...], tuple[FailedPlugin, ...]]:
    """Import and validate each plugin; a broken one is logged and reported, never fatal."""
    loaded: list[LoadedPlugin] = []
    failed: list[FailedPlugin] = []
    for ref in refs:
        try:
            obj = ref.entry_point.load()
            plugin = obj() if isinstance(obj, type) else obj
        except Exception as exc:  # a third party's import can raise anything
            failed.append(FailedPlugin(ref.label, f"failed to import {ref.value}: {exc!r}"))
            # its author needs the traceback; GetModelInfo keeps the short reason
            log.error("plugin %s failed to import: %r", ref.label, exc, exc_info=exc)
            continue
        problem = validate(plugin)
        if problem is not None:
            failed.append(FailedPlugin(ref.label, problem))
            log.error("plugin %s refused: %s", ref.label, problem)
            continue
        assert isinstance(plugin, HeadPlugin)  # validate checked it
        loaded.append(LoadedPlugin(ref, plugin))
    return tuple(loaded), tuple(failed)


class PluginStatus(NamedTuple):
    name: str
    task: str
    distribution: str
    version: str
    status: str  # "ok", or why the server would not use it


def plugin_report(
    allow: Collection[str] | None, distributions: Iterable[md.Distribution] | None = None
) -> tuple[PluginStatus, ...]:
    """Every installed plugin and what the server would make of it (`headserve heads`).

    Imports the allowed plugins, as the server would; loads no weights.
    """
    refs = find_plugins(distributions)
    keep, kept_out = allowed(refs, allow)
    clashing = clashes(keep)
    loaded, failed = load_plugins(r for r in keep if r.name not in clashing)
    tasks = {p.ref: str(p.plugin.task) for p in loaded}
    reasons = {f.label: f.reason for f in failed}
    rows = []
    for ref in refs:
        if ref in kept_out:
            status = "not allowed (--plugins)"
        elif ref.name in clashing:
            others = [r.distribution for r in clashing[ref.name] if r is not ref]
            status = (
                f"duplicate name, also provided by {', '.join(others)}: server refuses to start"
            )
        else:
            status = reasons.get(ref.label, "ok")
        rows.append(
            PluginStatus(ref.name, tasks.get(ref, "?"), ref.distribution, ref.version, status)
        )
    return tuple(rows)
