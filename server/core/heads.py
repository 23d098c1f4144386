"""The configured heads: loading them through their plugins, and finding one for a call."""

from __future__ import annotations

import difflib
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from headserve.plugins.contract import BackboneView, Head, HeadSpec, LoadContext

from ..call_info import answered_by
from ..config import ARTIFACT_PLUGINS, BUILTIN_TASKS
from ..discovery import FailedPlugin, LoadedPlugin, StartupError
from ..errors import HeadNotFound, HeadNotUsable, InvalidArgument
from .generic import schema_problem
from .versions import folder_version

if TYPE_CHECKING:
    from .shadows import Shadow

RANKING_TASKS = ("classify", "encode")  # the heads a Rerank call may name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedHead:
    head: Head
    spec: HeadSpec
    plugin: LoadedPlugin
    is_default: bool
    version: str = ""  # versions.py: a digest of its weights' files

    @property
    def task(self) -> str:
        return self.plugin.plugin.task


@dataclass(frozen=True)
class Refusal:
    """Why a head did not load: the field of its spec at fault ("plugin", "source",
    "options") and the reason, as the start logs it and an admin call answers it."""

    field: str
    reason: str


class DuplicateHead(StartupError):
    pass


class HeadsFailed(StartupError):
    """A head the operator configured did not load."""


class RequiredHeadMissing(StartupError):
    pass


def check_unique_names(specs: Sequence[HeadSpec], backbone_source: object) -> None:
    """Two heads configured with one name stop the server, naming both sources."""
    names = [s.name for s in specs]
    for name in sorted(set(names)):
        if names.count(name) > 1:
            sources = [f"{s.plugin}:{s.source or backbone_source}" for s in specs if s.name == name]
            raise DuplicateHead(f"head name {name!r} configured twice: {' and '.join(sources)}")


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
        self.shadows: dict[str, Shadow] = {}  # by the shadow's name (shadows.py)

    def shadowing(self, live: str) -> Shadow | None:
        """The shadow of head `live`, if it has one."""
        return next((s for s in self.shadows.values() if s.live == live), None)

    def usable(self, served: ServedHead) -> bool:
        return served.head.trained or self.allow_untrained

    def of_task(self, task: str) -> list[ServedHead]:
        return [h for h in self.heads.values() if h.plugin.plugin.task == task]

    def has_usable(self, task: str) -> bool:
        return any(self.usable(h) for h in self.of_task(task))

    def generic(self) -> list[ServedHead]:
        """Heads of tasks outside the built-in four: served by the Heads service."""
        return [h for h in self.heads.values() if h.plugin.plugin.task not in BUILTIN_TASKS]

    def has_usable_generic(self) -> bool:
        return any(self.usable(h) for h in self.generic())

    def resolve_generic(self, name: str) -> Head:
        """The generic head `name`, if it can serve a Heads.Run call."""
        if not name:
            raise InvalidArgument("head", "name the head to run (GetModelInfo lists them)")
        served = self.heads.get(name)
        if served is None:
            known = ", ".join(h.spec.name for h in self.generic()) or "none"
            raise HeadNotFound(f"no head named {name!r} (Heads.Run serves: {known})", head=name)
        task = served.plugin.plugin.task
        if task in BUILTIN_TASKS:
            raise InvalidArgument(
                "head", f"head {name!r} is a built-in {task} head: call its own service"
            )
        return self._usable(served)

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
        return self._usable(served)

    def resolve_any(self, name: str, field: str = "head") -> Head:
        """The head `name`, of any task (a RunHeads call's heads); `field` names it in errors."""
        if not name:
            raise InvalidArgument(field, "name the head to run (GetModelInfo lists them)")
        served = self.heads.get(name)
        if served is None:
            known = ", ".join(self.heads) or "none"
            raise HeadNotFound(f"no head named {name!r} (served: {known})", head=name)
        return self._usable(served)

    def resolve_ranker(self, name: str | None) -> Head:
        """The head a Rerank call names: a classify head (a cross-encoder) or an encode head
        (cosine). None: the first classify head configured to rank (`rerank_score`), else
        the default encode head."""
        if not name:
            configured = (h for h in self.of_task("classify") if h.spec.options.get("rerank_score"))
            first = next(configured, None)
            return self._usable(first) if first else self.resolve("encode", None)
        served = self.heads.get(name)
        if served is None or served.plugin.plugin.task not in RANKING_TASKS:
            known = [h.spec.name for task in RANKING_TASKS for h in self.of_task(task)]
            raise HeadNotFound(
                f"no classify or encode head named {name!r} (served: {', '.join(known) or 'none'})",
                head=name,
            )
        return self._usable(served)

    def replaced(
        self, heads: Sequence[ServedHead], shadows: Sequence[Shadow] | None = None
    ) -> HeadRegistry:
        """A registry of `heads` (and `shadows`; None: this one's) with this one's failures
        and rules: a change made at run time is a new registry, put in place in one
        assignment (calls hold the old one's heads until they end)."""
        registry = HeadRegistry(heads, self.failures, allow_untrained=self.allow_untrained)
        kept = self.shadows.values() if shadows is None else shadows
        registry.shadows = {s.name: s for s in kept if s.live in registry.heads}
        return registry

    def _usable(self, served: ServedHead) -> Head:
        answered_by(served.spec.name, served.version)
        task = served.plugin.plugin.task
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
    not_allowed: Sequence[str] = (),
) -> HeadRegistry:
    """Load every configured head; one that fails is reported and skipped.

    `not_allowed`: installed plugins kept out by the allow-list (for a clear reason).
    """
    check_unique_names(specs, backbone.source)
    plugins = tuple(plugins)
    check_defaults(specs, plugins)
    by_name = {p.ref.name: p for p in plugins}
    failed = list(failures)
    loaded: list[tuple[HeadSpec, LoadedPlugin, Head, str]] = []
    broken = broken_plugins(failures)
    for spec in specs:
        outcome = load_one(spec, by_name, backbone, not_allowed, broken)
        if isinstance(outcome, Refusal):
            failed.append(FailedPlugin(spec.name, outcome.reason))
            continue
        loaded.append((spec, *outcome))
    served = []
    for spec, plugin, head, version in loaded:
        task = plugin.plugin.task
        peers = [s for s, p, _, _ in loaded if p.plugin.task == task]
        served.append(ServedHead(head, spec, plugin, spec is default_of(peers, task), version))
    return HeadRegistry(served, failed, allow_untrained=allow_untrained)


