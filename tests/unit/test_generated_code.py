"""The committed headserve.v1 code is what protos/generate.py makes from the .proto files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_check_detects_a_stale_file(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(ROOT / "protos"))
    try:
        import generate
    finally:
        sys.path.pop(0)
    fake = tmp_path / "headserve" / "v1"
    fake.mkdir(parents=True)
    for proto in (ROOT / "protos" / "headserve" / "v1").glob("*"):
        if proto.is_file():
            fake.joinpath(proto.name).write_bytes(proto.read_bytes())
    stale = fake / "encoder_pb2.py"
    stale.write_text(stale.read_text() + "\n# edited by hand\n")
    monkeypatch.setattr(generate, "PROTOS", tmp_path)
    monkeypatch.setattr(generate, "PACKAGE", fake)
    assert generate.check() == ["encoder_pb2.py"]
