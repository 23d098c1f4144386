"""Safe, loud discovery in a real server: broken plugins are reported and the rest served,
clashing names and missing required heads stop it at start, the allow-list keeps code out."""

from __future__ import annotations

import logging
import subprocess
import sys
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from fakedist import FakeDist
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serving import ServerThread

from headserve.client import Client
from headserve.plugins.contract import (
    CONTRACT_VERSION,
    Features,
    Head,
    HeadSpec,
    LoadContext,
    Prepared,
    Row,
)
from headserve.server import loading
from headserve.server.core.heads import DuplicateDefault, DuplicateHead, RequiredHeadMissing
from headserve.server.discovery import DuplicatePlugin, find_plugins
from headserve.server.loading import Settings, build_core


class SilentHead(Head):
    """A head of a new task that forgot to declare its outputs."""

    task = "silent"

    def __init__(self, context: LoadContext) -> None:
        self.name = context.spec.name

    def prepare(self, item: Any, options: Any) -> Prepared:
        return Prepared((Row((1, 2)),))

    def forward(self, features: Features, rows: Sequence[Row]) -> Sequence[Any]:
        return [0] * len(rows)

    def finish(self, prepared: Prepared, outputs: Sequence[Any], options: Any) -> Any:
        return None


class SilentPlugin:
    task = "silent"
    contract_version = CONTRACT_VERSION

    def load(self, context: LoadContext) -> Head:
        return SilentHead(context)


class MislabelledPlugin:
    """Says its heads classify, but loads a head of another task."""

    task = "classify"
    contract_version = CONTRACT_VERSION

    def load(self, context: LoadContext) -> Head:
        return SilentHead(context)


class CorruptWeightsPlugin:
    task = "classify"
    contract_version = CONTRACT_VERSION

    def load(self, context: LoadContext) -> Head:
        raise OSError(f"cannot read weights in {context.source}")


class NotAHeadPlugin:
    task = "weird"
    contract_version = CONTRACT_VERSION

    def load(self, context: LoadContext) -> object:
        return object()