def broken_plugins(failures: Iterable[FailedPlugin]) -> dict[str, str]:
    """The plugins that failed to import or were refused (a contract version this server
    does not run...), by name, with why: what a head asking for one is told."""
    return {f.label.rsplit("[", 1)[-1].rstrip("]"): f.reason for f in failures}


def load_one(
    spec: HeadSpec,
    plugins: Mapping[str, LoadedPlugin],
    backbone: BackboneView,
    not_allowed: Sequence[str] = (),
    broken: Mapping[str, str] | None = None,
) -> tuple[LoadedPlugin, Head, str] | Refusal:
    """One head loaded by its plugin, with its version, or why not (logged): the checks
    every head passes, at start or loaded into a running server."""
    refusal = _refusal(spec, plugins, not_allowed, broken or {})
    if refusal is not None:
        log.error("head %s: %s", spec.name, refusal.reason)
        return refusal
    plugin = plugins[spec.plugin]
    started = time.perf_counter()
    try:
        head = plugin.plugin.load(LoadContext(spec, backbone))
    except Exception as exc:  # weights can be missing or corrupt: report, serve the rest
        log.error("head %s (%s) failed to load: %s", spec.name, plugin.ref.label, exc)
        # the traceback for whoever fixes the plugin (--log-level DEBUG)
        log.debug("head %s failed to load; the traceback:", spec.name, exc_info=exc)
        return Refusal("source", f"{plugin.ref.label} failed to load: {exc}")
    problem = _contract_problem(head, plugin)
    if problem is not None:
        log.error("head %s (%s) refused: %s", spec.name, plugin.ref.label, problem)
        return Refusal("plugin", f"{plugin.ref.label}: {problem}")
    version = folder_version(Path(spec.source or backbone.source))
    log.info(
        "head %s: %s from %s (%s), %s, %.2fs",
        spec.name,
        plugin.plugin.task,
        spec.source or backbone.source,
        version,
        "trained" if head.trained else "UNTRAINED",
        time.perf_counter() - started,
    )
    return plugin, head, version


def _refusal(
    spec: HeadSpec,
    plugins: Mapping[str, LoadedPlugin],
    not_allowed: Sequence[str],
    broken: Mapping[str, str],
) -> Refusal | None:
    """What refuses `spec` before its plugin runs: no such plugin, its folder, its options."""
    plugin = plugins.get(spec.plugin)
    if plugin is None:
        if spec.plugin in broken:
            return Refusal("plugin", f"plugin {spec.plugin!r} did not load: {broken[spec.plugin]}")
        if spec.plugin in not_allowed:
            return Refusal(
                "plugin", f"plugin {spec.plugin!r} is installed but not in the --plugins allow-list"
            )
        return Refusal("plugin", _no_plugin(spec.plugin, sorted(plugins)))
    mistake = _source_mistake(spec)
    if mistake is not None:
        return Refusal("source", mistake)
    mistake = _option_mistake(spec, plugin.plugin)
    if mistake is not None:
        return Refusal("options", mistake)
    return None


