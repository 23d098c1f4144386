"""The fuzz suite (tests/fuzz) at length: at least 10,000 generated cases over every RPC.

    .venv/bin/python bench/fuzz.py [--profile long] [--report bench/results/fuzz.json] [-- PYTEST_ARGS]

Runs `python -m pytest tests/fuzz -q -p no:cacheprovider` with the hypothesis profile
"long" (HEADSERVE_FUZZ_PROFILE; ~1,000 fresh random examples per property test) and
collects the suite's outcome counts (HEADSERVE_FUZZ_REPORT), then prints a Markdown
table: per RPC, the cases run and how they ended (OK or the status code), and for the
streams how each request inside them ended. Exits non-zero if pytest failed, or if the
long profile ran fewer than 10,000 cases. pytest-timeout is raised for the run: one
property test of the long profile takes a minute or more.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from report import markdown_head

ROOT = Path(__file__).resolve().parent.parent
MIN_CASES = 10_000


def table(report: dict) -> str:  # type: ignore[type-arg]
    lines = markdown_head("RPC | cases | outcomes | requests in the stream", "lr")
    for rpc, row in report["rpcs"].items():
        outcomes = ", ".join(f"{code} {n:,}" for code, n in row["outcomes"].items())
        requests = ", ".join(f"{code} {n:,}" for code, n in row.get("requests", {}).items())
        lines.append(f"| {rpc} | {row['cases']:,} | {outcomes} | {requests} |")
    lines.append(f"| **total** | **{report['total_cases']:,}** | | |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="long", choices=["ci", "long"])
    parser.add_argument("--report", type=Path, default=ROOT / "bench/results/fuzz.json")
    parser.add_argument("pytest_args", nargs="*", help="after --: more pytest arguments")
    args = parser.parse_args()
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.unlink(missing_ok=True)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HEADSERVE_FUZZ_PROFILE": args.profile,
        "HEADSERVE_FUZZ_REPORT": str(args.report.resolve()),
    }
    command = [
        sys.executable,
        "-m",
        "pytest",
        "tests/fuzz",
        "-q",
        "-p",
        "no:cacheprovider",
        "-o",
        "timeout=3600",
        *args.pytest_args,
    ]
    print(f"$ HEADSERVE_FUZZ_PROFILE={args.profile} {' '.join(command[2:])}", flush=True)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env)
    seconds = time.perf_counter() - started
    if not args.report.is_file():
        print(f"pytest exited {result.returncode} and wrote no report", file=sys.stderr)
        return result.returncode or 1
    report = json.loads(args.report.read_text())
    print()
    print(table(report))
    print()
    print(
        f"{report['total_cases']:,} cases, profile {args.profile}, in {seconds:.0f} s; "
        f"pytest exit status {result.returncode}; report: {args.report}"
    )
    if result.returncode != 0:
        return result.returncode
    if args.profile == "long" and report["total_cases"] < MIN_CASES:
        print(f"fewer than {MIN_CASES:,} cases: raise LONG_EXAMPLES", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
