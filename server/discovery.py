"""Finding head plugins, in two phases (after flake8's finder).

`find_plugins` lists the entry points of group `headserve.heads` without
importing anything; `load_plugins` imports and validates them. Both are pure
functions over `importlib.metadata` distributions and return immutable
records, so tests can feed fake distributions.
"""

from __future__ import annotations

import importlib.metadata as md
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from headserve.plugins.contract import CONTRACT_VERSION, ENTRY_POINT_GROUP

log = logging.getLogger(__name__)


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
    plugin: Any  # satisfies contract.HeadPlugin


@dataclass(frozen=True)
class FailedPlugin:
    label: str
    reason: str


def find_plugins(distributions: Iterable[md.Distribution] | None = None) -> tuple[PluginRef, ...]:
    """Entry points of group headserve.heads, sorted and de-duplicated, not imported."""
    dists = md.distributions() if distributions is None else distributions
    seen: dict[tuple[str, str, str], PluginRef] = {}
    for dist in dists:
        name = dist.metadata["Name"] or "?"
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP:
                continue
            ref = PluginRef(ep.name, ep.value, name, dist.version or "", ep)
            seen.setdefault((name, ep.name, ep.value), ref)
    return tuple(sorted(seen.values(), key=lambda r: (r.name, r.distribution)))


def validate(plugin: Any) -> str | None:
    """Why `plugin` does not meet the head contract, or None when it does."""
    missing = [a for a in ("task", "contract_version", "load") if not hasattr(plugin, a)]
    if missing:
        return "not a head plugin: missing " + ", ".join(missing)
    if not callable(plugin.load):
        return "not a head plugin: load is not callable"
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
            log.error("plugin %s failed to import: %r", ref.label, exc)
            continue
        problem = validate(plugin)
        if problem is not None:
            failed.append(FailedPlugin(ref.label, problem))
            log.error("plugin %s refused: %s", ref.label, problem)
            continue
        loaded.append(LoadedPlugin(ref, plugin))
    return tuple(loaded), tuple(failed)
