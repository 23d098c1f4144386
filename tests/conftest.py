from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from checkpoints import ARCHS, FAMILY_CONFIGS, Family, make_family  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


@pytest.fixture(scope="session")
def families(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Family]:
    return {arch: make_family(tmp_path_factory.mktemp(arch), arch) for arch in ARCHS}


@pytest.fixture(scope="session")
def bert(families: dict[str, Family]) -> Family:
    return families["bert"]


@pytest.fixture(scope="session")
def matrix_families(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Family]:
    """Every text family of the verified table, its weights drawn wide (initializer_range
    0.2) so that a wrong mask or position shows as a large error (the conformance matrix)."""
    return {
        arch: make_family(tmp_path_factory.mktemp(f"matrix-{arch}"), arch, initializer_range=0.2)
        for arch in FAMILY_CONFIGS
    }
