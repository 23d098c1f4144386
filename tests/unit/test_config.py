from __future__ import annotations

import json
from pathlib import Path

import pytest

from headserve.server.config import (
    BUILTIN_TASKS,
    ConfigError,
    default_heads,
    head_specs,
    parse_head,
)


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
    assert head_specs([], None) == ()
    assert [(s.name, s.plugin, s.source) for s in default_heads(packaged_model=False)] == [
        (t, t, None) for t in BUILTIN_TASKS
    ]


def test_the_packaged_model_gets_the_packaged_sentiment_head() -> None:
    specs = {s.name: s for s in default_heads(packaged_model=True)}
    assert list(specs) == ["encode", "mlm", "sentiment", "qa"]
    sentiment = specs["sentiment"]
    assert sentiment.plugin == "trained_classify"
    assert sentiment.source is not None and (sentiment.source / "head.safetensors").is_file()
    meta = json.loads((sentiment.source / "head.json").read_text())
    assert meta["task"] == "classify" and meta["labels"] == ["negative", "positive"]
    # what it does is tested by serving it: tests/e2e/test_cli.py classifies reviews with it


def test_a_head_artifact_folder_picks_its_plugin(tmp_path: Path) -> None:
    folder = tmp_path / "my-head"
    folder.mkdir()
    (folder / "head.json").write_text(json.dumps({"task": "qa"}))
    spec = parse_head(f"answers={folder},force=true")
    assert (spec.name, spec.plugin, spec.source) == ("answers", "trained_qa", folder)
    assert spec.options == {"force": "true"}
    with pytest.raises(ConfigError, match="not a head artifact"):
        parse_head(f"x={tmp_path / 'missing'}")
    config = tmp_path / "heads.toml"
    config.write_text(f'[heads.answers]\nsource = "{folder}"\n')
    assert head_specs([], config)[0].plugin == "trained_qa"
