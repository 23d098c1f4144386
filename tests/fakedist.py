"""A fake installed distribution with head (or backbone kind) entry points, for discovery tests."""

from __future__ import annotations

import importlib.metadata as md

from headserve.plugins.contract import ENTRY_POINT_GROUP


class FakeDist(md.Distribution):
    def __init__(
        self,
        name: str,
        entry_points: dict[str, str],
        version: str = "1.2.3",
        group: str = ENTRY_POINT_GROUP,
    ) -> None:
        self._name = name
        self._eps = entry_points
        self._version = version
        self._group = group

    def read_text(self, filename: str) -> str | None:
        if filename == "METADATA":
            return f"Metadata-Version: 2.1\nName: {self._name}\nVersion: {self._version}\n"
        if filename == "entry_points.txt":
            lines = [f"[{self._group}]"] + [f"{k} = {v}" for k, v in self._eps.items()]
            return "\n".join(lines) + "\n"
        return None

    def locate_file(self, path):  # type: ignore[no-untyped-def]
        return path
