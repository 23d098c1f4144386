"""docs/plugins.md is enough to write, install and serve a head: the guide's example
package is taken from the page as written, pip-installed, discovered by `headserve heads`,
served by `headserve serve --head`, and called through the typed client."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from serving import start_cli_server
from transformers import AutoModel, AutoTokenizer

from headserve.client import Client, InvalidArgumentError

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
GUIDE = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
FILE_BLOCK = re.compile(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", re.DOTALL)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The guide's package, written from the page and pip-installed into its own folder."""
    root = tmp_path_factory.mktemp("guide")
    files = FILE_BLOCK.findall(GUIDE.read_text())
    assert {name for name, _ in files} == {
        "similarity-head/pyproject.toml",
        "similarity-head/src/similarity_head/__init__.py",
    }
    for name, text in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    target = root / "site"
    subprocess.run(
        [
            str(BIN / "pip"),
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(root / "similarity-head"),
        ],
        check=True,
        timeout=300,
    )
    return {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}


def test_headserve_heads_sees_the_installed_plugin(installed: dict[str, str]) -> None:
    done = subprocess.run(
        [str(BIN / "headserve"), "heads"], env=installed, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()[1:]}
    assert rows["similarity"] == ["similarity", "similarity-head", "0.1.0", "ok"]


@pytest.fixture(scope="module")
def served(installed: dict[str, str], bert) -> Iterator[str]:  # type: ignore[no-untyped-def]
    server = start_cli_server(
        [
            str(bert.backbone),
            "--device",
            "cpu",
            "--head",
            "encode=encode",
            "--head",
            "sim=similarity",
            "--require-head",
            "sim",
        ],
        installed,
        service="headserve.v1.Heads",
    )
    yield server.target
    server.proc.terminate()
    server.proc.wait(timeout=30)


@torch.inference_mode()
def _reference(bert, a: str, b: str) -> tuple[float, np.ndarray]:  # type: ignore[no-untyped-def]
    model = AutoModel.from_pretrained(str(bert.backbone)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(bert.backbone))
    vectors = [
        model(**tokenizer(t, return_tensors="pt")).last_hidden_state[0].mean(0) for t in (a, b)
    ]
    cosine = float(torch.nn.functional.cosine_similarity(vectors[0], vectors[1], dim=0))
    return cosine, torch.stack(vectors).numpy()


def test_the_guide_head_serves_beside_the_built_ins(served: str, bert) -> None:  # type: ignore[no-untyped-def]
    pair = ("The quick brown fox jumps.", "A fast fox leaps over the dog.")
    with Client(served, max_retries=0) as client:
        result = client.run("sim", [pair], options={"return_vectors": True})
        info = client.model_info()
        assert client.encode(["still one backbone"]).vectors.shape[0] == 1
        with pytest.raises(InvalidArgumentError, match=r"items\[0\]\.text_pair"):
            client.run("sim", ["no pair"])
        with pytest.raises(InvalidArgumentError, match=r"options\.pooling"):
            client.run("sim", [pair], options={"pooling": "max"})
    cosine, vectors = _reference(bert, *pair)
    assert result.task == "similarity"
    assert result[0].fields["similarity"] == pytest.approx(cosine, abs=1e-5)
    np.testing.assert_allclose(result[0].tensors["vectors"], vectors, atol=1e-5)
    sim = info.head("sim")
    assert (sim.distribution, sim.version, sim.usable) == ("similarity-head", "0.1.0", True)
    assert [p.name for p in sim.parameters] == ["pooling", "return_vectors"]
