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
        ("truncated weights", "files"),
        ("tampered weights", "files"),
        ("lying task", "files"),
        ("another backbone", "files"),
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
    elif kind == "truncated weights":
        weights = artifact / "head.safetensors"
        weights.write_bytes(weights.read_bytes()[:-100])
    elif kind == "tampered weights":  # a header that promises more bytes than there are
        weights = artifact / "head.safetensors"
        data = bytearray(weights.read_bytes())
        data[8:16] = b'{"x":{"d'
        weights.write_bytes(bytes(data))
    elif kind in ("lying task", "another backbone"):
        meta = json.loads((artifact / "head.json").read_text())
        if kind == "lying task":
            meta["task"] = "qa"  # a classifier's weights, said to answer questions
        else:
            meta["fingerprint"] = "sha256:" + "0" * 64
        (artifact / "head.json").write_text(json.dumps(meta))
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
            name="broken",
            plugin=None,
            source=None,
            artifact=None,
            options=None,
            replace=False,
            shadow_of=None,
            shadow_fraction=None,
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
    both = caller.run_heads(TEXTS, heads=["encode", "sentiment"])  # several heads, one call
    assert both.head_versions == {h: version[h] for h in ("encode", "sentiment")}
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
        shadow_of=None,
        shadow_fraction=None,
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


MORE = [
    "What a wonderful, moving story.",
    "I want my money back.",
    "It was fine, I suppose.",
    "The best film of the year!",
    "Boring from start to end.",
    "Not bad at all.",
]


def _eventually(check, seconds: float = 10.0):  # type: ignore[no-untyped-def]
    import time

    end = time.monotonic() + seconds
    while True:
        value = check()
        if value or time.monotonic() > end:
            return value
        time.sleep(0.02)


def _shadow_info(client: Client, name: str):  # type: ignore[no-untyped-def]
    return next(h for h in client.model_info().heads if h.name == name)


def _metric(server: ServerThread, name: str, **labels: str) -> float | None:
    assert server.core is not None
    registry = server.core.scheduler.metrics.instruments.registry
    return registry.get_sample_value(name, labels)


def test_a_shadow_classifier_is_measured_never_answers_and_is_promoted(
    server: ServerThread, admin: Client, caller: Client, tmp_path: Path
) -> None:
    packaged = packaged_sentiment_head()
    live = admin.load_head("judge", artifact=packaged).head
    candidate = _retrained(tmp_path / "candidate", 3.0)
    shadow = admin.load_head("judge-next", artifact=candidate, shadow_of="judge").head
    assert (shadow.shadow_of, shadow.usable, shadow.shadow.fraction) == ("judge", False, 1.0)
    reference = admin.load_head("candidate", artifact=candidate).head  # the same weights
    try:
        texts = [*TEXTS, *MORE]
        want = caller.classify(texts, heads=["candidate"])
        got = caller.classify(texts, heads=["judge"])  # the live head's answers, unchanged
        assert got.head_versions == {"judge": live.head_version}
        ours = [dict((s.label, s.probability) for s in c.heads[0].labels) for c in got]
        theirs = [dict((s.label, s.probability) for s in c.heads[0].labels) for c in want]
        top1 = np.mean([max(o, key=o.get) == max(t, key=t.get) for o, t in zip(ours, theirs)])
        mad = np.mean([np.mean([abs(o[k] - t[k]) for k in o]) for o, t in zip(ours, theirs)])
        assert mad > 1e-3  # the candidate differs
        info = _eventually(
            lambda: (i := _shadow_info(caller, "judge-next")).shadow.items == len(texts) and i
        )
        assert info, _shadow_info(caller, "judge-next")
        assert info.shadow.calls == 1 and info.shadow.failures == 0
        assert np.isnan(info.shadow.mean_cosine) and np.isnan(info.shadow.exact_match)
        assert info.shadow.top1_agreement == pytest.approx(top1, abs=1e-9)
        assert info.shadow.mean_abs_probability_difference == pytest.approx(mad, abs=1e-6)
        labels = {"live": "judge", "shadow": "judge-next"}
        assert _metric(server, "headserve_shadow_items_total", **labels) == len(texts)
        summed = _metric(
            server,
            "headserve_shadow_agreement_sum_total",
            measure="mean_abs_probability_difference",
            **labels,
        )
        assert summed == pytest.approx(mad * len(texts), abs=1e-5)
        with pytest.raises(NotFoundError):  # a shadow answers no call of its own
            caller.classify(TEXTS, heads=["judge-next"])

        promoted = admin.promote_head("judge-next")
        assert (promoted.head.name, promoted.head.head_version) == ("judge", reference.head_version)
        assert promoted.replaced_version == live.head_version and not promoted.head.shadow_of
        now = caller.classify(texts, heads=["judge"])
        assert now.head_versions == {"judge": reference.head_version}
        assert [c.heads[0].head for c in now] == ["judge"] * len(texts)
        np.testing.assert_allclose(
            [c.heads[0].labels[0].probability for c in now],
            [c.heads[0].labels[0].probability for c in want],
            atol=1e-6,
        )
        assert "judge-next" not in {h.name for h in caller.model_info().heads}
    finally:
        admin.unload_head("judge")
        admin.unload_head("candidate")


