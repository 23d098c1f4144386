"""docs/operations.md's table of limits says what `headserve serve --help` says: every limit
the server has is in it, under its flag, with the default the server really uses."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

from headserve.server.calls.connections import Connections
from headserve.server.core.limits import RequestLimits

DOCS = Path(__file__).parents[2] / "docs" / "operations.md"
# the scheduler's limits on what callers may queue (the rest of Limits shapes throughput)
SCHEDULER_LIMITS = ("max_queue_items", "stream_in_flight_items")


def _table() -> dict[str, str]:
    """Each flag of the Limits table, with the default its row gives it."""
    text = DOCS.read_text()
    section = text.split("## Limits", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        if not line.startswith("| `--"):
            continue
        option, default = (cell.strip() for cell in line.strip("|").split(" | ")[:2])
        flags = re.findall(r"`(--[a-z0-9-]+)`", option)
        defaults = default.split(", ") if len(flags) > 1 else [default]
        assert len(defaults) == len(flags), line
        rows.update(zip(flags, defaults, strict=True))
    return rows


def _help() -> dict[str, str]:
    """Each option of `headserve serve --help`, with its help text (whitespace folded)."""
    out = subprocess.run(
        [str(Path(sys.executable).parent / "headserve"), "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    options = out.split("\noptions:", 1)[1]
    entries = re.split(r"\n  (?=--)", options)
    helps: dict[str, str] = {}
    for entry in entries:
        entry = " ".join(entry.split())
        if entry.startswith("--"):
            helps[entry.split()[0].rstrip(",")] = entry
    return helps


def _number(text: str) -> float:
    """A default as the docs write it (`16 MiB`, `4,096`, `300 s`, `0 (none)`), as a number."""
    text = text.replace(",", "").replace("(none)", "").strip()
    scale = {"KiB": 1024, "MiB": 1024**2, "s": 1}
    value, _, unit = text.partition(" ")
    return float(value) * scale.get(unit, 1)


def test_every_limit_is_in_the_table_with_the_default_help_gives() -> None:
    table = _table()
    helps = _help()
    names = [f.name for f in dataclasses.fields(RequestLimits)]
    names += [f.name for f in dataclasses.fields(Connections)]
    names += SCHEDULER_LIMITS
    flags = ["--" + name.replace("_", "-") for name in names]
    missing = [flag for flag in flags if flag not in table]
    assert not missing, f"limits with no row in docs/operations.md: {missing}"
    for flag, documented in table.items():
        assert flag in helps, f"{flag} is in the table, not in `headserve serve --help`"
        given = re.search(r"\(default: ([^)]+)\)", helps[flag])
        assert given is not None, f"`headserve serve --help` gives {flag} no default"
        assert _number(documented) == float(given.group(1)), (
            f"{flag}: the table says {documented}, --help {given.group(1)}"
        )
