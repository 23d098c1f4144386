"""Heads changed while the server runs (HeadAdmin): a head artifact uploaded or read from the
server's disk is loaded, replaced, made default and unloaded on the running backbone; admin
calls need an admin token; a load that fails changes nothing and names the field; calls keep
flowing through a replace, each answered by a head that existed when it was accepted; and
every response names the versions of the heads that answered it (gRPC trailing metadata,
the typed client's `head_versions`, the HTTP header)."""

from __future__ import annotations

import json
import shutil
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from serving import ServerThread

from headserve.client import (
    AlreadyExistsError,
    Client,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
    UnimplementedError,
)
from headserve.server.calls.security import Security
from headserve.server.config import packaged_sentiment_head
from headserve.server.core.limits import RequestLimits
from headserve.server.core.versions import folder_version
from headserve.server.loading import Settings

ADMIN = "admin-token-0123456789abcdef"
CALLER = "caller-token-0123456789abcdef"
TEXTS = ["I loved this film.", "A dull, tedious mess."]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    thread = ServerThread(
        Settings(
            device="cpu",
            security=Security(tokens=(CALLER,), admin_tokens=(ADMIN,)),
            request_limits=RequestLimits(max_head_upload_bytes=64 * 1024),
            http_port=0,
        )
    )
    yield thread
    thread.stop()


@pytest.fixture
def admin(server: ServerThread) -> Iterator[Client]:
    with Client(server.target, token=ADMIN, max_retries=0) as client:
        yield client


@pytest.fixture
def caller(server: ServerThread) -> Iterator[Client]:
    with Client(server.target, token=CALLER, max_retries=0) as client:
        yield client


def _retrained(folder: Path, scale: float) -> Path:
    """A copy of the packaged sentiment artifact with its weights scaled: another version."""
    shutil.copytree(packaged_sentiment_head(), folder)
    weights = load_file(folder / "head.safetensors")
    save_file({k: v * scale for k, v in weights.items()}, folder / "head.safetensors")
    return folder


def _served(client: Client) -> dict[str, tuple[str, bool]]:
    return {h.name: (h.head_version, h.is_default) for h in client.model_info().heads}


def test_admin_calls_need_an_admin_token(server: ServerThread, caller: Client) -> None:
    with pytest.raises(PermissionDeniedError, match="admin token"):
        caller.unload_head("sentiment")
    with Client(server.target, max_retries=0) as anonymous, pytest.raises(UnauthenticatedError):
        anonymous.unload_head("sentiment")
    with Client(server.target, token="not-a-token-of-this-server", max_retries=0) as wrong:
        with pytest.raises(UnauthenticatedError):
            wrong.unload_head("sentiment")
    with Client(server.target, token=ADMIN, max_retries=0) as admin:
        with pytest.raises(UnauthenticatedError):  # an admin token is not a caller's
            admin.encode(TEXTS)
    assert "sentiment" in _served(caller)


def test_without_admin_tokens_the_admin_rpcs_are_off() -> None:
    thread = ServerThread(Settings(device="cpu"))
    try:
        with Client(thread.target, max_retries=0) as client:
            with pytest.raises(UnimplementedError) as off:
                client.unload_head("sentiment")
            assert off.value.reason == "ADMIN_OFF" and "--admin-token-file" in str(off.value)
            assert "sentiment" in _served(client)
    finally:
        thread.stop()


def test_load_replace_default_and_unload(admin: Client, caller: Client, tmp_path: Path) -> None:
    packaged = packaged_sentiment_head()
    first = admin.load_head("mood", artifact=packaged)  # uploaded
    assert first.head.task == "classify" and first.applied == 1
    assert first.head.head_version == folder_version(packaged) and not first.head.is_default
    got = caller.classify(TEXTS, heads=["mood"])
    want = caller.classify(TEXTS, heads=["sentiment"])
    assert got.head_versions == {"mood": first.head.head_version}
    np.testing.assert_allclose(
        [c.heads[0].labels[0].probability for c in got],
        [c.heads[0].labels[0].probability for c in want],
        atol=1e-6,
    )
    with pytest.raises(AlreadyExistsError):
        admin.load_head("mood", artifact=packaged)

    retrained = _retrained(tmp_path / "retrained", 3.0)
    second = admin.load_head("mood", source=str(retrained), replace=True)  # the server's disk
    assert second.replaced_version == first.head.head_version
    assert second.head.head_version == folder_version(retrained) != first.head.head_version
    after = caller.classify(TEXTS, heads=["mood"])
    assert after.head_versions == {"mood": second.head.head_version}
    assert [c.heads[0].labels[0].probability for c in after] != [
        c.heads[0].labels[0].probability for c in got
    ]

    admin.set_default_head("mood")
    served = _served(caller)
    assert served["mood"][1] and not served["sentiment"][1]
    assert caller.classify(TEXTS).head_versions == {"mood": second.head.head_version}

    gone = admin.unload_head("mood")
    assert gone.head.name == "mood"
    with pytest.raises(NotFoundError):
        caller.classify(TEXTS, heads=["mood"])
    served = _served(caller)
    assert "mood" not in served and served["sentiment"][1]  # the default again