def test_a_failing_shadow_never_fails_the_live_call(
    server: ServerThread, admin: Client, caller: Client
) -> None:
    admin.load_head("cosine-next", plugin="encode", options={"pooling": "cls"}, shadow_of="encode")
    try:
        admin.load_head("cls", plugin="encode", options={"pooling": "cls"})  # the reference
        cls = caller.encode(MORE, head="cls")
        vectors = caller.encode(MORE)  # the only call the shadow runs beside
        cosine = np.mean(
            [
                float(a.vector @ b.vector / np.linalg.norm(a.vector) / np.linalg.norm(b.vector))
                for a, b in zip(vectors, cls)
            ]
        )
        info = _eventually(lambda: (i := _shadow_info(caller, "cosine-next")).shadow.items and i)
        assert info.shadow.mean_cosine == pytest.approx(cosine, abs=1e-5)

        assert server.core is not None
        head = server.core.registry.shadows["cosine-next"].served.head

        def broken(features, rows):  # type: ignore[no-untyped-def]
            raise RuntimeError("the shadow's bug")

        head.forward = broken  # type: ignore[method-assign]
        again = caller.encode(MORE)  # answered, by the live head, whatever the shadow does
        np.testing.assert_allclose(
            np.stack([e.vector for e in again]), np.stack([e.vector for e in vectors]), atol=1e-6
        )
        failed = _eventually(
            lambda: _shadow_info(caller, "cosine-next").shadow.failures == len(MORE)
        )
        assert failed, _shadow_info(caller, "cosine-next").shadow
    finally:
        admin.unload_head("cosine-next")
        admin.unload_head("cls")


def test_a_shadow_is_refused_when_it_cannot_shadow(admin: Client, caller: Client) -> None:
    before = _served(caller)
    packaged = packaged_sentiment_head()
    for kwargs, field in (
        ({"shadow_of": "nobody"}, "shadow_of"),
        ({"shadow_of": "encode"}, "shadow_of"),  # a classify head cannot shadow an encode head
        ({"shadow_of": "sentiment", "shadow_fraction": 1.5}, "shadow_fraction"),
    ):
        with pytest.raises(InvalidArgumentError) as refused:
            admin.load_head("next", artifact=packaged, **kwargs)  # type: ignore[arg-type]
        assert refused.value.field == field, refused.value
    admin.load_head("next", artifact=packaged, shadow_of="sentiment", shadow_fraction=0.5)
    try:
        with pytest.raises(InvalidArgumentError, match="has a shadow already"):
            admin.load_head("other", artifact=packaged, shadow_of="sentiment")
        with pytest.raises(AlreadyExistsError):  # the name is the shadow's
            admin.load_head("next", artifact=packaged)
        assert _shadow_info(caller, "next").shadow.fraction == 0.5
    finally:
        admin.unload_head("next")
    assert _served(caller) == before


