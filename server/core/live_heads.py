"""Heads changed while the server runs (the HeadAdmin RPCs): loaded, replaced, unloaded and
made default, on the backbone already loaded.

A change builds a new HeadRegistry and puts it in place in one assignment. A call resolves
its heads once, as it is accepted, and holds those Head objects to its end: a call accepted
before a replace or an unload finishes on the head it started with, and one accepted after
sees the change; none sees neither. Changes run one at a time; a head loads on a thread, so
calls flow meanwhile. A change that fails changes nothing and says why, with the checks of
the start (heads.load_one: plugin and allow-list, folder, options, the plugin's own load and
its contract), and a head with untrained weights is refused (the start serves one only with
--allow-untrained). With a head store (head_store.py), a change is recorded there before it
is served; one the store cannot record is refused.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import re
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from headserve.plugins.contract import BackboneView, Head, HeadSpec

from ..discovery import LoadedPlugin
from ..errors import HeadExists, HeadNotFound, InvalidArgument
from .head_store import HeadStore, StoreState, merged
from .heads import HeadRegistry, Refusal, ServedHead, default_of, load_one, marked_default
from .shadows import Shadow
from .threads import lower_priority

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
LOAD_NICE = 19  # as the model workers' (limits.Limits.worker_nice)
FOLLOW_EVERY = 0.5  # seconds between a replica's looks at the shared store
HEARD_WITHIN = 3.0  # a replica not heard from for this long is gone
FOLLOW_WAIT = 5.0  # how long a change waits for the other replicas to serve it

log = logging.getLogger(__name__)


class Holder(Protocol):
    """What holds the registry calls read (the Core)."""

    registry: HeadRegistry


@dataclass(frozen=True)
class HeadLoader:
    """What loading a head needs: the plugins found at start, the backbone, the plugins the
    allow-list kept out (named in the refusal); and the heads the start was configured with
    (what a replica following the store starts from)."""

    plugins: Mapping[str, LoadedPlugin]
    backbone: BackboneView
    not_allowed: tuple[str, ...] = ()
    configured: tuple[HeadSpec, ...] = ()
    broken: Mapping[str, str] = dataclasses.field(default_factory=dict)  # plugin -> why not


@dataclass(frozen=True)
class Change:
    head: ServedHead  # as it now serves (for an unload: as it served)
    replaced_version: str = ""


class LiveHeads:
    def __init__(self, holder: Holder, loader: HeadLoader, store: HeadStore | None = None) -> None:
        self._holder = holder
        self._loader = loader
        self.store = store  # where each change is recorded before it is served
        self.replica: str | None = None  # a replica's name, where replicas share the store
        # the store's revision this server's registry serves
        self.served = store.state.revision if store is not None else 0
        self._lock = asyncio.Lock()
        # loads run on a thread of their own, below the event loop's priority as the model
        # workers are: a load takes the CPU the live calls leave
        self._loads = ThreadPoolExecutor(1, "headserve-head-load", lower_priority, (LOAD_NICE,))

    async def follow(self) -> int:
        """Serve the store's newest revision when another server wrote it (a replica beside
        this one, sharing the store); the revision this one serves."""
        store = self.store
        assert store is not None
        async with self._lock:
            if await asyncio.to_thread(store.reread):
                self._holder.registry = await self._wanted(store)
            self.served = store.state.revision
            return self.served

    async def applied(self) -> int:
        """How many servers serve this one's latest change: 1, or on replicas sharing the
        store, those that serve its revision within FOLLOW_WAIT seconds (all, normally)."""
        store, replica = self.store, self.replica
        if store is None or replica is None:
            return 1
        revision = self.served = store.state.revision
        await asyncio.to_thread(store.ack, replica, revision)
        until = time.monotonic() + FOLLOW_WAIT
        while True:
            heard = await asyncio.to_thread(store.heard, HEARD_WITHIN)
            serving = sum(served >= revision for served in heard.values())
            if serving >= len(heard) or time.monotonic() >= until:
                return serving
            await asyncio.sleep(FOLLOW_EVERY / 4)

    async def _wanted(self, store: HeadStore) -> HeadRegistry:
        """The registry the store's state asks for: the configured heads, then the stored
        ones, as a start would load them; a head already served as asked is kept (a call on
        it goes on), one that fails to load is left as it was, with an error line."""
        registry, loader = self._holder.registry, self._loader
        task_of = {name: p.plugin.task for name, p in loader.plugins.items()}
        loaded: list[tuple[HeadSpec, ServedHead]] = []
        for spec in merged(loader.configured, store, task_of):
            current = registry.heads.get(spec.name)
            if current is not None and _same(current.spec, spec):
                loaded.append((spec, current))
                continue
            try:
                plugin, head, version = await self._loaded(spec)
            except InvalidArgument as exc:
                log.error("head %s: the store's revision asks for it, but: %s", spec.name, exc)
                if current is not None:
                    loaded.append((current.spec, current))
                continue
            loaded.append((spec, ServedHead(head, spec, plugin, False, version)))
        heads = []
        for spec, served in loaded:
            peers = [s for s, h in loaded if h.task == served.task]
            heads.append(
                dataclasses.replace(served, is_default=spec is default_of(peers, served.task))
            )
        shadows: list[Shadow] = []
        names = {h.spec.name for h in heads}
        for kept, spec in store.shadows():
            running = registry.shadows.get(kept.name)
            if running is not None and running.live == kept.shadow_of:
                if _same(running.served.spec, spec):
                    shadows.append(running)
                    continue
            if kept.shadow_of not in names:
                continue
            try:
                plugin, head, version = await self._loaded(spec)
            except InvalidArgument as exc:
                log.error("shadow %s: the store's revision asks for it, but: %s", kept.name, exc)
                continue
            candidate = ServedHead(head, spec, plugin, False, version)
            shadows.append(Shadow(candidate, kept.shadow_of or "", kept.fraction))
        return registry.replaced(heads, shadows)

    async def _record(self, state: StoreState | None) -> None:
        """`state` written to the store (StoreFailed: not, and nothing is to change)."""
        if self.store is not None and state is not None:
            await asyncio.to_thread(self.store.write, state)

    async def load(
        self,
        spec: HeadSpec,
        *,
        replace: bool = False,
        shadow_of: str | None = None,
        fraction: float = 1.0,
    ) -> Change:
        """`spec` loaded and served; with `replace`, in place of the head of its name; with
        `shadow_of`, as that head's shadow on a `fraction` of its calls (shadows.py)."""
        if not NAME.fullmatch(spec.name):
            raise InvalidArgument(
                "name", f"{spec.name!r}: 1-64 letters, digits, '.', '_' or '-', from a letter"
            )
        if shadow_of is not None:
            return await self._shadow(spec, shadow_of, fraction, replace)
        async with self._lock:
            registry = self._holder.registry
            if spec.name in registry.shadows:
                raise HeadExists(
                    f"{spec.name!r} is the name of a shadow head: promote or unload it first",
                    head=spec.name,
                )
            old = registry.heads.get(spec.name)
            if old is not None and not replace:
                raise HeadExists(
                    f"a head named {spec.name!r} is served ({old.task}, {old.version}): "
                    "load with replace to replace it, or pick another name",
                    head=spec.name,
                )
            if old is None and replace:
                raise HeadNotFound(f"no head named {spec.name!r} to replace", head=spec.name)
            plugin, head, version = await self._loaded(spec)
            task = plugin.plugin.task
            if old is not None and old.task != task:
                raise InvalidArgument(
                    "plugin",
                    f"head {spec.name!r} is a {old.task} head: a {task} head cannot replace "
                    "it (unload it, then load the new one)",
                )
            peers = [h for h in registry.of_task(task) if h is not old]
            default = old.is_default if old is not None else not peers or marked_default(spec)
            served = ServedHead(head, spec, plugin, default, version)
            heads = [served if h is old else h for h in registry.heads.values()]
            if old is None:
                heads.append(served)
            if self.store is not None:
                record = self.store.record(spec, version)
                await self._record(self.store.state.loaded(record, task if default else None))
            self._holder.registry = registry.replaced(_one_default(heads, served))
            return Change(served, old.version if old is not None else "")

    async def _loaded(self, spec: HeadSpec) -> tuple[LoadedPlugin, Head, str]:
        """`spec` loaded (on a thread), trained, with its version; else why not."""
        loader = self._loader
        outcome = await asyncio.get_running_loop().run_in_executor(
            self._loads,
            functools.partial(
                load_one, spec, loader.plugins, loader.backbone, loader.not_allowed, loader.broken
            ),
        )
        if isinstance(outcome, Refusal):
            raise InvalidArgument(outcome.field, outcome.reason)
        plugin, head, version = outcome
        if not (head.trained or self._holder.registry.allow_untrained):
            raise InvalidArgument(
                "source",
                f"the head's weights are untrained ({head.detail}): load a checkpoint "
                f"with trained {plugin.plugin.task} weights",
            )
        return plugin, head, version

    async def _shadow(
        self, spec: HeadSpec, live_name: str, fraction: float, replace: bool
    ) -> Change:
        if not 0.0 < fraction <= 1.0:
            raise InvalidArgument("shadow_fraction", f"must be in (0, 1], got {fraction}")
        async with self._lock:
            registry = self._holder.registry
            live = registry.heads.get(live_name)
            if live is None:
                raise InvalidArgument("shadow_of", f"no head named {live_name!r} to shadow")
            if spec.name in registry.heads:
                raise HeadExists(f"a head named {spec.name!r} is served", head=spec.name)
            old = registry.shadows.get(spec.name)
            if old is not None and not replace:
                raise HeadExists(
                    f"a shadow named {spec.name!r} runs: load with replace to replace it",
                    head=spec.name,
                )
            other = registry.shadowing(live_name)
            if other is not None and other is not old:
                raise InvalidArgument(
                    "shadow_of",
                    f"head {live_name!r} has a shadow already ({other.name}): promote or "
                    "unload it first",
                )
            plugin, head, version = await self._loaded(spec)
            if plugin.plugin.task != live.task:
                raise InvalidArgument(
                    "shadow_of",
                    f"a {plugin.plugin.task} head cannot shadow {live_name!r}, a {live.task} head",
                )
            shadow = Shadow(ServedHead(head, spec, plugin, False, version), live_name, fraction)
            if self.store is not None:
                record = self.store.record(spec, version, live_name, fraction)
                await self._record(self.store.state.shadowed(record))
            kept = [s for s in registry.shadows.values() if s is not old]
            self._holder.registry = registry.replaced(
                list(registry.heads.values()), [*kept, shadow]
            )
            return Change(shadow.served, old.served.version if old is not None else "")

    async def promote(self, name: str) -> Change:
        """Shadow `name`'s head in place of the head it shadows, under that head's name."""
        async with self._lock:
            registry = self._holder.registry
            shadow = registry.shadows.get(name)
            if shadow is None:
                known = ", ".join(registry.shadows) or "none"
                raise HeadNotFound(f"no shadow head named {name!r} (shadows: {known})", head=name)
            live = registry.heads[shadow.live]
            head = shadow.served.head
            try:
                head.name = live.spec.name  # its results, errors and logs name the live head
            except AttributeError as exc:
                raise InvalidArgument(
                    "name", f"{name!r}'s plugin does not let its head be renamed: {exc}"
                ) from exc
            spec = dataclasses.replace(shadow.served.spec, name=live.spec.name)
            served = ServedHead(
                head, spec, shadow.served.plugin, live.is_default, shadow.served.version
            )
            if self.store is not None:
                record = self.store.record(spec, served.version)
                default_of = served.task if served.is_default else None
                state = self.store.state.dropped(name).loaded(record, default_of)
                await self._record(state)
            heads = [served if h is live else h for h in registry.heads.values()]
            shadows = [s for s in registry.shadows.values() if s is not shadow]
            self._holder.registry = registry.replaced(heads, shadows)
            return Change(served, live.version)

    async def unload(self, name: str) -> Change:
        """Head `name` no longer served (or shadow `name` no longer run); if it was its
        task's default, the head named after the task, else the first of its task, is the
        default now."""
        async with self._lock:
            registry = self._holder.registry
            shadow = registry.shadows.get(name)
            if shadow is not None:
                if self.store is not None:
                    await self._record(self.store.state.dropped(name))
                shadows = [s for s in registry.shadows.values() if s is not shadow]
                self._holder.registry = registry.replaced(list(registry.heads.values()), shadows)
                return Change(shadow.served)
            old = _served(registry, name)
            heads = [h for h in registry.heads.values() if h is not old]
            peers = [h for h in heads if h.task == old.task]
            heir = None
            if old.is_default and peers:
                heir = next((h for h in peers if h.spec.name == old.task), peers[0])
                heads = _one_default(heads, dataclasses.replace(heir, is_default=True))
            if self.store is not None:
                heir_name = heir.spec.name if heir is not None else None
                state = self.store.state.without(name, old.task, heir_name)
                orphan = registry.shadowing(name)  # its shadow goes with it
                await self._record(state.dropped(orphan.name) if orphan is not None else state)
            self._holder.registry = registry.replaced(heads)
            return Change(old)

    async def set_default(self, name: str) -> Change:
        """Head `name` the default of its task."""
        async with self._lock:
            registry = self._holder.registry
            chosen = dataclasses.replace(_served(registry, name), is_default=True)
            heads = [chosen if h.spec.name == name else h for h in registry.heads.values()]
            if self.store is not None:
                await self._record(self.store.state.with_default(chosen.task, name))
            self._holder.registry = registry.replaced(_one_default(heads, chosen))
            return Change(chosen)


def _same(served: HeadSpec, wanted: HeadSpec) -> bool:
    """Whether a served head is the one a spec asks for (whether it is its task's default
    aside: that is the registry's to say)."""

    def key(spec: HeadSpec) -> tuple[object, ...]:
        options = {k: v for k, v in spec.options.items() if k != "default"}
        source = spec.source.resolve() if spec.source is not None else None
        return spec.name, spec.plugin, source, sorted(options.items())

    return key(served) == key(wanted)


def _served(registry: HeadRegistry, name: str) -> ServedHead:
    served = registry.heads.get(name)
    if served is None:
        known = ", ".join(registry.heads) or "none"
        raise HeadNotFound(f"no head named {name!r} (served: {known})", head=name)
    return served


def _one_default(heads: Sequence[ServedHead], chosen: ServedHead) -> list[ServedHead]:
    """`heads`, `chosen` in its place, and no other head of its task the default if it is."""
    out = []
    for head in heads:
        if head.spec.name == chosen.spec.name:
            out.append(chosen)
        elif chosen.is_default and head.task == chosen.task and head.is_default:
            out.append(dataclasses.replace(head, is_default=False))
        else:
            out.append(head)
    return out
