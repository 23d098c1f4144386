"""The container images and the Kubernetes manifests that run them.

No Docker engine runs where the tests run, so the CPU image is tested by its own steps: the
Dockerfile is read with dockerfile-parse, its build stage's COPY and RUN steps run into a
folder standing for the image's filesystem (a fresh venv at its /opt/headserve), and then its
ENTRYPOINT + CMD start the server as the image's non-root user, whose HEALTHCHECK and a gRPC
call must answer. What this cannot show (the base image, `useradd`, the layers) is said in
docs/operations.md. hadolint lints every Dockerfile; kubernetes-validate --strict checks the
manifests against Kubernetes' schemas (KubeRay's RayService has none there: its content is
checked by tests/unit/test_deploy.py).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from headserve.client import Client

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DOCKERFILES = {
    "Dockerfile": ROOT / "Dockerfile",
    "cuda": ROOT / "deploy" / "docker" / "cuda.Dockerfile",
    "ray": ROOT / "deploy" / "docker" / "ray.Dockerfile",
}
MANIFESTS = {
    "Dockerfile": ROOT / "deploy" / "standalone" / "headserve.yaml",
    "cuda": ROOT / "deploy" / "standalone" / "headserve-gpu.yaml",
    "ray": ROOT / "deploy" / "ray" / "rayservice.yaml",
}
# download.pytorch.org is not reachable here: the torch index is the build argument's mirror
# case, PyPI (this machine's pip finds the pinned CPU wheel on its disk).
BUILD_ARGS = {"TORCH_INDEX_URL": "https://pypi.org/simple"}
CONTAINER_DIRS = ("/opt", "/src", "/home")


@pytest.mark.parametrize("name", list(DOCKERFILES))
def test_hadolint_passes(name: str) -> None:
    run = subprocess.run([BIN / "hadolint", DOCKERFILES[name]], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_manifests_pass_kubernetes_validate_strict() -> None:
    run = subprocess.run(
        [BIN / "kubernetes-validate", "--strict", *MANIFESTS.values()],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("passed for resource") == 4, run.stdout  # every non-custom kind
    assert "Couldn't find schema for kind RayService" in run.stdout  # a CRD: test_deploy.py


@pytest.mark.parametrize("name", list(DOCKERFILES))
def test_the_manifests_run_the_images_the_dockerfiles_build(name: str) -> None:
    (tag,) = re.findall(r"docker build .*-t (\S+) \.", DOCKERFILES[name].read_text())
    images = re.findall(r"image: (\S+)", MANIFESTS[name].read_text())
    assert images and set(images) == {tag}, (tag, images)


def test_the_standalone_pods_run_as_the_images_user() -> None:
    (uid,) = re.findall(r"--uid (\d+)", DOCKERFILES["Dockerfile"].read_text())
    for name in ("Dockerfile", "cuda"):
        docs = [d for d in yaml.safe_load_all(MANIFESTS[name].read_text()) if d]
        (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
        context = deployment["spec"]["template"]["spec"]["securityContext"]
        assert context == {"runAsNonRoot": True, "runAsUser": int(uid)}


@dataclass
class Image:
    """The filesystem the Dockerfile's steps made (under `root`) and its runtime settings."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)
    user: int | None = None
    workdir: Path | None = None
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # steps only a Docker engine can run

    def path(self, container_path: str) -> Path:
        return self.root / container_path.lstrip("/")

    def local(self, text: str) -> str:
        """`text` with the image's absolute paths made paths under `root`."""
        for folder in CONTAINER_DIRS:
            text = re.sub(rf"(?<![\w./]){folder}(?=[/\s\"':]|$)", f"{self.root}{folder}", text)
        return text


def _env_pairs(value: str) -> dict[str, str]:
    return dict(word.split("=", 1) for word in shlex.split(value))


def _copy(image: Image, value: str, workdir: Path) -> None:
    words = shlex.split(value)
    if words[0].startswith("--from="):
        (source, target) = words[1:]
        assert image.path(source) == image.path(target)  # the same path in both stages
        return
    *sources, target = words
    ignore = shutil.ignore_patterns("__pycache__", "build", "*.egg-info", "token-classification")
    for source in sources:
        origin = ROOT / source
        destination = workdir / target
        if origin.is_dir():
            shutil.copytree(origin, destination, ignore=ignore, dirs_exist_ok=True)
        else:
            destination.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, destination / origin.name)


