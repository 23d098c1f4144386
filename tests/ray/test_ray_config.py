"""`headserve ray-config`: a Ray Serve config file that Serve accepts, that carries the options of
`headserve serve` to the replicas, and that `serve run` serves (two backbones, one port)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from headserve.client import Client, HeadserveError
from headserve.server.loading import settings_from
from headserve.server.options import serve_settings
from headserve.server.ray_config import config

BIN = Path(sys.executable).parent


def test_the_config_is_one_serve_accepts_and_carries_the_serve_options(bert, tmp_path) -> None:  # type: ignore[no-untyped-def]
    en = [str(bert.backbone), "--head", f"sentiment=classify:{bert.classify}", "--max-wait-ms", "2"]
    token_file, admin_file = tmp_path / "tokens", tmp_path / "admins"
    token_file.write_text("a-secret-token-of-32-characters!\n")
    admin_file.write_text("an-admin-secret-of-32-characters\n")
    other = [
        "--max-batch-items",
        "16",
        "--allow-untrained",
        "--auth-token-file",
        str(token_file),
        "--admin-token-file",
        str(admin_file),
        "--head-store",
        str(tmp_path / "store"),
    ]
    written = config(
        ["--replicas", "3", "--replica-cpus", "0.5", "--app", "en", *en, "--app", "other", *other]
    )
    schema = ServeDeploySchema.parse_obj(written)  # Serve's own validation of the file
    assert schema.grpc_options.port == 9000
    assert [a.name for a in schema.applications] == ["en", "other"]
    for app, serve_args in zip(schema.applications, (en, other), strict=True):
        assert app.route_prefix == f"/{app.name}"
        assert app.import_path == "headserve.server.transports.ray_serve:build"
        # the replicas get exactly what `headserve serve` would run with, read back from the
        # file's plain values (YAML) without the CLI
        plain = yaml.safe_load(yaml.safe_dump(app.args["settings"]))
        assert settings_from(plain) == serve_settings(serve_args)
        (deployment,) = app.deployments
        assert deployment.num_replicas == 3 and deployment.max_ongoing_requests == 256
        assert deployment.ray_actor_options.num_cpus == 0.5
    assert written["applications"][0]["args"]["settings"]["limits"] == {"max_wait_ms": 2.0}
    # a token file by its path; the token itself is never written
    security = written["applications"][1]["args"]["settings"]["security"]
    assert security == {"auth_token_file": str(token_file), "admin_token_file": str(admin_file)}
    dumped = yaml.safe_dump(written)
    assert "a-secret-token" not in dumped and "an-admin-secret" not in dumped
    read = settings_from(security and {"security": security}).security
    assert read.tokens == ("a-secret-token-of-32-characters!",)
    assert read.admin_tokens == ("an-admin-secret-of-32-characters",)
    with pytest.raises(ValueError, match="unknown max_batch"):
        settings_from({"max_batch": 3})
    # batch jobs need one store: not on replicas
    with pytest.raises(ValueError, match="--jobs-dir is not served under Ray Serve"):
        config(["--app", "en", *en, "--jobs-dir", str(tmp_path / "jobs"), "--http-port", "0"])

    # the proxy's request timeout, and each application's replicas told it (their deadline)
    timed = config(["--request-timeout", "30", "--app", "en", *en])
    assert ServeDeploySchema.parse_obj(timed).grpc_options.request_timeout_s == 30
    assert timed["applications"][0]["args"]["request_timeout_s"] == 30
    assert "request_timeout_s" not in written["grpc_options"]

    scaled = config(["--autoscale", "1:4", "--app", "en", *en])
    (deployment,) = ServeDeploySchema.parse_obj(scaled).applications[0].deployments
    assert deployment.autoscaling_config["max_replicas"] == 4

    refused = subprocess.run(
        [
            str(BIN / "headserve"),
            "ray-config",
            "--app",
            "x",
            "--tls-cert",
            "a.pem",
            "--tls-key",
            "b",
        ],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 1 and "serves no TLS" in refused.stderr
    assert "Traceback" not in refused.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.e2e
def test_serve_run_serves_the_written_config(families, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # The port is free when picked, but Ray starts a dozen processes on random ports before
    # its proxy binds it: on the rare clash (seen once in CI), pick another and run again.
    for attempt in range(3):
        if _serve_run(families, tmp_path / str(attempt), _free_port()):
            return
    pytest.fail("serve run found its gRPC port taken three times")


def _serve_run(families, tmp_path: Path, port: int) -> bool:  # type: ignore[no-untyped-def]
    """Serve the written config with `serve run`; False if the proxy could not bind `port`."""
    tmp_path.mkdir()
    args = ["--grpc-port", str(port), "--replica-cpus", "0.5"]
    for name, arch in (("en", "bert"), ("other", "roberta")):
        args += ["--app", name, str(families[arch].backbone), "--head", "encode=encode"]
    made = subprocess.run(
        [str(BIN / "headserve"), "ray-config", *args], capture_output=True, text=True, check=True
    )
    path = tmp_path / "serve.yaml"
    path.write_text(made.stdout)
    assert yaml.safe_load(path.read_text())["grpc_options"]["port"] == port
    log = (tmp_path / "serve.log").open("w")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [str(BIN / "serve"), "run", str(path)], stdout=log, stderr=subprocess.STDOUT, env=env
    )
    try:
        deadline = time.monotonic() + 150
        types = {}
        while len(types) < 2:
            if proc.poll() is not None and "Failed to bind" in (tmp_path / "serve.log").read_text():
                return False
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            for name in ("en", "other"):
                try:
                    with Client(f"127.0.0.1:{port}", application=name, timeout=5) as client:
                        info = client.model_info()
                        encoded = client.encode(["served by Ray"])
                except HeadserveError:  # a failed call, not an assertion: not up yet
                    time.sleep(1)  # the proxy or the application is starting
                    continue
                types[name] = info.backbone.model_type
                assert len(encoded) == 1
        assert types == {"en": "bert", "other": "roberta"}
        return True
    finally:
        proc.send_signal(signal.SIGINT)  # `serve run` shuts Serve and its own Ray down
        try:
            proc.wait(timeout=60)
        finally:
            proc.kill()
            log.close()