@pytest.fixture
def third_party(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Install fake plugins beside the real ones, as far as the server can tell."""
    module = types.ModuleType("fake_third_party")
    module.SilentPlugin = SilentPlugin  # type: ignore[attr-defined]
    module.CorruptWeightsPlugin = CorruptWeightsPlugin  # type: ignore[attr-defined]
    module.NotAHeadPlugin = NotAHeadPlugin  # type: ignore[attr-defined]
    module.MislabelledPlugin = MislabelledPlugin  # type: ignore[attr-defined]
    sys.modules["fake_third_party"] = module
    dist = FakeDist(
        "fake-third-party",
        {
            "silent": "fake_third_party:SilentPlugin",
            "corrupt": "fake_third_party:CorruptWeightsPlugin",
            "notahead": "fake_third_party:NotAHeadPlugin",
            "mislabelled": "fake_third_party:MislabelledPlugin",
            "broken": "fake_third_party_missing_module:Plugin",
        },
    )
    real = find_plugins()
    monkeypatch.setattr(loading, "find_plugins", lambda: (*real, *find_plugins([dist])))
    yield
    del sys.modules["fake_third_party"]


def _heads(bert, *extra: HeadSpec) -> tuple[HeadSpec, ...]:  # type: ignore[no-untyped-def]
    return (HeadSpec("classify", "classify", bert.classify), *extra)


def test_failing_plugins_are_reported_and_the_rest_served(bert, third_party, caplog) -> None:  # type: ignore[no-untyped-def]
    heads = _heads(
        bert,
        HeadSpec("silent", "silent"),
        HeadSpec("corrupt", "corrupt"),
        HeadSpec("weird", "notahead"),
        HeadSpec("gone", "broken"),
        HeadSpec("odd", "mislabelled"),
        HeadSpec("ner", "token_classification", bert.ner),
    )
    caplog.set_level(logging.DEBUG, logger="headserve")
    thread = ServerThread(
        Settings(allow_failed_heads=True, model_dir=bert.backbone, heads=heads, device="cpu")
    )
    # the logs keep the tracebacks that the short reasons below leave out (a head's at DEBUG:
    # its ERROR line is one line)
    failures = {r.getMessage().split()[1]: r for r in caplog.records if r.exc_info}
    assert isinstance(failures["corrupt"].exc_info[1], OSError)  # type: ignore[index]
    assert isinstance(failures["fake-third-party[broken]"].exc_info[1], ImportError)  # type: ignore[index]
    try:
        with Client(thread.target) as client:
            info = client.model_info()
            assert [h.name for h in info.heads] == ["classify", "ner"]
            reasons = {f.plugin: f.reason for f in info.failed_plugins}
            assert "declares no outputs" in reasons["silent"]
            assert "cannot read weights" in reasons["corrupt"]
            assert "not a headserve Head" in reasons["weird"]
            assert "failed to import" in reasons["fake-third-party[broken]"]
            assert "plugin 'broken' did not load: failed to import" in reasons["gone"]
            assert "task 'silent' differs from its plugin's task 'classify'" in reasons["odd"]
            assert client.classify(["still serving"]).classifications[0].heads
            assert len(client.run("ner", ["still serving"])) == 1
            health = health_pb2_grpc.HealthStub(client._channel)  # type: ignore[attr-defined]
            status = health.Check(health_pb2.HealthCheckRequest(service="headserve.v1.Heads"))
            assert status.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        thread.stop()


def test_heads_service_is_not_serving_without_a_generic_head(bert) -> None:  # type: ignore[no-untyped-def]
    thread = ServerThread(Settings(model_dir=bert.backbone, heads=_heads(bert), device="cpu"))
    try:
        with grpc.insecure_channel(thread.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            check = health.Check(health_pb2.HealthCheckRequest(service="headserve.v1.Heads"))
            assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
            check = health.Check(health_pb2.HealthCheckRequest(service="headserve.v1.Classifier"))
            assert check.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        thread.stop()


def test_two_heads_of_one_name_stop_the_start_before_any_model_loads(tmp_path: Path) -> None:
    heads = (HeadSpec("x", "classify", tmp_path / "a"), HeadSpec("x", "qa", tmp_path / "b"))
    with pytest.raises(DuplicateHead, match=r"'x' configured twice: classify:.*a and qa:.*b"):
        build_core(Settings(model_dir=tmp_path / "no-model-here", heads=heads))


def test_two_defaults_for_one_task_stop_the_start_before_any_model_loads(tmp_path: Path) -> None:
    heads = (
        HeadSpec("first", "classify", tmp_path / "a", {"default": "true"}),
        HeadSpec("plain", "classify", tmp_path / "b"),
        HeadSpec("second", "classify", tmp_path / "c", {"default": "yes"}),
        HeadSpec("mlm", "mlm", tmp_path / "d", {"default": "true"}),  # another task: fine
    )
    with pytest.raises(
        DuplicateDefault, match=r"'first' and 'second' are both marked default=true for task"
    ):
        build_core(Settings(model_dir=tmp_path / "no-model-here", heads=heads))


@pytest.mark.parametrize(
    ("names", "marked", "default"),
    [
        (("alpha", "classify", "omega"), "omega", "omega"),  # marked default=true
        (("alpha", "classify", "omega"), None, "classify"),  # named after its task
        (("alpha", "beta", "omega"), None, "alpha"),  # else the first configured
    ],
)
def test_the_default_head_of_a_task(bert, names, marked, default) -> None:  # type: ignore[no-untyped-def]
    heads = tuple(
        HeadSpec(n, "classify", bert.classify, {"default": "true"} if n == marked else {})
        for n in names
    )
    core = build_core(Settings(model_dir=bert.backbone, heads=heads, device="cpu"))
    assert core.registry.resolve("classify", None) is core.registry.heads[default].head
    assert [n for n, h in core.registry.heads.items() if h.is_default] == [default]


def test_two_plugins_of_one_name_stop_the_start(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    clash = FakeDist("impostor", {"classify": "impostor_heads:Classify"}, version="9.9")
    real = find_plugins()
    monkeypatch.setattr(loading, "find_plugins", lambda: (*real, *find_plugins([clash])))
    with pytest.raises(DuplicatePlugin, match=r"'classify'.*headserve 0\.1\.0.*impostor 9\.9"):
        build_core(Settings(model_dir=tmp_path / "no-model-here"))


def test_required_heads_must_load_and_be_usable(bert, third_party) -> None:  # type: ignore[no-untyped-def]
    def start(required: tuple[str, ...], *extra: HeadSpec) -> None:
        build_core(
            Settings(
                allow_failed_heads=True,
                model_dir=bert.backbone,
                heads=_heads(bert, *extra),
                device="cpu",
                require_heads=required,
            )
        )

    start(("classify",))  # present and trained: starts
    with pytest.raises(RequiredHeadMissing, match="'ner' is not served: it is not configured"):
        start(("ner",))
    with pytest.raises(RequiredHeadMissing, match="'corrupt' is not served: .*cannot read"):
        start(("corrupt",), HeadSpec("corrupt", "corrupt"))
    with pytest.raises(RequiredHeadMissing, match="'raw' is not usable: untrained"):
        start(("raw",), HeadSpec("raw", "classify", bert.backbone))


def test_the_allow_list_keeps_a_configured_plugin_out_with_a_reason(bert, third_party) -> None:  # type: ignore[no-untyped-def]
    core = build_core(
        Settings(
            allow_failed_heads=True,
            model_dir=bert.backbone,
            heads=_heads(bert, HeadSpec("ner", "token_classification", bert.ner)),
            device="cpu",
            plugins=("classify", "silent"),
        )
    )
    assert list(core.registry.heads) == ["classify"]
    reasons = {f.label: f.reason for f in core.registry.failures}
    assert "not in the --plugins allow-list" in reasons["ner"]
    assert not any("corrupt" in label or "broken" in label for label in reasons)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "headserve"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)


def test_headserve_heads_lists_the_installed_plugins() -> None:
    done = _cli("heads")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["name", "task", "distribution", "version", "status"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["token_classification"][1:] == [
        "token_classification",
        "headserve-token-classification",
        "0.1.0",
        "ok",
    ]
    assert rows["classify"][1:] == ["classify", "headserve", "0.1.0", "ok"]
    limited = _cli("heads", "--plugins", "encode", "--json")
    statuses = {r["name"]: r["status"] for r in __import__("json").loads(limited.stdout)}
    assert statuses["encode"] == "ok"
    assert statuses["token_classification"] == "not allowed (--plugins)"


@pytest.mark.e2e
def test_serve_exits_with_the_reason_when_a_required_head_is_missing(bert) -> None:  # type: ignore[no-untyped-def]
    done = _cli(
        "serve", str(bert.backbone), "--port", "0", "--device", "cpu", "--require-head", "ner"
    )
    assert done.returncode != 0
    assert "required head 'ner' is not served" in done.stderr


SPY_KIND = """
import pathlib
MARKS = pathlib.Path({marks!r})
(MARKS / "imported").write_text("the module ran")

class SpyKind:
    name = "spy"
    contract_version = {version}

    def claims(self, source):
        (MARKS / "claimed").write_text(source)
        return False

    def load(self, source, options):
        raise NotImplementedError

    def default_heads(self, source):
        return ()
"""


@pytest.fixture
def spy_kind(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """A third party's backbone kind, a real module on disk whose import and `claims()` each
    leave a file behind, installed as an entry point of the headserve.backbones group."""
    from headserve.plugins.backbones import BACKBONE_ENTRY_POINT_GROUP
    from headserve.plugins.contract import CONTRACT_VERSION
    from headserve.server.backbones import kinds

    marks = tmp_path / "marks"
    marks.mkdir()
    code = tmp_path / "code"
    code.mkdir()
    (code / "spy_backbones.py").write_text(
        SPY_KIND.format(marks=str(marks), version=CONTRACT_VERSION)
    )
    monkeypatch.syspath_prepend(str(code))
    dist = FakeDist(
        "spy-backbones", {"spy": "spy_backbones:SpyKind"}, group=BACKBONE_ENTRY_POINT_GROUP
    )
    real = find_plugins(group=BACKBONE_ENTRY_POINT_GROUP)

    def with_spy(distributions=None, group=BACKBONE_ENTRY_POINT_GROUP):  # type: ignore[no-untyped-def]
        if group != BACKBONE_ENTRY_POINT_GROUP:
            return find_plugins(distributions, group=group)
        return (*real, *find_plugins([dist], group=group))

    monkeypatch.setattr(kinds, "find_plugins", with_spy)
    yield marks
    sys.modules.pop("spy_backbones", None)


def test_the_allow_list_keeps_a_backbone_kind_off_it_from_running(bert, spy_kind) -> None:  # type: ignore[no-untyped-def]
    heads = (HeadSpec("encode", "encode"),)
    core = build_core(
        Settings(model_dir=bert.backbone, heads=heads, device="cpu", plugins=("encode",))
    )
    assert core.backbone.kind == "transformers-text"  # the built-in kind still reads it
    assert not list(spy_kind.iterdir()), "a kind off --plugins was imported or asked"

    build_core(Settings(model_dir=bert.backbone, heads=heads, device="cpu"))  # no list: all
    assert (spy_kind / "imported").is_file() and (spy_kind / "claimed").is_file()
    for mark in spy_kind.iterdir():
        mark.unlink()
    sys.modules.pop("spy_backbones", None)
    build_core(
        Settings(
            model_dir=bert.backbone, heads=heads, device="cpu", plugins=("encode", "spy-backbones")
        )
    )
    assert (spy_kind / "claimed").read_text() == str(bert.backbone)  # listed: it runs
