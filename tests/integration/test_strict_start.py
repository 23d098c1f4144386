"""A head the operator configured that cannot load stops the start, in one line that says
which head and why, and names the likely intent of a mistyped --head;
--allow-failed-heads serves the rest instead."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from headserve.plugins.contract import HeadSpec
from headserve.server.config import PACKAGED_SENTIMENT, parse_head
from headserve.server.core.heads import HeadsFailed
from headserve.server.loading import Settings, build_core

SENTIMENT = Path(str(resources.files("headserve.plugins") / PACKAGED_SENTIMENT))


def _start(bert, *heads: str, **settings: object):  # type: ignore[no-untyped-def]
    specs = (HeadSpec("enc", "encode"), *(parse_head(h) for h in heads))
    return build_core(Settings(model_dir=bert.backbone, heads=specs, device="cpu", **settings))  # type: ignore[arg-type]


def test_a_mistyped_plugin_stops_the_start_with_a_suggestion(bert) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(HeadsFailed) as stopped:
        _start(bert, "x=clasify")
    message = str(stopped.value)
    assert "head 'x': no plugin 'clasify'" in message
    assert "did you mean 'classify'?" in message
    assert "--allow-failed-heads" in message and "\n" not in message


def test_a_missing_folder_is_said_to_be_missing(bert, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(HeadsFailed, match=r"head 's': .*nonexistent does not exist"):
        _start(bert, f"s=classify:{tmp_path / 'nonexistent'}")


def test_an_artifact_named_with_a_plugin_says_how_to_write_it(bert) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(HeadsFailed) as stopped:
        _start(bert, f"reviews=classify:{SENTIMENT}")
    assert "is a trained head artifact" in str(stopped.value)
    assert f"--head reviews={SENTIMENT}" in str(stopped.value)


def test_allow_failed_heads_serves_the_others(bert) -> None:  # type: ignore[no-untyped-def]
    core = _start(bert, "x=clasify", allow_failed_heads=True)
    assert list(core.registry.heads) == ["enc"]
    assert [f.label for f in core.registry.failures] == ["x"]


@pytest.mark.e2e
def test_the_cli_exits_at_once_with_one_line(bert) -> None:  # type: ignore[no-untyped-def]
    run = subprocess.run(
        [
            str(Path(sys.executable).parent / "headserve"),
            "serve",
            str(bert.backbone),
            "--port",
            "0",
            "--head",
            "enc=encode",
            "--head",
            "x=nosuchplugin",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode != 0
    assert "cannot start: head 'x': no plugin 'nosuchplugin'" in run.stderr
    assert "Traceback" not in run.stderr and "ready:" not in run.stderr


def test_an_unknown_head_option_is_refused_naming_the_known_ones(bert) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(HeadsFailed) as stopped:
        _start(bert, "s=classify,bogus=1")
    message = str(stopped.value)
    assert "head 's': unknown option 'bogus'" in message
    assert (
        "(plugin 'classify' takes: activation, default, multi_label, num_labels, rerank_score)"
        in message
    )


def test_a_mistyped_head_option_gets_a_suggestion(bert) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(
        HeadsFailed, match=r"unknown option 'normalise' .*did you mean 'normalize'\?"
    ):
        _start(bert, "e2=encode,normalise=true")


def test_declared_options_and_default_are_taken(bert) -> None:  # type: ignore[no-untyped-def]
    core = _start(
        bert, "s=classify,activation=sigmoid,num_labels=3,default=true", "e2=encode,normalize=true"
    )
    assert set(core.registry.heads) == {"enc", "s", "e2"}
    with pytest.raises(HeadsFailed) as stopped:  # an artifact's `force` passes the check
        _start(bert, f"r={SENTIMENT},force=true")
    assert "unknown option" not in str(stopped.value) and "hidden size" in str(stopped.value)
