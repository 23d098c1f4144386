"""Packaging promises: a client-only install, a typed client, names under headserve.*."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_base_install_is_the_client_only() -> None:
    base = " ".join(PYPROJECT["project"]["dependencies"]).lower()
    for heavy in ("torch", "transformers", "tokenizers", "safetensors"):
        assert heavy not in base
    server = " ".join(PYPROJECT["project"]["optional-dependencies"]["server"]).lower()
    assert "torch" in server and "transformers" in server


def test_import_names_live_under_headserve() -> None:
    packages = PYPROJECT["tool"]["setuptools"]["packages"]
    assert all(p.startswith("headserve.") for p in packages)
    for name in ("headserve.v1", "headserve.client", "headserve.server", "headserve.plugins"):
        assert name in packages


def test_every_server_package_is_installed() -> None:
    """A wheel holds only the packages listed: every folder of the server with modules is."""
    tool = PYPROJECT["tool"]["setuptools"]
    folders = {
        "headserve.server." + ".".join(p.parent.relative_to(ROOT / "server").parts)
        for p in (ROOT / "server").glob("*/**/__init__.py")
    }
    assert folders <= set(tool["packages"])
    for name in folders:
        assert tool["package-dir"][name] == name.replace("headserve.server", "server").replace(
            ".", "/"
        )


def test_client_is_mypy_strict_clean() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "client/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_server_and_plugins_are_mypy_clean(tmp_path: Path) -> None:
    """mypy with the project's settings (pyproject.toml) on the server and the plugins, as the
    package `headserve` they are installed as: a folder of links gives mypy that layout."""
    package = tmp_path / "headserve"
    package.mkdir()
    for name, folder in {
        "server": "server",
        "plugins": "plugins",
        "client": "client",
        "v1": "protos/headserve/v1",
    }.items():
        (package / name).symlink_to(ROOT / folder, target_is_directory=True)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(tmp_path / "cache"),
            "-p",
            "headserve.server",
            "-p",
            "headserve.plugins",
        ],
        cwd=ROOT,
        env={**os.environ, "MYPYPATH": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    checked = re.search(r"no issues found in (\d+) source files", run.stdout)
    assert checked is not None and int(checked.group(1)) >= 50, run.stdout  # all of them


def test_code_is_ruff_clean() -> None:
    paths = ["server", "plugins", "client", "tests", "bench", "protos/generate.py"]
    for args in (["check"], ["format", "--check"]):
        run = subprocess.run(
            [sys.executable, "-m", "ruff", *args, *paths], cwd=ROOT, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stdout + run.stderr
