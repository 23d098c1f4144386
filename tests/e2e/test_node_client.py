"""A real Node.js client (@grpc/grpc-js, protos loaded at run time) calls the server."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from serving import ServerThread

from headserve.plugins.contract import HeadSpec
from headserve.server.loading import Settings

pytestmark = pytest.mark.e2e
NODE_DIR = Path(__file__).parent / "node"
PROTOS = Path(__file__).resolve().parents[2] / "protos"


@pytest.fixture(scope="module")
def node_client() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "Node.js and npm are needed for the cross-language test (see README)"
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--no-save", "--silent"],
            cwd=NODE_DIR,
            check=True,
            timeout=300,
        )
    return NODE_DIR / "client.js"


@pytest.fixture(scope="module")
def server(bert) -> Iterator[ServerThread]:  # type: ignore[no-untyped-def]
    heads = (
        HeadSpec("encode", "encode"),
        HeadSpec("sentiment", "classify", bert.classify),
        HeadSpec("qa", "qa", bert.qa),
        HeadSpec("ner", "token_classification", bert.ner),
    )
    thread = ServerThread(Settings(model_dir=bert.backbone, heads=heads, device="cpu"))
    yield thread
    thread.stop()


def test_node_client_calls_every_kind_of_rpc(node_client: Path, server: ServerThread) -> None:
    run = subprocess.run(
        ["node", str(node_client), server.target, str(PROTOS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["encode"]["dims"] == [32, 32] and out["encode"]["tokens"] > 0
    assert (
        out["badEncode"]["code"] == 3 and "items[1].text" in out["badEncode"]["details"]
    )  # INVALID_ARGUMENT
    labels = dict(out["classify"])
    assert (
        set(labels) == {"negative", "neutral", "positive"} and abs(sum(labels.values()) - 1) < 1e-5
    )
    # code-point offsets: "Zoë" is 3 characters even though "ë" is 2 bytes in UTF-8
    for answer in out["answers"]:
        assert out["context"][answer["start"] : answer["end"]] == answer["text"]
    assert out["heads"] == ["encode", "sentiment", "qa", "ner"]
    run = out["run"]
    assert run["task"] == "token_classification" and run["entities"]
    text = "Bob works in Berlin."
    assert all(text[e["start"] : e["end"]] == e["text"] for e in run["entities"])
    tokens, labels = run["logitsShape"]
    assert run["logitsBytes"] == tokens * labels * 4  # float32
    assert out["badRun"]["code"] == 3 and "options.aggregation" in out["badRun"]["details"]
    assert [(s["id"], s["outcome"], s["code"]) for s in out["streamed"]] == [
        ("a", "response", 0),
        ("b", "error", 3),
        ("c", "response", 0),
    ]
    assert "items[0].text" in out["streamed"][1]["message"]
