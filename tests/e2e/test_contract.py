"""The contract is linted, and `buf breaking` against the v1 baseline catches real breaks.

buf comes from npm's @bufbuild/buf, installed into tools/ by `make install`. The baseline,
protos/baseline.binpb, is the v1 contract as `buf build` made it before any addition: every
later change must pass `buf breaking` against it. Each case below edits a copy of protos/ the
way a careless change would, and checks what buf says of it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
BUF = ROOT / "tools" / "node_modules" / ".bin" / "buf"
BASELINE = PROTOS / "baseline.binpb"


def buf(*args: str, cwd: Path = PROTOS) -> subprocess.CompletedProcess[str]:
    assert BUF.exists(), f"{BUF} is missing: `make install` installs it (npm ci in tools/)"
    return subprocess.run([str(BUF), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_contract_passes_buf_lint() -> None:
    run = buf("lint")
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_contract_has_no_breaking_change_against_the_v1_baseline() -> None:
    run = buf("breaking", "--against", str(BASELINE))
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_lint_exception_says_why() -> None:
    """Each rule headserve turns off is preceded by a comment giving the reason."""
    lines = (PROTOS / "buf.yaml").read_text().splitlines()
    rules = [i for i, line in enumerate(lines) if re.match(r"\s+(- )?[A-Z_]+:?\s*$", line)]
    assert rules, "no lint exceptions found: did buf.yaml change shape?"
    for i in rules:
        above = lines[i - 1].strip()
        assert above.startswith("#") or re.match(r"- [A-Z_]+$", above), lines[i]


def _edit(path: str, old: str, new: str) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        file = root / path
        text = file.read_text()
        assert old in text, f"{old!r} not in {path}: update this test with the contract"
        file.write_text(text.replace(old, new, 1))

    return apply


BREAKS = {
    "a field renumbered": (
        _edit("headserve/v1/encoder.proto", "string head = 4;", "string head = 99;"),
        r'Field "4" with name "head" on message "EncodeOptions" was deleted',
    ),
    "a field removed": (
        _edit("headserve/v1/common.proto", "optional string text_pair = 2;", ""),
        r'Field "2" with name "text_pair" on message "TextInput" was deleted',
    ),
    "a field's type changed": (
        _edit(
            "headserve/v1/common.proto", "repeated int64 shape = 1;", "repeated int32 shape = 1;"
        ),
        r'Field "1" with name "shape" on message "Tensor" changed type from "int64" to "int32"',
    ),
    "a field renamed": (
        _edit("headserve/v1/common.proto", "int64 input_tokens = 1;", "int64 tokens = 1;"),
        r'Field "1" on message "Usage" changed name from "input_tokens" to "tokens"',
    ),
    "an RPC renamed": (
        _edit(
            "headserve/v1/encoder.proto",
            "rpc Encode(EncodeRequest)",
            "rpc EncodeBatch(EncodeRequest)",
        ),
        r'Previously present RPC "Encode" on service "Encoder" was deleted',
    ),
    "an enum value renumbered": (
        _edit("headserve/v1/encoder.proto", "POOLING_MEAN = 2;", "POOLING_MEAN = 9;"),
        r'Previously present enum value "2" on enum "Pooling" was deleted',
    ),
}


@pytest.mark.parametrize("change", list(BREAKS))
def test_buf_breaking_catches(change: str, tmp_path: Path) -> None:
    edit, expected = BREAKS[change]
    copy = _copy_of_protos(tmp_path)
    edit(copy)
    run = buf("breaking", "--against", str(BASELINE), cwd=copy)
    assert run.returncode != 0, f"{change} went through: {run.stdout}{run.stderr}"
    assert re.search(expected, run.stdout, re.IGNORECASE), run.stdout + run.stderr


def test_buf_breaking_lets_additive_changes_through(tmp_path: Path) -> None:
    copy = _copy_of_protos(tmp_path)
    _edit(  # a new field, with a new number
        "headserve/v1/encoder.proto",
        "string head = 4;",
        "string head = 4;\n  // A new option.\n  optional int32 a_new_option = 98;",
    )(copy)
    _edit(  # a new RPC on an existing service
        "headserve/v1/encoder.proto",
        "service Encoder {",
        "service Encoder {\n  rpc EncodeSparse(EncodeSparseRequest) returns (EncodeSparseResponse);",
    )(copy)
    _edit(  # a new enum value, a new message
        "headserve/v1/common.proto",
        "DTYPE_INT32 = 5;",
        "DTYPE_INT32 = 5;\n  DTYPE_INT8 = 6;\n}\n\nmessage ImageInput {\n  bytes data = 1;",
    )(copy)
    _edit(
        "headserve/v1/encoder.proto",
        "message Embedding {",
        "message EncodeSparseRequest {\n  repeated TextInput items = 1;\n}\n\n"
        "message EncodeSparseResponse {\n  repeated Tensor results = 1;\n}\n\nmessage Embedding {",
    )(copy)
    run = buf("breaking", "--against", str(BASELINE), cwd=copy)
    assert run.returncode == 0, run.stdout + run.stderr
    assert buf("lint", cwd=copy).returncode == 0  # and the additions are lint-clean


def _copy_of_protos(tmp_path: Path) -> Path:
    copy = tmp_path / "protos"
    shutil.copytree(
        PROTOS, copy, ignore=shutil.ignore_patterns("*.py", "*.pyi", "__pycache__", "*.binpb")
    )
    return copy