@pytest.mark.parametrize(
    ("kind", "field"),
    [
        ("unknown plugin", "plugin"),
        ("missing source", "source"),
        ("unknown option", "options"),
        ("path outside", "files[0].path"),
        ("pickled weights", "files[2].path"),
        ("too large", "files"),
        ("no head.json", "files"),
        ("lying head.json", "files"),
        ("wrong shape", "files"),
        ("bad name", "name"),
    ],
)
def test_a_failing_load_changes_nothing(
    admin: Client, caller: Client, tmp_path: Path, kind: str, field: str
) -> None:
    before = _served(caller)
    artifact = _retrained(tmp_path / "artifact", 1.0)
    request: dict[str, object] = {"artifact": artifact}
    if kind == "unknown plugin":
        request = {"plugin": "clasify", "source": str(artifact)}
    elif kind == "missing source":
        request = {"plugin": "classify", "source": str(tmp_path / "nowhere")}
    elif kind == "unknown option":
        request = {"artifact": artifact, "options": {"actvation": "sigmoid"}}
    elif kind == "lying head.json":
        meta = json.loads((artifact / "head.json").read_text())
        meta["labels"] = ["a", "b", "c"]  # three labels over weights for two
        (artifact / "head.json").write_text(json.dumps(meta))
    elif kind == "wrong shape":
        weights = load_file(artifact / "head.safetensors")
        cut = {k: v[..., :-1].contiguous() for k, v in weights.items()}
        save_file(cut, artifact / "head.safetensors")
    elif kind == "too large":
        (artifact / "padding.txt").write_bytes(b"x" * 70_000)
    elif kind == "no head.json":
        (artifact / "head.json").rename(artifact / "meta.json")
        request = {"plugin": "trained_classify", "artifact": None}
    from headserve.client import _calls  # the raw request, for what the client would refuse

    if kind in ("path outside", "pickled weights", "no head.json"):
        files = _calls._convert.artifact_files(packaged_sentiment_head())
        if kind == "path outside":
            files[0].path = "../escape.json"
        elif kind == "pickled weights":
            files.append(type(files[0])(path="pytorch_model.bin", content=b"\x80\x04"))
        else:
            files = [f for f in files if f.path != "head.json"]
        call = _calls.load_head(
            name="broken", plugin=None, source=None, artifact=None, options=None, replace=False
        )
        call.request.files.extend(files)  # type: ignore[attr-defined]
        with pytest.raises(InvalidArgumentError) as refused:
            admin._unary(call, None)
    else:
        name = "Bad name!" if kind == "bad name" else "broken"
        with pytest.raises(InvalidArgumentError) as refused:
            admin.load_head(name, **request)  # type: ignore[arg-type]
    assert refused.value.field == field, refused.value
    assert _served(caller) == before


