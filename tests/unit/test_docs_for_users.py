"""README.md, BENCHMARKS.md and docs/ are written for users: they never cite the project's own
issue numbers (an "issue 18 target: missed" means nothing to a reader)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PAGES = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
ISSUE = re.compile(r"\bissues?\s*#?\d+", re.IGNORECASE)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_page_cites_an_issue_number(page: Path) -> None:
    cited = [
        f"{page.name}:{number}: {line.strip()}"
        for number, line in enumerate(page.read_text().splitlines(), 1)
        if ISSUE.search(line)
    ]
    assert not cited, "\n".join(cited)


def test_the_check_finds_a_citation() -> None:
    assert ISSUE.search("as issue 18 asked") and ISSUE.search("Issues #16/17")
    assert not ISSUE.search("a tissue 5 mm thick")
