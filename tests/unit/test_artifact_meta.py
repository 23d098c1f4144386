"""A head artifact's metadata is read only from a small regular file: a link to a device or
a file far larger than any head.json is refused with a clear error, not read whole."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from headserve.plugins.artifact import MAX_META_BYTES, META, ArtifactError, read_meta


def test_a_link_to_a_device_is_refused(tmp_path: Path) -> None:
    os.symlink("/dev/zero", tmp_path / META)
    with pytest.raises(ArtifactError, match="not a regular file"):
        read_meta(tmp_path)


def test_a_huge_head_json_is_refused_unread(tmp_path: Path) -> None:
    (tmp_path / META).write_bytes(b" " * (MAX_META_BYTES + 1))
    with pytest.raises(ArtifactError, match="larger than"):
        read_meta(tmp_path)


def test_a_head_json_that_is_not_text_is_refused(tmp_path: Path) -> None:
    (tmp_path / META).write_bytes(b'{"format": "\xff"}')
    with pytest.raises(ArtifactError, match="not UTF-8"):
        read_meta(tmp_path)
