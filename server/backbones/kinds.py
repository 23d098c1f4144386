"""Which code loads the backbone: the kinds installed under `headserve.backbones`.

The operator names a source (a checkpoint folder, or a model name such as
"efficientnet-lite0"); each kind says whether it claims it, third-party kinds first and the
built-in ones (distribution headserve) last, so a plugin can take over a source a built-in
kind would also read. `--backbone-kind NAME` picks one outright.

`--plugins` governs these entry points as it governs heads': with an allow-list, a third-party
kind off it is never imported (its module never runs). The built-in kinds are the server's own
code and always stay.
"""

from __future__ import annotations

import importlib.metadata as md
import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from headserve.plugins.backbones import BACKBONE_ENTRY_POINT_GROUP, BackboneKind
from headserve.plugins.contract import CONTRACT_VERSION

from .. import extras
from ..discovery import PluginRef, StartupError, allowed, find_plugins

log = logging.getLogger(__name__)

BUILT_IN = "headserve"


class NoBackboneKind(StartupError):
    pass


@dataclass(frozen=True)
class FoundKind:
    ref: PluginRef
    kind: BackboneKind


def _problem(kind: object) -> str | None:
    if not isinstance(kind, BackboneKind):
        missing = [
            a
            for a in ("name", "contract_version", "claims", "load", "default_heads")
            if not hasattr(kind, a)
        ]
        return "not a backbone kind: missing " + ", ".join(missing)
    if kind.contract_version != CONTRACT_VERSION:
        return (
            f"written for contract version {kind.contract_version!r}, "
            f"this server speaks {CONTRACT_VERSION}"
        )
    return None


def installed_kinds(
    distributions: Iterable[md.Distribution] | None = None,
    allow: Collection[str] | None = None,
) -> list[FoundKind]:
    """Every backbone kind that imports and meets the contract, built-in ones last; with an
    allow-list (`--plugins`), only the built-in kinds and those it names are imported."""
    refs = find_plugins(distributions, group=BACKBONE_ENTRY_POINT_GROUP)
    if allow is not None:
        named, kept_out = allowed(refs, allow)
        refs = tuple(r for r in refs if r in named or r.distribution == BUILT_IN)
        for ref in kept_out:
            if ref.distribution != BUILT_IN:
                log.info("backbone kind %s not imported: not in --plugins", ref.label)
    found = []
    for ref in refs:
        try:
            obj = ref.entry_point.load()
            kind = obj() if isinstance(obj, type) else obj
        except ModuleNotFoundError as exc:
            if ref.distribution == BUILT_IN and extras.named_by(exc):
                # a kind of an extra not installed (images): said when a source needs it
                log.debug("backbone kind %s not available: %s", ref.label, exc)
                continue
            log.error("backbone kind %s failed to import: %r", ref.label, exc, exc_info=exc)
            continue
        except Exception as exc:  # a third party's import can raise anything
            log.error("backbone kind %s failed to import: %r", ref.label, exc, exc_info=exc)
            continue
        problem = _problem(kind)
        if problem is not None:
            log.error("backbone kind %s refused: %s", ref.label, problem)
            continue
        found.append(FoundKind(ref, kind))
    return sorted(found, key=lambda f: (f.ref.distribution == BUILT_IN, f.ref.name))


def choose_kind(
    source: str,
    name: str | None = None,
    kinds: list[FoundKind] | None = None,
    allow: Collection[str] | None = None,
) -> BackboneKind:
    """The kind named, or the first that claims `source`, among the kinds `allow` lets in
    (`--plugins`; None: all); a clear error when none does."""
    kinds = installed_kinds(allow=allow) if kinds is None else kinds
    names = ", ".join(f.ref.name for f in kinds) or "none"
    if name:
        for found in kinds:
            if found.ref.name == name:
                return found.kind
        raise NoBackboneKind(f"--backbone-kind {name}: no such backbone kind (installed: {names})")
    for found in kinds:
        try:
            if found.kind.claims(source):
                return found.kind
        except Exception as exc:  # a kind's check that breaks must not hide the others
            log.error("backbone kind %s failed to check %s: %r", found.ref.label, source, exc)
    images = extras.missing("images")
    if not (Path(source) / "config.json").is_file():
        if images:  # efficientnet-lite0 is the images extra's
            raise NoBackboneKind(str(extras.MissingExtra("images", f"{source} (an image model?)")))
        raise NoBackboneKind(
            f"{source} is not a Hugging Face checkpoint folder (no config.json), nor a model "
            f"name a backbone kind knows (installed kinds: {names}; e.g. efficientnet-lite0)"
        )
    if images:  # no tokenizer, so no text kind claimed it
        feature = f"{source} (a checkpoint with no tokenizer: an image model?)"
        raise NoBackboneKind(str(extras.MissingExtra("images", feature)))
    raise NoBackboneKind(
        f"{source}: no backbone kind reads it (installed kinds: {names}): a text checkpoint "
        "needs a tokenizer, an image one a model_type of ResNet, ViT or ConvNeXt"
    )