def test_calls_flow_through_replaces(admin: Client, caller: Client, tmp_path: Path) -> None:
    """Callers classify on one head while it is replaced again and again: no call fails, and
    each is answered by a version that was served while it ran."""
    versions = [admin.load_head("live", artifact=packaged_sentiment_head()).head.head_version]
    stop = threading.Event()
    seen: list[str] = []
    failures: list[BaseException] = []

    def call() -> None:
        while not stop.is_set():
            try:
                seen.append(caller.classify(TEXTS, heads=["live"]).head_versions["live"])
            except BaseException as exc:  # noqa: BLE001 (any failure fails the test)
                failures.append(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(4):
            folder = _retrained(tmp_path / f"v{i}", 1.0 + i)
            versions.append(
                admin.load_head("live", artifact=folder, replace=True).head.head_version
            )
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        admin.unload_head("live")
    assert not failures, failures[:3]
    assert seen and set(seen) <= set(versions)


def test_responses_name_the_versions_that_answered(server: ServerThread, caller: Client) -> None:
    version = {h.name: h.head_version for h in caller.model_info().heads}
    assert version["encode"].startswith("sha256:") and len(version["encode"]) == 23
    assert caller.encode(TEXTS).head_versions == {"encode": version["encode"]}
    assert caller.rerank("film", TEXTS, head="sentiment").head_versions == {
        "sentiment": version["sentiment"]
    }
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.server.http.port}/v1/embeddings",  # type: ignore[union-attr]
        data=json.dumps({"input": TEXTS}).encode(),
        headers={"content-type": "application/json", "authorization": f"Bearer {CALLER}"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.headers["x-headserve-head-versions"] == f"encode={version['encode']}"


NAMES = st.one_of(st.sampled_from(["sentiment", "encode", "x", ""]), st.text(max_size=70))
PATHS = st.one_of(
    st.sampled_from(["head.json", "head.safetensors", "../up", "/abs", "a\\b", "w.pt", ""]),
    st.text(max_size=40),
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=NAMES,
    plugin=st.one_of(
        st.sampled_from(["", "classify", "trained_classify", "encode"]), st.text(max_size=20)
    ),
    options=st.dictionaries(st.text(max_size=12), st.text(max_size=12), max_size=3),
    files=st.lists(st.tuples(PATHS, st.binary(max_size=64)), max_size=4),
    replace=st.booleans(),
)
def test_fuzzed_loads_are_refused_clearly_and_change_nothing(
    admin: Client,
    caller: Client,
    name: str,
    plugin: str,
    options: dict[str, str],
    files: list[tuple[str, bytes]],
    replace: bool,
) -> None:
    """Any LoadHead request: answered OK or with a documented refusal that says why, never
    INTERNAL; what it did not load leaves the served heads as they were."""
    from headserve.client import HeadserveError, _calls
    from headserve.v1 import admin_pb2

    before = _served(caller)
    call = _calls.load_head(
        name=name,
        plugin=plugin or None,
        source=None,
        artifact=None,
        options=options,
        replace=replace,
    )
    call.request.files.extend(admin_pb2.HeadFile(path=p, content=c) for p, c in files)  # type: ignore[attr-defined]
    try:
        admin._unary(call, None)
    except HeadserveError as exc:
        assert exc.code.name in {"INVALID_ARGUMENT", "ALREADY_EXISTS", "NOT_FOUND"}, exc
        assert str(exc)
        assert _served(caller) == before
    else:  # a plugin that needs no files (encode on the backbone): loaded, then unloaded
        admin.unload_head(name)


def test_a_heads_error_carries_its_version() -> None:
    from google.rpc import error_details_pb2

    from headserve.server.call_info import CURRENT, CallInfo, answered_by
    from headserve.server.calls.status import to_status
    from headserve.server.errors import HeadFailed

    token = CURRENT.set(CallInfo("id-1", "headserve.v1.Classifier/Classify"))
    try:
        answered_by("mood", "sha256:0123456789abcdef")
        status = to_status(HeadFailed("head 'mood' failed to finish", head="mood"))
    finally:
        CURRENT.reset(token)
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    assert info.metadata["head"] == "mood"
    assert info.metadata["head_version"] == "sha256:0123456789abcdef"


def test_the_cli_loads_lists_makes_default_and_unloads(
    server: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from headserve.server import cli

    admin_file, caller_file = tmp_path / "admin.txt", tmp_path / "caller.txt"
    admin_file.write_text(f"# admins\n{ADMIN}\n")
    caller_file.write_text(f"{CALLER}\n")
    as_admin = ["--server", server.target, "--admin-token-file", str(admin_file)]
    version = folder_version(packaged_sentiment_head())
    cli.main(["head", "load", f"cli={packaged_sentiment_head()}", *as_admin])  # sent
    assert capsys.readouterr().out.strip() == (
        f"loaded cli (classify, {version}) on {server.target}"
    )
    cli.main(["head", "default", "cli", *as_admin])
    assert "made default cli" in capsys.readouterr().out
    cli.main(["heads", "--server", server.target, "--token-file", str(caller_file), "--json"])
    listed = {h["name"]: h for h in json.loads(capsys.readouterr().out)}
    assert listed["cli"]["version"] == version and listed["cli"]["default"] == "yes"
    with pytest.raises(SystemExit, match="PERMISSION_DENIED"):
        cli.main(
            [
                "head",
                "unload",
                "cli",
                "--server",
                server.target,
                "--admin-token-file",
                str(caller_file),
            ]
        )
    cli.main(["head", "unload", "cli", *as_admin])
    assert capsys.readouterr().out.startswith("unloaded cli (classify")
    with pytest.raises(SystemExit, match="NOT_FOUND"):
        cli.main(["head", "unload", "cli", *as_admin])
