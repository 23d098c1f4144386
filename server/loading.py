"""What a server (or a Ray Serve replica) is configured with, and how it loads: `Settings`,
and `build_core`, which loads the backbone, finds the head plugins, loads the heads and starts
nothing yet. The transports and the commands above build on it; `settings_mapping` and
`settings_from` carry Settings as plain values (a Ray Serve config file's), without the CLI.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headserve.plugins.backbones import LoadOptions
from headserve.plugins.contract import HeadSpec

from .backbones.backbone import default_model_dir, pick_device
from .backbones.kinds import choose_kind
from .call_info import RequestIdIn
from .calls.connections import Connections, check_budgets
from .calls.security import ADMIN_TOKENS_ENV, Security, read_tokens
from .core.engine import Core
from .core.head_store import HeadStore, merged
from .core.heads import (
    HeadRegistry,
    Refusal,
    ServedHead,
    broken_plugins,
    check_defaults,
    check_unique_names,
    load_heads,
    load_one,
    require,
    strict,
)
from .core.limits import Limits, RequestLimits
from .core.live_heads import HeadLoader
from .core.memory import release_freed_memory
from .core.pass_cache import PassCache, identity
from .core.runner import Runner
from .core.scheduler import Scheduler
from .core.shadows import Shadow
from .core.threads import plan, set_torch_threads
from .discovery import StartupError, allowed, check_unique, find_plugins, load_plugins
from .observability.metrics import Metrics

if TYPE_CHECKING:
    from .observability.tracing import Tracing

DEFAULT_BATCH_ITEMS = Limits().max_batch_items
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    model_dir: Path | None = None  # a checkpoint folder, or a model name (efficientnet-lite0)
    backbone_kind: str | None = None  # --backbone-kind; None: the first kind that claims it
    heads: tuple[HeadSpec, ...] = ()
    device: str | None = None
    dtype: str | None = None
    allow_untrained: bool = False
    allow_unverified_family: bool = False  # serve a family outside the verified table
    default_prompt_name: str | None = None  # encode heads' prompt when a call names none
    limits: Limits = Limits()
    request_limits: RequestLimits = RequestLimits()
    security: Security = Security()
    allow_pickle: bool = False  # load pickle checkpoints (they can run code); safetensors only
    trace: bool = True  # on a CPU, the packed pass as a checked TorchScript trace (traced.py)
    runtime: str = "auto"  # "onnx": the packed pass on ONNX Runtime, checked (onnx_pass.py);
    # "auto": ONNX Runtime for a float32 text backbone on a CPU when installed, else torch
    quantize: str = "none"  # "int8": ONNX Runtime with int8 weights (quantize.py)
    threads: int | None = None  # torch threads per model worker; None: see threads.py
    connections: Connections = Connections()  # keepalive, idle limits, health watches
    grace_seconds: float = 10.0
    metrics_port: int | None = None  # Prometheus /metrics over HTTP; None: off
    metrics_host: str = "127.0.0.1"
    http_port: int | None = None  # OpenAI-style HTTP (transports/http.py); None: off
    access_log: bool = True  # a log line per finished call and per stream request
    request_id_in: RequestIdIn = "initial"  # where a unary call's id goes back (transports/grpc.py)
    otlp_endpoint: str | None = None  # OpenTelemetry traces over OTLP/gRPC; see tracing.py
    plugins: tuple[str, ...] | None = field(default=None)  # allow-list; None: all
    require_heads: tuple[str, ...] = ()  # heads that must load and be usable, or no start
    allow_failed_heads: bool = False  # serve the rest when a configured head fails to load
    head_store: Path | None = None  # where heads changed at run time are kept (head_store.py)
    feature_cache_mb: int = 0  # backbone passes kept for rows seen before (pass_cache.py); 0: off
    feature_cache_for: str = "all"  # "bulk": rows of bulk calls (jobs) alone are kept
    jobs_dir: Path | None = None  # batch jobs kept there (jobs/); None: no jobs
    max_job_bytes: int = 200 * 2**20  # an uploaded job input file, at most

    def __post_init__(self) -> None:
        check_budgets(self.request_limits, self.connections)
        if self.feature_cache_mb < 0:
            raise ValueError("--feature-cache-mb must be 0 (off) or more")
        if self.feature_cache_for not in ("all", "bulk"):
            raise ValueError("--feature-cache-for must be 'all' or 'bulk'")
        if self.max_job_bytes < 1:
            raise ValueError("--max-job-bytes must be at least 1")


class LoadStopped(StartupError):
    """The start was stopped (SIGINT, SIGTERM) while the model was loading."""


def build_core(
    settings: Settings,
    metrics: Metrics | None = None,
    tracing: Tracing | None = None,
    stopped: threading.Event | None = None,
) -> Core:
    """Load the backbone, discover the head plugins and load the configured heads; once
    `stopped` is set, give up at the next step (a load in a thread cannot be interrupted)."""

    def check_stopped() -> None:
        if stopped is not None and stopped.is_set():
            raise LoadStopped("stopped while loading")

    started = time.perf_counter()
    source = str(settings.model_dir or default_model_dir())
    # Everything that can refuse the configuration runs before the backbone loads, the
    # heads the operator configured first (they need no backbone kind to be checked).
    check_unique_names(settings.heads, source)
    refs, kept_out = allowed(find_plugins(), settings.plugins)
    check_unique(refs)
    plugins, failures = load_plugins(refs)
    check_defaults(settings.heads, plugins)
    kind = choose_kind(source, settings.backbone_kind, allow=settings.plugins)
    specs = settings.heads or kind.default_heads(source)
    if settings.default_prompt_name:  # every encode head's, unless its own spec names one
        specs = tuple(
            replace(
                spec, options={"default_prompt_name": settings.default_prompt_name, **spec.options}
            )
            if spec.plugin == "encode"
            else spec
            for spec in specs
        )
    configured = specs
    store = HeadStore(settings.head_store) if settings.head_store is not None else None
    if store is not None:  # the heads changed at run time, over the configured ones
        specs = merged(specs, store, {p.ref.name: p.plugin.task for p in plugins})
    threads = plan(pick_device(settings.device), settings.limits.workers, settings.threads)
    backbone = kind.load(
        source,
        LoadOptions(
            device=settings.device,
            dtype=settings.dtype,
            allow_pickle=settings.allow_pickle,
            trace=settings.trace,
            runtime=settings.runtime,
            threads=threads.threads,
            quantize=settings.quantize,
            allow_unverified_family=settings.allow_unverified_family,
        ),
    )
    check_stopped()
    view = backbone.view()
    loader = HeadLoader(
        {p.ref.name: p for p in plugins},
        view,
        tuple(r.name for r in kept_out),
        configured,
        broken_plugins(failures),
    )
    registry = load_heads(
        specs,
        plugins,
        failures,
        view,
        allow_untrained=settings.allow_untrained,
        not_allowed=loader.not_allowed,
    )
    if store is not None:
        registry.shadows = _stored_shadows(store, registry, loader)
        _check_versions(registry, store)
    if (settings.heads or store is not None) and not settings.allow_failed_heads:
        strict(registry, specs if store is not None else settings.heads)
    require(registry, settings.require_heads)
    check_stopped()
    release_freed_memory()
    set_torch_threads(threads.threads)
    limits = replace(settings.limits, workers=threads.workers)
    cap = backbone.cpu_batch_rows
    if cap and backbone.device.type == "cpu" and limits.max_batch_items == DEFAULT_BATCH_ITEMS:
        limits = replace(limits, max_batch_items=cap)  # the kind's best, unless set otherwise
    cache = None
    if settings.feature_cache_mb:
        cache = PassCache(
            settings.feature_cache_mb * 2**20,
            identity(backbone),
            bulk_only=settings.feature_cache_for == "bulk",
        )
        log.info("feature cache: up to %d MB of backbone passes", settings.feature_cache_mb)
    runner = Runner(backbone, cache)
    metrics = metrics or Metrics()
    if cache is not None:
        metrics.watch_pass_cache(cache)
    metrics.count_oom_splits(lambda: runner.oom_splits)
    metrics.count_backbone_rows(lambda: runner.rows_computed)

    def on_idle() -> None:  # a busy spell's memory back: the runtime's pool, then the heap
        backbone.release_memory()
        release_freed_memory()

    scheduler = Scheduler(runner, limits, metrics, packed=backbone.packing, on_idle=on_idle)
    log.info("scheduler: %s; torch threads per worker %d", limits, threads.threads)
    log.info(
        "ready: %d heads (%s), %d failed, in %.2fs",
        len(registry.heads),
        ", ".join(
            f"{n}:{'ok' if registry.usable(h) else 'untrained'}" for n, h in registry.heads.items()
        ),
        len(registry.failures),
        time.perf_counter() - started,
    )
    return Core(
        backbone,
        registry,
        runner,
        scheduler,
        torch_threads=threads.threads,
        request_limits=settings.request_limits,
        tracing=tracing,
        loader=loader,
        store=store,
    )


def _stored_shadows(
    store: HeadStore, registry: HeadRegistry, loader: HeadLoader
) -> dict[str, Shadow]:
    """The store's shadow heads, each loaded beside its live head again; one that cannot
    be (its live head gone, its folder unreadable) is left out, with an error line."""
    shadows = {}
    for kept, spec in store.shadows():
        live = registry.heads.get(kept.shadow_of or "")
        outcome = load_one(spec, loader.plugins, loader.backbone, loader.not_allowed, loader.broken)
        if isinstance(outcome, Refusal) or live is None or outcome[0].plugin.task != live.task:
            why = outcome.reason if isinstance(outcome, Refusal) else "its live head is not served"
            log.error("shadow head %s (of %s) left out: %s", kept.name, kept.shadow_of, why)
            continue
        plugin, head, version = outcome
        served = ServedHead(head, spec, plugin, False, version)
        shadows[kept.name] = Shadow(served, live.spec.name, kept.fraction)
    return shadows


def _check_versions(registry: HeadRegistry, store: HeadStore) -> None:
    """A stored head whose files changed since it was loaded is served as they are now,
    with a warning naming both versions."""
    for kept in store.state.heads:
        served = registry.heads.get(kept.name)
        if served is not None and served.version != kept.version:
            log.warning(
                "head %s: its files changed since it was loaded at run time (%s then, %s now); "
                "serving them as they are now",
                kept.name,
                kept.version,
                served.version,
            )


# --- Settings as plain values: what a Ray Serve config file carries ------------------------------

_PATHS = ("model_dir", "head_store")
_TUPLES = ("plugins", "require_heads")


def settings_mapping(
    settings: Settings,
    auth_token_file: Path | None = None,
    admin_token_file: Path | None = None,
) -> dict[str, Any]:
    """`settings` as plain values (YAML or JSON), the defaults left out; `settings_from`
    reads it back. The bearer tokens, callers' and admins', are never written: where they
    come from is (`auth_token_file`, `admin_token_file`, and HEADSERVE_AUTH_TOKENS /
    HEADSERVE_ADMIN_TOKENS where the settings are read)."""
    plain: dict[str, Any] = {}
    for f in fields(Settings):
        value = getattr(settings, f.name)
        if f.name == "security":
            security = _changed(value, Security(), skip=("tokens", "admin_tokens"))
            if auth_token_file is not None:
                security["auth_token_file"] = str(auth_token_file)
            if admin_token_file is not None:
                security["admin_token_file"] = str(admin_token_file)
            if security:
                plain["security"] = security
        elif f.name in ("limits", "request_limits", "connections"):
            changed = _changed(value, type(value)())
            if changed:
                plain[f.name] = changed
        elif f.name == "heads":
            if value:
                plain["heads"] = [
                    {
                        "name": spec.name,
                        "plugin": spec.plugin,
                        **({"source": str(spec.source)} if spec.source is not None else {}),
                        **({"options": dict(spec.options)} if spec.options else {}),
                    }
                    for spec in value
                ]
        elif value != f.default:
            plain[f.name] = _plain(value)
    return plain


def settings_from(plain: Mapping[str, Any]) -> Settings:
    """The Settings a mapping written by `settings_mapping` describes (tokens read from its
    `security.auth_token_file` and HEADSERVE_AUTH_TOKENS, as `headserve serve` reads them).
    An unknown key is a ValueError naming it."""
    names = {f.name for f in fields(Settings)}
    unknown = set(plain) - names
    if unknown:
        raise ValueError(f"settings: unknown {', '.join(sorted(unknown))}")
    given: dict[str, Any] = dict(plain)
    for name in _PATHS:
        if given.get(name) is not None:
            given[name] = Path(given[name])
    for name in _TUPLES:
        if given.get(name) is not None:
            given[name] = tuple(given[name])
    if "heads" in given:
        given["heads"] = tuple(
            HeadSpec(
                h["name"],
                h["plugin"],
                Path(h["source"]) if h.get("source") is not None else None,
                dict(h.get("options", {})),
            )
            for h in given["heads"]
        )
    if "limits" in given:
        given["limits"] = Limits(**given["limits"])
    if "request_limits" in given:
        given["request_limits"] = RequestLimits(**given["request_limits"])
    if "connections" in given:
        given["connections"] = Connections(**given["connections"])
    security = dict(given.pop("security", {}))
    token_file = security.pop("auth_token_file", None)
    admin_file = security.pop("admin_token_file", None)
    for key in ("tls_cert", "tls_key", "tls_client_ca"):
        if security.get(key) is not None:
            security[key] = Path(security[key])
    tokens = read_tokens(Path(token_file) if token_file is not None else None)
    admins = read_tokens(
        Path(admin_file) if admin_file is not None else None,
        variable=ADMIN_TOKENS_ENV,
        flag="--admin-token-file",
    )
    return Settings(**given, security=Security(**security, tokens=tokens, admin_tokens=admins))


def _changed(value: Any, default: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        f.name: _plain(getattr(value, f.name))
        for f in fields(value)
        if f.name not in skip and getattr(value, f.name) != getattr(default, f.name)
    }


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value
