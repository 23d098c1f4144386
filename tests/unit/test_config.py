from __future__ import annotations

from pathlib import Path

import pytest

from headserve.server.config import BUILTIN_TASKS, ConfigError, head_specs, parse_head


def test_parse_head_with_source_and_options() -> None:
    spec = parse_head("topics=classify:/models/topics,multi_label=true,default=yes")
    assert (spec.name, spec.plugin, spec.source) == ("topics", "classify", Path("/models/topics"))
    assert dict(spec.options) == {"multi_label": "true", "default": "yes"}


def test_parse_head_without_source() -> None:
    spec = parse_head("mlm=mlm")
    assert (spec.name, spec.plugin, spec.source) == ("mlm", "mlm", None)


@pytest.mark.parametrize("bad", ["sentiment", "=classify", "x=", "x=classify,novalue"])
def test_parse_head_rejects(bad: str) -> None:
    with pytest.raises(ConfigError):
        parse_head(bad)


def test_config_file_and_cli_together(tmp_path: Path) -> None:
    config = tmp_path / "heads.toml"
    config.write_text(
        '[heads.sentiment]\nplugin = "classify"\nsource = "/m/sst2"\n'
        '[heads.topics]\nplugin = "classify"\nsource = "/m/topics"\nmulti_label = true\n'
    )
    specs = head_specs(["enc=encode"], config)
    assert [s.name for s in specs] == ["sentiment", "topics", "enc"]
    assert specs[1].options["multi_label"] == "true"


def test_defaults_are_one_head_per_builtin_task() -> None:
    assert [(s.name, s.plugin, s.source) for s in head_specs([], None)] == [
        (t, t, None) for t in BUILTIN_TASKS
    ]
