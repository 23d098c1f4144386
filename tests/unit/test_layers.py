"""The server's layers (docs/architecture.md) as import-linter checks them: each module imports
only from layers below its own, and sibling modules import one another in no cycle. The
contracts live in pyproject.toml; `make test` runs them here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT), "--config", str(config), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )


def test_the_server_keeps_its_layers_and_has_no_import_cycles() -> None:
    run = _lint(ROOT / "pyproject.toml")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "server layers KEPT" in run.stdout
    assert "no import cycles in the server KEPT" in run.stdout
    analyzed = int(run.stdout.split("Analyzed ")[1].split(" files")[0])
    assert analyzed >= 70, run.stdout  # every module of the server was read


def test_the_contract_sees_an_upward_import(tmp_path: Path) -> None:
    """The same tool, told that tasks/ sits below core/ (it is above), reports the imports
    that break it: the check reads the real imports, it does not pass by seeing none."""
    config = tmp_path / "upside-down.toml"
    config.write_text(
        "[tool.importlinter]\n"
        'root_packages = ["headserve.server"]\n'
        "[[tool.importlinter.contracts]]\n"
        'name = "tasks below core"\n'
        'type = "layers"\n'
        'containers = ["headserve.server"]\n'
        'layers = ["core", "tasks"]\n'
    )
    run = _lint(config)
    assert run.returncode == 1, run.stdout
    assert "tasks below core BROKEN" in run.stdout
    assert "headserve.server.tasks" in run.stdout and "headserve.server.core" in run.stdout
