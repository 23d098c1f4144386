"""Every option of every command says its default in --help, and ray-config's --help says
what --app is."""

from __future__ import annotations

import argparse
import re

import pytest

from headserve.server.options import parser
from headserve.server.ray_config import _parser as ray_config_parser


def _commands() -> dict[str, argparse.ArgumentParser]:
    (sub,) = (a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {**sub.choices, "ray-config": ray_config_parser()}


@pytest.mark.parametrize("command", ["serve", "info", "heads", "train-head", "ray-config"])
def test_every_option_with_a_default_says_it(command: str) -> None:
    p = _commands()[command]
    entries = re.split(r"\n  (?=-)", p.format_help().split("\noptions:", 1)[1])
    helps = {e.split()[0].rstrip(","): " ".join(e.split()) for e in entries if e.strip()}
    for action in p._actions:
        if action.default in (None, False, [], argparse.SUPPRESS) or not action.option_strings:
            continue
        entry = helps[action.option_strings[0]]
        assert "default" in entry, f"headserve {command} --help: {entry!r}"


def test_ray_config_help_explains_app() -> None:
    text = " ".join(ray_config_parser().format_help().split())
    assert "[--app NAME [SERVE OPTIONS ...]]" in text
    assert "--app NAME [SERVE OPTIONS ...]: an application named NAME" in text