def test_the_cli_shadows_then_promotes(
    server: ServerThread, admin: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from headserve.server import cli

    (tmp_path / "admin.txt").write_text(ADMIN)
    as_admin = ["--server", server.target, "--admin-token-file", str(tmp_path / "admin.txt")]
    admin.load_head("stance", artifact=packaged_sentiment_head())
    candidate = _retrained(tmp_path / "candidate", 2.0)
    cli.main(["head", "load", f"stance-next={candidate}", "--shadow", "stance", *as_admin])
    assert "shadowing stance" in capsys.readouterr().out
    with Client(server.target, token=CALLER) as caller:
        caller.classify(MORE, heads=["stance"])
        _eventually(lambda: _shadow_info(caller, "stance-next").shadow.items == len(MORE))
    (tmp_path / "caller.txt").write_text(CALLER)
    cli.main(["heads", "--server", server.target, "--token-file", str(tmp_path / "caller.txt")])
    table = capsys.readouterr().out
    assert f"stance: {len(MORE)} items, top-1 " in table and "mean |dp| " in table
    assert "cosine" not in table and "exact match" not in table  # other tasks' measures
    cli.main(["head", "promote", "stance-next", *as_admin])
    out = capsys.readouterr().out
    assert out.startswith("promoted stance (classify, ") and folder_version(candidate) in out
    admin.unload_head("stance")


def test_a_plugin_kept_out_by_the_allow_list_is_refused_naming_it() -> None:
    thread = ServerThread(
        Settings(
            device="cpu",
            plugins=("encode", "mlm", "classify", "qa", "trained_classify"),
            security=Security(admin_tokens=(ADMIN,)),
        )
    )
    try:
        with Client(thread.target, token=ADMIN, max_retries=0) as admin:
            before = _served(admin)
            with pytest.raises(InvalidArgumentError) as refused:
                admin.load_head("tags", plugin="token_classification")
            assert refused.value.field == "plugin"
            assert "not in the --plugins allow-list" in str(refused.value)
            assert _served(admin) == before
    finally:
        thread.stop()


def test_a_head_of_a_plugin_that_did_not_load_is_told_why(server: ServerThread) -> None:
    """A plugin refused at discovery (written for another contract version) is named with its
    reason, not as missing: the same at start and for an admin load (one function)."""
    from headserve.plugins.contract import HeadSpec
    from headserve.server.core.heads import Refusal, broken_plugins, load_one
    from headserve.server.discovery import FailedPlugin

    assert server.core is not None and server.core.live is not None
    loader = server.core.live._loader
    failed = [FailedPlugin("old-heads[legacy]", "written for head contract version 0, not 1")]
    outcome = load_one(
        HeadSpec("h", "legacy"), loader.plugins, loader.backbone, (), broken_plugins(failed)
    )
    assert isinstance(outcome, Refusal) and outcome.field == "plugin"
    assert outcome.reason == (
        "plugin 'legacy' did not load: written for head contract version 0, not 1"
    )


def test_the_async_client_makes_the_same_changes(server: ServerThread) -> None:
    import asyncio

    from headserve.client import AsyncClient

    async def main() -> None:
        async with AsyncClient(server.target, token=ADMIN, max_retries=0) as admin:
            loaded = await admin.load_head("async-mood", artifact=packaged_sentiment_head())
            assert loaded.head.head_version == folder_version(packaged_sentiment_head())
            assert (await admin.set_default_head("sentiment")).head.is_default
            shadow = await admin.load_head(
                "async-next", artifact=packaged_sentiment_head(), shadow_of="async-mood"
            )
            assert shadow.head.shadow_of == "async-mood"
            promoted = await admin.promote_head("async-next")
            assert promoted.head.name == "async-mood"
            assert (await admin.unload_head("async-mood")).head.name == "async-mood"
        async with AsyncClient(server.target, token=CALLER) as caller:
            answer = await caller.classify(TEXTS, heads=["sentiment"])
            assert set(answer.head_versions) == {"sentiment"}

    asyncio.run(main())
