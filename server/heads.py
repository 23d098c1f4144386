"""The configured heads: loading them through their plugins, and finding one for a call."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from headserve.plugins.contract import BackboneView, Head, HeadSpec, LoadContext

from .discovery import FailedPlugin, LoadedPlugin
from .errors import HeadNotFound, HeadNotUsable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedHead:
    head: Head
    spec: HeadSpec
    plugin: LoadedPlugin
    is_default: bool


class DuplicateHead(ValueError):
    pass


class HeadRegistry:
    def __init__(
        self,
        heads: Sequence[ServedHead],
        failures: Sequence[FailedPlugin],
        *,
        allow_untrained: bool,
    ) -> None:
        self.heads = {h.spec.name: h for h in heads}
        self.failures = tuple(failures)
        self.allow_untrained = allow_untrained

    def usable(self, served: ServedHead) -> bool:
        return served.head.trained or self.allow_untrained

    def of_task(self, task: str) -> list[ServedHead]:
        return [h for h in self.heads.values() if h.plugin.plugin.task == task]

    def has_usable(self, task: str) -> bool:
        return any(self.usable(h) for h in self.of_task(task))

    def resolve(self, task: str, name: str | None) -> Head:
        """The head `name` (or the task's default) if it can serve a call of `task`."""
        if name:
            served = self.heads.get(name)
            if served is None or served.plugin.plugin.task != task:
                known = ", ".join(h.spec.name for h in self.of_task(task)) or "none"
                raise HeadNotFound(f"no {task} head named {name!r} (served: {known})", head=name)
        else:
            served = next((h for h in self.of_task(task) if h.is_default), None)
            if served is None:
                raise HeadNotFound(f"this server has no {task} head", head="")
        if not self.usable(served):
            raise HeadNotUsable(
                f"head {served.spec.name!r} is untrained ({served.head.detail}); serve a "
                f"checkpoint with trained {task} weights (--head {served.spec.name}="
                f"{served.spec.plugin}:DIR), or start the server with --allow-untrained",
                head=served.spec.name,
            )
        return served.head


def load_heads(
    specs: Sequence[HeadSpec],
    plugins: Iterable[LoadedPlugin],
    failures: Sequence[FailedPlugin],
    backbone: BackboneView,
    *,
    allow_untrained: bool,
) -> HeadRegistry:
    """Load every configured head; one that fails is reported and skipped."""
    names = [s.name for s in specs]
    for name in set(names):
        if names.count(name) > 1:
            sources = [f"{s.plugin}:{s.source or backbone.source}" for s in specs if s.name == name]
            raise DuplicateHead(f"head name {name!r} configured twice: {' and '.join(sources)}")
    by_name = {p.ref.name: p for p in plugins}
    failed = list(failures)
    loaded: list[tuple[HeadSpec, LoadedPlugin, Head]] = []
    for spec in specs:
        plugin = by_name.get(spec.plugin)
        if plugin is None:
            reason = (
                f"no plugin {spec.plugin!r} (installed: {', '.join(sorted(by_name)) or 'none'})"
            )
            failed.append(FailedPlugin(spec.name, reason))
            log.error("head %s: %s", spec.name, reason)
            continue
        started = time.perf_counter()
        try:
            head = plugin.plugin.load(LoadContext(spec, backbone))
        except Exception as exc:  # weights can be missing or corrupt: report, serve the rest
            failed.append(FailedPlugin(spec.name, f"{plugin.ref.label} failed to load: {exc}"))
            log.error("head %s (%s) failed to load: %s", spec.name, plugin.ref.label, exc)
            continue
        log.info(
            "head %s: %s from %s, %s, %.2fs",
            spec.name,
            plugin.plugin.task,
            spec.source or backbone.source,
            "trained" if head.trained else "UNTRAINED",
            time.perf_counter() - started,
        )
        loaded.append((spec, plugin, head))
    served = []
    for spec, plugin, head in loaded:
        task = plugin.plugin.task
        peers = [s for s, p, _ in loaded if p.plugin.task == task]
        served.append(ServedHead(head, spec, plugin, spec is _default_of(peers, task)))
    return HeadRegistry(served, failed, allow_untrained=allow_untrained)


def _default_of(specs: Sequence[HeadSpec], task: str) -> HeadSpec:
    """A head marked default=true, else the one named after its task, else the first."""
    for spec in specs:
        if spec.options.get("default", "").lower() in {"1", "true", "yes"}:
            return spec
    return next((s for s in specs if s.name == task), specs[0])