# Options the server reads from any head's spec, whatever its plugin declares.
SERVER_OPTIONS = {"default": "true: the default head of its task"}


def _option_mistake(spec: HeadSpec, plugin: object) -> str | None:
    """An option the head's plugin does not know (a plugin that declares no `options` takes
    any: the contract leaves it optional)."""
    declared = getattr(plugin, "options", None)
    if declared is None:
        return None
    known = sorted({*declared, *SERVER_OPTIONS})
    unknown = [name for name in spec.options if name not in known]
    if not unknown:
        return None
    close = difflib.get_close_matches(unknown[0], known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown option {unknown[0]!r} (plugin {spec.plugin!r} takes: {', '.join(known)}){hint}"


def _no_plugin(name: str, loaded: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, loaded, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"no plugin {name!r} (loaded: {', '.join(loaded) or 'none'}){hint}"


def _source_mistake(spec: HeadSpec) -> str | None:
    """What is plainly wrong with a head's folder, said before its plugin tries it (whose own
    error would be about what it looked for there, not about the folder)."""
    source = spec.source
    if source is None:
        return None
    if not source.exists():
        where = "" if source.is_absolute() else f" (from {Path.cwd()})"
        return f"{source} does not exist{where}"
    if (source / "head.json").is_file() and spec.plugin not in ARTIFACT_PLUGINS.values():
        return (
            f"{source} is a trained head artifact, which names its own plugin: write "
            f"--head {spec.name}={source} (not {spec.name}={spec.plugin}:{source})"
        )
    return None


def strict(registry: HeadRegistry, configured: Sequence[HeadSpec]) -> None:
    """Each head the operator configured must load, or the server stops, saying which and
    why in one line (--allow-failed-heads serves the rest instead)."""
    names = {spec.name for spec in configured}
    failed = [f for f in registry.failures if f.label in names]
    if failed:
        reasons = "; ".join(f"head {f.label!r}: {f.reason}" for f in failed)
        raise HeadsFailed(
            f"{reasons}. Fix the --head, or start with --allow-failed-heads to serve the others"
        )


def _contract_problem(head: object, plugin: LoadedPlugin) -> str | None:
    if not isinstance(head, Head):
        return f"load() returned {type(head).__name__}, not a headserve Head"
    task = getattr(head, "task", None)
    if task != plugin.plugin.task:
        return (
            f"the head's task {task!r} differs from its plugin's task {plugin.plugin.task!r} "
            "(GetModelInfo and the services would disagree on what it does)"
        )
    if plugin.plugin.task not in BUILTIN_TASKS:
        return schema_problem(head)
    return None


def require(registry: HeadRegistry, names: Sequence[str]) -> None:
    """`--require-head`: each named head must be loaded and usable, or the server stops."""
    for name in names:
        served = registry.heads.get(name)
        if served is None:
            reasons = [f.reason for f in registry.failures if f.label == name]
            why = reasons[0] if reasons else "it is not configured (see --head)"
            raise RequiredHeadMissing(f"required head {name!r} is not served: {why}")
        if not registry.usable(served):
            raise RequiredHeadMissing(
                f"required head {name!r} is not usable: untrained ({served.head.detail})"
            )


class DuplicateDefault(StartupError):
    pass


def marked_default(spec: HeadSpec) -> bool:
    return spec.options.get("default", "").lower() in {"1", "true", "yes"}


def check_defaults(specs: Sequence[HeadSpec], plugins: Iterable[LoadedPlugin]) -> None:
    """Two heads of one task marked default=true stop the server, naming both."""
    tasks = {p.ref.name: p.plugin.task for p in plugins}
    by_task: dict[str, list[str]] = {}
    for spec in specs:
        if marked_default(spec) and spec.plugin in tasks:
            by_task.setdefault(tasks[spec.plugin], []).append(spec.name)
    for task, names in sorted(by_task.items()):
        if len(names) > 1:
            raise DuplicateDefault(
                f"heads {' and '.join(repr(n) for n in names)} are both marked default=true "
                f"for task {task!r}; mark one"
            )


def default_of(specs: Sequence[HeadSpec], task: str) -> HeadSpec:
    """The head marked default=true, else the one named after its task, else the first."""
    marked = [s for s in specs if marked_default(s)]
    if marked:
        return marked[0]  # one at most: check_defaults refused more
    return next((s for s in specs if s.name == task), specs[0])
