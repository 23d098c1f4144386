"""Cases per RPC and how each ended, for the fuzz report (see conftest.py)."""

from __future__ import annotations

import os
from collections import Counter, defaultdict

PROFILE_ENV = "HEADSERVE_FUZZ_PROFILE"


class Outcomes:
    """Cases per RPC and how each ended; per-request outcomes of the streams."""

    def __init__(self) -> None:
        self.calls: dict[str, Counter[str]] = defaultdict(Counter)
        self.requests: dict[str, Counter[str]] = defaultdict(Counter)

    def call(self, rpc: str, outcome: str) -> None:
        self.calls[rpc][outcome] += 1

    def request(self, rpc: str, outcome: str) -> None:
        self.requests[rpc][outcome] += 1

    def report(self) -> dict[str, object]:
        rpcs = {
            rpc: {
                "cases": sum(counts.values()),
                "outcomes": dict(sorted(counts.items())),
                **(
                    {"requests": dict(sorted(self.requests[rpc].items()))}
                    if rpc in self.requests
                    else {}
                ),
            }
            for rpc, counts in sorted(self.calls.items())
        }
        return {
            "profile": os.environ.get(PROFILE_ENV, "ci"),
            "total_cases": sum(sum(c.values()) for c in self.calls.values()),
            "rpcs": rpcs,
        }


OUTCOMES = Outcomes()
