"""Plugin discovery on fake distributions: find without importing, load and validate."""

from __future__ import annotations

import importlib.metadata as md
import sys
import types
from collections.abc import Iterator

import pytest

from headserve.plugins.contract import CONTRACT_VERSION, ENTRY_POINT_GROUP
from headserve.server.discovery import find_plugins, load_plugins


class FakeDist(md.Distribution):
    def __init__(self, name: str, entry_points: dict[str, str]) -> None:
        self._name = name
        self._eps = entry_points

    def read_text(self, filename: str) -> str | None:
        if filename == "METADATA":
            return f"Metadata-Version: 2.1\nName: {self._name}\nVersion: 1.2.3\n"
        if filename == "entry_points.txt":
            lines = [f"[{ENTRY_POINT_GROUP}]"] + [f"{k} = {v}" for k, v in self._eps.items()]
            return "\n".join(lines) + "\n"
        return None

    def locate_file(self, path):  # type: ignore[no-untyped-def]
        return path


class GoodPlugin:
    task = "toy"
    contract_version = CONTRACT_VERSION

    def load(self, context):  # type: ignore[no-untyped-def]
        raise NotImplementedError


class OldPlugin(GoodPlugin):
    contract_version = CONTRACT_VERSION + 100


@pytest.fixture
def fake_module() -> Iterator[str]:
    module = types.ModuleType("fake_heads")
    module.GoodPlugin = GoodPlugin  # type: ignore[attr-defined]
    module.OldPlugin = OldPlugin  # type: ignore[attr-defined]
    module.not_a_head = object()  # type: ignore[attr-defined]
    sys.modules["fake_heads"] = module
    yield "fake_heads"
    del sys.modules["fake_heads"]


def test_find_lists_without_importing() -> None:
    refs = find_plugins(
        [FakeDist("pkg-b", {"zeta": "nowhere.at.all:X"}), FakeDist("pkg-a", {"alpha": "nowhere:Y"})]
    )
    assert [(r.name, r.distribution, r.version) for r in refs] == [
        ("alpha", "pkg-a", "1.2.3"),
        ("zeta", "pkg-b", "1.2.3"),
    ]
    assert "nowhere" not in sys.modules


def test_load_reports_each_failure_and_keeps_the_rest(fake_module: str) -> None:
    dist = FakeDist(
        "third-party",
        {
            "good": f"{fake_module}:GoodPlugin",
            "broken": "module_that_does_not_exist:Head",
            "notahead": f"{fake_module}:not_a_head",
            "old": f"{fake_module}:OldPlugin",
        },
    )
    loaded, failed = load_plugins(find_plugins([dist]))
    assert [p.ref.name for p in loaded] == ["good"]
    reasons = {f.label: f.reason for f in failed}
    assert "failed to import" in reasons["third-party[broken]"]
    assert "not a head plugin" in reasons["third-party[notahead]"]
    assert "contract version" in reasons["third-party[old]"]


def test_builtin_heads_are_entry_points() -> None:
    names = {r.name: r.distribution for r in find_plugins()}
    for task in ("encode", "mlm", "classify", "qa"):
        assert names[task] == "headserve"
