"""`headserve pull REPO_ID DIR`: a model folder from the Hugging Face Hub, ready to serve.

huggingface_hub's own snapshot download, limited to what the server reads: configuration and
tokenizer files and safetensors weights. Pickle weights (`*.bin`, `*.pt`, `*.pth`) are never
fetched, so a repository that has no safetensors is refused before anything is written.
`HF_ENDPOINT` (a mirror) and `HF_TOKEN` (a gated or private repository) work as they do for
huggingface_hub everywhere. The server itself never downloads (it runs with HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

# What the server reads of a checkpoint folder: its configuration (config.json, the
# sentence-transformers files, 1_Pooling/...), tokenizer files and safetensors weights.
WANTED = (
    "*.json",
    "*.safetensors",
    "*.txt",  # vocab.txt, merges.txt
    "*.model",  # sentencepiece
    "tokenizer*",
)


class PullError(Exception):
    pass


@dataclass(frozen=True)
class Pulled:
    folder: Path
    revision: str  # the commit the revision named
    files: tuple[str, ...]
    size: int  # bytes

    def summary(self) -> str:
        return (
            f"pulled {len(self.files)} files ({self.size / 1e6:.1f} MB) at commit "
            f"{self.revision[:12]} into {self.folder}; serve it with: headserve serve "
            f"{self.folder}"
        )


def _wanted(names: list[str]) -> list[str]:
    """The files the server reads: WANTED ones at the top, and in sentence-transformers'
    module folders (1_Pooling/, 2_Dense/...); never other folders' (onnx/, openvino/...)."""
    wanted = []
    for name in names:
        folder, _, base = name.rpartition("/")
        if folder and not re.fullmatch(r"\d+_\w+", folder):
            continue
        if any(fnmatch.fnmatch(base, pattern) for pattern in WANTED):
            wanted.append(name)
    return wanted


def pull(repo_id: str, folder: Path, revision: str | None = None) -> Pulled:
    """Download what the server reads of `repo_id` at `revision` into `folder`."""
    os.environ["HF_HUB_OFFLINE"] = "0"  # the one command that may go online
    import httpx2
    import huggingface_hub
    from huggingface_hub.errors import (
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    logging.getLogger("httpx2").setLevel(logging.WARNING)  # a line per request, else
    api = huggingface_hub.HfApi()
    try:
        info = api.model_info(repo_id, revision=revision, files_metadata=False)
    except RepositoryNotFoundError as exc:
        raise PullError(
            f"{repo_id}: no such model repository (or it is private: set HF_TOKEN)"
        ) from exc
    except RevisionNotFoundError as exc:
        raise PullError(
            f"{repo_id}: no revision {revision or 'main'} (a branch, tag or commit)"
        ) from exc
    except HfHubHTTPError as exc:
        raise PullError(f"{repo_id}: {_first_line(exc)}") from exc
    except httpx2.HTTPError as exc:  # unreachable, timed out
        raise PullError(f"{repo_id}: cannot reach {api.endpoint}: {exc}") from exc
    names = [s.rfilename for s in info.siblings or ()]
    wanted = _wanted(names)
    if not any(n.endswith(".safetensors") and "/" not in n for n in wanted):
        raise PullError(
            f"{repo_id} has no safetensors weights (files: {', '.join(sorted(names)) or 'none'}); "
            "headserve reads safetensors only"
        )
    if "config.json" not in wanted:
        raise PullError(f"{repo_id} has no config.json: not a transformers checkpoint")
    assert info.sha is not None
    try:
        huggingface_hub.snapshot_download(
            repo_id,
            revision=info.sha,
            local_dir=folder,
            allow_patterns=[glob.escape(n) for n in wanted],  # names, not patterns
        )
    except HfHubHTTPError as exc:
        raise PullError(f"{repo_id}: {_first_line(exc)}") from exc
    except httpx2.HTTPError as exc:
        raise PullError(f"{repo_id}: cannot reach {api.endpoint}: {exc}") from exc
    size = sum((folder / n).stat().st_size for n in wanted)
    return Pulled(folder, info.sha, tuple(sorted(wanted)), size)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0]
