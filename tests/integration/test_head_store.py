"""The head store (`--head-store`): heads loaded, unloaded and made default at run time come
back after a restart with the same versions; a store that cannot be written (full, read-only)
refuses the change and nothing changes; a server killed in the middle of recording a change
leaves the store as it was before it or after it."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from serving import ServerThread

from headserve.client import Client, FailedPreconditionError
from headserve.server.calls.security import Security
from headserve.server.config import packaged_sentiment_head
from headserve.server.core import head_store
from headserve.server.core.versions import folder_version
from headserve.server.loading import Settings

ADMIN = "admin-token-0123456789abcdef"


def _settings(store: Path) -> Settings:
    return Settings(device="cpu", security=Security(admin_tokens=(ADMIN,)), head_store=store)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


def _heads(client: Client) -> dict[str, tuple[str, str, bool]]:
    return {h.name: (h.task, h.head_version, h.is_default) for h in client.model_info().heads}


@pytest.fixture
def server(store: Path) -> Iterator[ServerThread]:
    thread = ServerThread(_settings(store))
    yield thread
    thread.stop()


def test_changes_come_back_after_a_restart(store: Path) -> None:
    first = ServerThread(_settings(store))
    try:
        with Client(first.target, token=ADMIN, max_retries=0) as admin:
            loaded = admin.load_head("mood", artifact=packaged_sentiment_head())
            admin.set_default_head("mood")
            admin.unload_head("qa")  # a configured (default) head
            before = _heads(admin)
    finally:
        first.stop()
    assert before["mood"] == ("classify", folder_version(packaged_sentiment_head()), True)
    assert "qa" not in before and not before["sentiment"][2]
    kept = json.loads((store / "heads.json").read_text())
    assert [h["name"] for h in kept["heads"]] == ["mood"] and kept["unloaded"] == ["qa"]
    assert kept["heads"][0]["source"].startswith("artifacts/")  # in the store, not a temp dir

    again = ServerThread(_settings(store))
    try:
        with Client(again.target, token=ADMIN, max_retries=0) as client:
            assert _heads(client) == before
            assert client.classify(["great"]).head_versions == {"mood": loaded.head.head_version}
    finally:
        again.stop()


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EROFS])
def test_a_store_that_cannot_be_written_changes_nothing(
    server: ServerThread,
    store: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    error: int,
) -> None:
    """The disk refuses the state's new file (full, read-only): the load is refused with
    FAILED_PRECONDITION saying so, and the served heads and the store are as they were."""
    with Client(server.target, token=ADMIN, max_retries=0) as admin:
        admin.load_head("first", artifact=packaged_sentiment_head())
        before, kept = _heads(admin), (store / "heads.json").read_bytes()

        def refused(*args: object, **kwargs: object) -> object:
            raise OSError(error, os.strerror(error))

        monkeypatch.setattr(head_store.tempfile, "mkstemp", refused)
        with pytest.raises(FailedPreconditionError) as failed:
            admin.load_head("second", source=str(packaged_sentiment_head()))
        assert failed.value.reason == "HEAD_STORE_FAILED"
        assert os.strerror(error) in str(failed.value) and "nothing was changed" in str(
            failed.value
        )
        with pytest.raises(FailedPreconditionError):
            admin.unload_head("first")
        assert _heads(admin) == before
        assert (store / "heads.json").read_bytes() == kept
        # an uploaded artifact the store's disk refuses: the same refusal, nothing left behind
        other = tmp_path / "other"
        shutil.copytree(packaged_sentiment_head(), other)
        (other / "README.md").write_text("another upload")
        monkeypatch.setattr(Path, "write_bytes", refused)
        with pytest.raises(FailedPreconditionError) as failed:
            admin.load_head("third", artifact=other)
        assert failed.value.reason == "HEAD_STORE_FAILED"
        assert _heads(admin) == before
        assert not [p for p in (store / "artifacts").iterdir() if p.name.startswith(".")]


KILLED = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from headserve.server.core import head_store
    from headserve.server.core.head_store import HeadStore, StoredHead
    store = HeadStore(Path(sys.argv[1]))
    where = sys.argv[2]
    real_replace = os.replace
    def dying_replace(src, dst):
        if where == "after":
            real_replace(src, dst)
        os._exit(9)  # killed: before the rename, or right after it
    head_store.os.replace = dying_replace
    head = StoredHead("new", "trained_classify", "/somewhere", {}, "sha256:0000000000000000")
    store.write(store.state.loaded(head, None))
    """
)


@pytest.mark.parametrize("where", ["before", "after"])
def test_a_kill_while_recording_leaves_the_state_before_or_after(
    tmp_path: Path, where: str
) -> None:
    root = tmp_path / "store"
    first = head_store.StoredHead("old", "trained_classify", "/x", {}, "sha256:1111111111111111")
    head_store.HeadStore(root).write(head_store.StoreState((first,)))
    child = subprocess.run(
        [sys.executable, "-c", KILLED, str(root), where], capture_output=True, timeout=120
    )
    assert child.returncode == 9, child.stderr.decode()
    names = [h.name for h in head_store.HeadStore(root).state.heads]
    assert names == (["old"] if where == "before" else ["old", "new"])


def test_a_shadow_comes_back_beside_its_live_head(store: Path, tmp_path: Path) -> None:
    candidate = tmp_path / "candidate"
    shutil.copytree(packaged_sentiment_head(), candidate)
    (candidate / "notes.txt").write_text("a candidate")  # another version
    first = ServerThread(_settings(store))
    try:
        with Client(first.target, token=ADMIN, max_retries=0) as admin:
            admin.load_head("sentiment-next", artifact=candidate, shadow_of="sentiment",
                            shadow_fraction=0.25)  # fmt: skip
    finally:
        first.stop()
    again = ServerThread(_settings(store))
    try:
        with Client(again.target, token=ADMIN, max_retries=0) as admin:
            shadow = next(h for h in admin.model_info().heads if h.name == "sentiment-next")
            assert (shadow.shadow_of, shadow.shadow.fraction) == ("sentiment", 0.25)
            assert shadow.head_version == folder_version(candidate)
            promoted = admin.promote_head("sentiment-next")
            assert promoted.head.name == "sentiment"
    finally:
        again.stop()
    third = ServerThread(_settings(store))  # the promoted head is the live one now
    try:
        with Client(third.target, token=ADMIN, max_retries=0) as admin:
            heads = _heads(admin)
            assert heads["sentiment"][1] == folder_version(candidate)
            assert "sentiment-next" not in heads
    finally:
        third.stop()
