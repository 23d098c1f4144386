"""Generate the Python bindings of the headserve contract from the .proto files.

    python protos/generate.py          # write them beside the .proto files
    python protos/generate.py --check  # exit 1 if the committed ones are stale

Output: `*_pb2.py` (messages), `*_pb2_grpc.py` (stubs and servicers) and `*.pyi`
(typed stubs from mypy-protobuf) in protos/headserve/v1, the `headserve.v1` package.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

PROTOS = Path(__file__).resolve().parent
PACKAGE = PROTOS / "headserve" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def _include_dirs() -> list[str]:
    """Our protos, protobuf's well-known types, and google/rpc from googleapis-common-protos."""
    well_known = resources.files("grpc_tools") / "_proto"
    import google.rpc.status_pb2 as status_pb2  # the package that ships status.proto

    googleapis_root = Path(status_pb2.__file__).resolve().parents[2]
    return [
        str(PROTOS),
        str(well_known),
        str(googleapis_root),
    ]  # third_party/ is for other languages


def _plugin(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: install the dev extra (mypy-protobuf)")
    return found


def generate(out: Path) -> list[Path]:
    """Run protoc on every .proto of the package, writing under `out`; return the files made."""
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTOS)) for p in PACKAGE.glob("*.proto"))
    args = [
        "protoc",
        *(f"-I{d}" for d in _include_dirs()),
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((out / "headserve" / "v1").glob("*_pb2*"))


def _committed() -> list[Path]:
    return sorted(p for p in PACKAGE.iterdir() if p.name.endswith(GENERATED_SUFFIXES))


def check() -> list[str]:
    """Names of generated files that differ from what protoc makes now (empty: up to date)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p for p in generate(Path(tmp))}
        committed = {p.name: p for p in _committed()}
        stale = sorted(set(fresh) ^ set(committed))
        stale += sorted(
            name
            for name in set(fresh) & set(committed)
            if not filecmp.cmp(fresh[name], committed[name], shallow=False)
        )
    return stale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check, write nothing")
    if parser.parse_args().check:
        stale = check()
        if stale:
            raise SystemExit("stale generated code, run `make protos`: " + ", ".join(stale))
        print("generated code is up to date")
        return
    for old in _committed():
        old.unlink()
    made = generate(PROTOS)
    print(f"generated {len(made)} files in {PACKAGE}")


if __name__ == "__main__":
    main()