def build(dockerfile: Path, root: Path) -> Image:
    """Run `dockerfile`'s steps into `root`; return what its last stage would run."""
    image = Image(root)
    args: dict[str, str] = {}
    path = f"{Path(sys.base_prefix) / 'bin'}:/usr/local/bin:/usr/bin:/bin"
    for step in DockerfileParser(path=str(dockerfile)).structure:
        kind, value = step["instruction"], step["value"]
        if kind == "ARG":
            name, _, default = value.partition("=")
            args[name] = BUILD_ARGS.get(name, default)
        elif kind == "FROM":
            image.env = {"PATH": path, "HOME": str(root / "root")}
            image.workdir = root
        elif kind == "ENV":
            for name, text in _env_pairs(value).items():
                text = text.replace("$PATH", image.env["PATH"])
                image.env[name] = image.local(text)
        elif kind == "WORKDIR":
            image.workdir = image.path(value)
            image.workdir.mkdir(parents=True, exist_ok=True)
        elif kind == "COPY":
            assert image.workdir is not None
            _copy(image, value, image.workdir)
        elif kind == "RUN":
            if value.startswith("useradd "):  # the image's user: root's business, not ours
                image.skipped.append(value)
                continue
            env = {**os.environ, **args, **image.env}
            env.pop("PIP_NO_CACHE_DIR", None)  # pip's cache here, for speed only
            run = subprocess.run(
                ["sh", "-c", image.local(value)],
                cwd=image.workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
            )
            assert run.returncode == 0, f"RUN {value}\n{run.stdout[-3000:]}{run.stderr[-3000:]}"
        elif kind == "USER":
            image.user = int(value)
        elif kind == "ENTRYPOINT":
            image.entrypoint = json.loads(value)
        elif kind == "CMD":
            image.cmd = json.loads(value)
        elif kind == "HEALTHCHECK":
            image.healthcheck = json.loads(value.split(" CMD ", 1)[1])
    return image


def _others_reach(folder: Path) -> bool:
    """Whether a user other than the owner can enter `folder` (every folder above it too)."""
    return all(p.stat().st_mode & stat.S_IXOTH for p in (folder, *folder.parents))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    # not pytest's tmp_path: the image's user must be able to reach it (that folder is 0700)
    root = Path(tempfile.mkdtemp(prefix="headserve-image-"))
    root.chmod(0o755)
    try:
        yield build(DOCKERFILES["Dockerfile"], root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_image_runs_as_a_user_of_its_own(image: Image) -> None:
    assert image.user is not None and image.user != 0
    assert image.skipped == [f"useradd --create-home --uid {image.user} --user-group headserve"]


def test_the_image_serves_and_its_healthcheck_answers(image: Image) -> None:
    ports = {"50051": _free_port(), "8080": _free_port(), "9090": _free_port()}

    def ported(words: list[str]) -> list[str]:
        return [
            re.sub(r"\b(50051|8080|9090)\b", lambda m: str(ports[m.group(1)]), w) for w in words
        ]

    home = image.workdir
    assert home is not None
    env = {**image.env, "HOME": str(home)}
    as_user = None
    if os.geteuid() == 0 and _others_reach(Path(sys.base_prefix)):
        # as the image's user, as the container would; not where the interpreter the venv
        # was made from lies in a folder only root may enter (pyenv under /root, say)
        os.chown(home, image.user or 0, image.user or 0)
        user = image.user or 0

        def as_user() -> None:
            os.setgid(user)
            os.setuid(user)

    program = shutil.which(image.entrypoint[0], path=env["PATH"])
    assert program is not None and program.startswith(str(image.root)), program
    command = [program, *image.entrypoint[1:], *ported(image.cmd)]
    server = subprocess.Popen(
        command, env=env, cwd=home, stderr=subprocess.PIPE, text=True, preexec_fn=as_user
    )
    try:
        healthy = False
        deadline = time.monotonic() + 180
        while not healthy and time.monotonic() < deadline and server.poll() is None:
            check = subprocess.run(
                ported(image.healthcheck), env=env, capture_output=True, preexec_fn=as_user
            )
            healthy = check.returncode == 0
            time.sleep(0.5)
        assert healthy, "the HEALTHCHECK never passed"
        with Client(f"127.0.0.1:{ports['50051']}", timeout=30) as client:
            assert client.encode(["A container's first call."]).vectors.shape == (1, 384)
    finally:
        server.send_signal(signal.SIGTERM)
        _, log = server.communicate(timeout=60)
    assert server.returncode == 0, log
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert lines and len(lines) == len(log.splitlines()), log  # --log-format=json, every line
    assert not [line for line in lines if line["level"] in ("ERROR", "CRITICAL")], log
