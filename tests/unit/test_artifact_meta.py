"""A head artifact's metadata, and a model folder's (modules.json, a Pooling module's
config, config_sentence_transformers.json), is read only from a small regular file: a link
to a device or a file far larger than any such file is refused with a clear error, not read
whole; `--head x=FOLDER` names the reason before any head loads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from headserve.plugins.artifact import META, ArtifactError, read_meta
from headserve.plugins.metadata import MAX_BYTES as MAX_META_BYTES
from headserve.plugins.metadata import MetadataError
from headserve.plugins.st_folder import SentenceTransformersConfig
from headserve.server.config import ConfigError, artifact_plugin


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


def test_choosing_the_plugin_of_an_artifact_reads_its_head_json_the_same_way(
    tmp_path: Path,
) -> None:
    os.symlink("/dev/zero", tmp_path / META)
    with pytest.raises(ConfigError, match="not a regular file"):
        artifact_plugin(tmp_path)


@pytest.mark.parametrize("name", ["modules.json", "config_sentence_transformers.json"])
def test_a_sentence_transformers_folders_metadata_is_read_the_same_way(
    tmp_path: Path, name: str
) -> None:
    if name != "modules.json":
        (tmp_path / "modules.json").write_text("[]")
    os.symlink("/dev/zero", tmp_path / name)
    with pytest.raises(MetadataError, match="not a regular file"):
        SentenceTransformersConfig.read(tmp_path)
    os.unlink(tmp_path / name)
    (tmp_path / name).write_bytes(b"[" + b" " * MAX_META_BYTES + b"]")
    with pytest.raises(MetadataError, match="larger than"):
        SentenceTransformersConfig.read(tmp_path)
