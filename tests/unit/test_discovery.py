"""Plugin discovery on fake distributions: find without importing, load and validate."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator

import pytest
from fakedist import FakeDist

from headserve.plugins.contract import CONTRACT_VERSION
from headserve.server.discovery import (
    DuplicatePlugin,
    allowed,
    check_unique,
    find_plugins,
    load_plugins,
    plugin_report,
    validate,
)


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


def test_two_plugins_of_one_name_stop_the_server_naming_both() -> None:
    refs = find_plugins(
        [FakeDist("pkg-one", {"ner": "one:Plugin"}), FakeDist("pkg-two", {"ner": "two:Plugin"})]
    )
    with pytest.raises(DuplicatePlugin, match=r"'ner'.*pkg-one 1\.2\.3 \(one:Plugin\).*pkg-two"):
        check_unique(refs)
    kept, _ = allowed(refs, ["pkg-two"])  # the allow-list can settle it
    check_unique(kept)
    assert [r.distribution for r in kept] == ["pkg-two"]


def test_the_allow_list_matches_plugin_or_distribution_names_before_import() -> None:
    refs = find_plugins(
        [
            FakeDist("Third_Party.Heads", {"tagger": "never_imported_a:X"}),
            FakeDist("other", {"ner": "never_imported_b:Y", "sim": "never_imported_c:Z"}),
        ]
    )
    kept, out = allowed(refs, ["third-party-heads", "sim"])
    assert sorted(r.name for r in kept) == ["sim", "tagger"]
    assert [r.name for r in out] == ["ner"]
    assert allowed(refs, None) == (refs, ())
    load_plugins(kept)  # imports only what is allowed (and reports these as failures)
    assert "never_imported_b" not in sys.modules


def test_the_report_lists_every_plugin_with_its_status(fake_module: str) -> None:
    dists = [
        FakeDist(
            "third-party",
            {
                "good": f"{fake_module}:GoodPlugin",
                "broken": "module_that_does_not_exist:Head",
                "old": f"{fake_module}:OldPlugin",
                "twin": f"{fake_module}:GoodPlugin",
                "kept_out": f"{fake_module}:GoodPlugin",
            },
        ),
        FakeDist("another", {"twin": f"{fake_module}:GoodPlugin"}),
    ]
    allow = ["good", "broken", "old", "twin"]
    rows = {(r.name, r.distribution): r for r in plugin_report(allow, dists)}
    assert rows["good", "third-party"].status == "ok"
    assert rows["good", "third-party"].task == "toy"
    assert rows["good", "third-party"].version == "1.2.3"
    assert rows["broken", "third-party"].status.startswith("failed to import")
    assert "contract version" in rows["old", "third-party"].status
    assert "also provided by another" in rows["twin", "third-party"].status
    assert "also provided by third-party" in rows["twin", "another"].status
    assert rows["kept_out", "third-party"].status == "not allowed (--plugins)"


def test_a_plugin_must_name_its_task() -> None:
    class NoTask(GoodPlugin):
        task = ""

    assert "task" in (validate(NoTask()) or "")
    assert validate(GoodPlugin()) is None
