"""Backbone kinds are found through entry points; a third party's kind comes before the
built-in ones, `--backbone-kind` names one outright, and a source nobody reads is refused
with the kinds there are."""

from __future__ import annotations

import importlib.metadata as md
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakedist import FakeDist

from headserve.plugins.backbones import BACKBONE_ENTRY_POINT_GROUP
from headserve.plugins.contract import CONTRACT_VERSION, HeadSpec
from headserve.server.backbones.kinds import NoBackboneKind, choose_kind, installed_kinds


class ToyKind:
    """Claims efficientnet-lite0 too: a plugin may take over what a built-in kind reads."""

    name = "toy"
    contract_version = CONTRACT_VERSION

    def claims(self, source: str) -> bool:
        return source in {"toy-model", "efficientnet-lite0"}

    def load(self, source, options):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def default_heads(self, source: str) -> tuple[HeadSpec, ...]:
        return (HeadSpec("encode", "encode"),)


class OldKind(ToyKind):
    name = "old"
    contract_version = 0


class NotAKind:
    name = "broken"


@pytest.fixture
def kinds() -> Iterator[list]:  # type: ignore[type-arg]
    module = types.ModuleType("toy_backbones")
    module.ToyKind, module.OldKind, module.NotAKind = ToyKind, OldKind, NotAKind  # type: ignore[attr-defined]
    sys.modules["toy_backbones"] = module
    fake = FakeDist(
        "toy-backbones",
        {
            "toy": "toy_backbones:ToyKind",
            "old": "toy_backbones:OldKind",
            "broken": "toy_backbones:NotAKind",
            "missing": "toy_backbones_gone:Kind",
        },
        group=BACKBONE_ENTRY_POINT_GROUP,
    )
    yield installed_kinds([*md.distributions(), fake])
    del sys.modules["toy_backbones"]


def test_built_in_kinds_are_entry_points_and_a_plugin_comes_first(kinds) -> None:  # type: ignore[no-untyped-def]
    names = [(k.ref.name, k.ref.distribution) for k in kinds]
    assert names[0] == ("toy", "toy-backbones")  # only the kind that meets the contract
    assert {"transformers-text", "transformers-image", "efficientnet-lite"} <= {
        n for n, d in names if d == "headserve"
    }
    assert {"old", "broken", "missing"}.isdisjoint(n for n, _ in names)
    assert isinstance(choose_kind("toy-model", kinds=kinds), ToyKind)
    assert isinstance(choose_kind("efficientnet-lite0", kinds=kinds), ToyKind)


def test_backbone_kind_names_one_and_an_unknown_name_is_refused(kinds) -> None:  # type: ignore[no-untyped-def]
    kind = choose_kind("efficientnet-lite0", "efficientnet-lite", kinds=kinds)
    assert kind.name == "efficientnet-lite"
    with pytest.raises(NoBackboneKind, match="no such backbone kind.*transformers-text"):
        choose_kind("efficientnet-lite0", "nope", kinds=kinds)


def test_a_source_nobody_reads_is_refused_with_the_kinds_there_are(tmp_path: Path, kinds) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NoBackboneKind, match="not a Hugging Face checkpoint folder.*toy"):
        choose_kind(str(tmp_path), kinds=kinds)
    (tmp_path / "config.json").write_text('{"model_type": "whisper"}')
    with pytest.raises(NoBackboneKind, match="no backbone kind reads it"):
        choose_kind(str(tmp_path), kinds=kinds)


def test_the_built_in_kinds_tell_text_from_image_folders(families, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from pictures import make_vision

    assert choose_kind(str(families["bert"].backbone)).name == "transformers-text"
    assert choose_kind(str(make_vision(tmp_path, "vit"))).name == "transformers-image"
    assert choose_kind("efficientnet-lite0").name == "efficientnet-lite"
