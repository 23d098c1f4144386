"""Hostile callers against a live server, while an honest one measures what they cost it.

    .venv/bin/python bench/attacks.py [--images] [--only NAME ...] [--calls 200]

One `headserve serve` (the packaged MiniLM, or EfficientNet-Lite0 with --images) with
--http-port, tokens and --open-health. For each attack, a caller on its own gRPC channel
sends one-sentence Encode calls one after another, at least --calls of them, from the
attack's start until it has ended; the table gives what the server answered the attacker
("refused how"), the caller's p50 / p99 / max latency during the attack, and the server's
resident memory at its peak during the attack and once it is over. The first row is the
same caller with no attack. Results: bench/results/attacks[_images].json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from load import RssSampler, percentile, vmrss_kib
from report import RESULTS, markdown_head, write_json
from servers import headserve_server

from headserve.v1 import (
    classifier_pb2,
    classifier_pb2_grpc,
    common_pb2,
    encoder_pb2,
    encoder_pb2_grpc,
)

TOKEN = "attacks-bench-token-0123456789"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
SENTENCE = "The quick brown fox jumps over the lazy dog."


class Attacked:
    """The server under attack: its gRPC target, HTTP port and process id."""

    def __init__(self, target: str, http_port: int, pid: int) -> None:
        self.target, self.http_port, self.pid = target, http_port, pid

    def post(self, path: str, body: bytes, timeout: float = 60) -> int:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}",
            data=body,
            headers={"content-type": "application/json", "authorization": f"Bearer {TOKEN}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as reply:
                return int(reply.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.http_port), timeout=30)


def _status_line(sock: socket.socket) -> str:
    try:
        data = sock.recv(256)
    except (ConnectionResetError, TimeoutError, OSError):
        return "reset"
    return data.split(b"\r\n", 1)[0].decode("latin-1")[9:12] or "closed"


# --- the attacks: each returns what the server answered, counted -----------------------------


def token_ids(server: Attacked) -> Counter[str]:
    """/v1/embeddings: one input of 5,000,000 token ids (10 MB of JSON)."""
    body = b'{"model": "encode", "input": [[' + b",".join([b"1"] * 5_000_000) + b"]]}"
    return Counter([f"HTTP {server.post('/v1/embeddings', body)}"])


def long_texts(server: Attacked) -> Counter[str]:
    """gRPC Encode: 160 texts of 100,000 characters, truncate=true."""
    text = ("lorem ipsum dolor sit amet " * 4000)[:100_000]
    items = [common_pb2.TextInput(text=text) for _ in range(160)]
    request = encoder_pb2.EncodeRequest(items=items, options=encoder_pb2.EncodeOptions())
    request.options.truncate = True
    with grpc.insecure_channel(
        server.target, options=[("grpc.max_send_message_length", 64 << 20)]
    ) as channel:
        try:
            encoder_pb2_grpc.EncoderStub(channel).Encode(request, metadata=AUTH, timeout=120)
            return Counter(["OK"])
        except grpc.RpcError as exc:
            return Counter([exc.code().name])


def long_rerank(server: Attacked) -> Counter[str]:
    """HTTP /v1/rerank: 160 documents of 100,000 characters."""
    text = ("lorem ipsum dolor sit amet " * 4000)[:100_000]
    body = json.dumps({"query": "what", "documents": [text] * 160}).encode()
    return Counter([f"HTTP {server.post('/v1/rerank', body, timeout=120)}"])


def huge_header(server: Attacked) -> Counter[str]:
    """A 200 MB header value, sent as fast as the server reads it."""
    with server.connect() as sock:
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\nx-big: ")
        chunk = b"a" * (1 << 20)
        try:
            for _ in range(200):
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return Counter([f"HTTP {_status_line(sock)}"])


def many_headers(server: Attacked) -> Counter[str]:
    """50 MB spread over 500,000 header fields."""
    with server.connect() as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n")
        line = b"x-field: " + b"a" * 90 + b"\r\n"
        try:
            for _ in range(500):
                sock.sendall(line * 1000)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return Counter([f"HTTP {_status_line(sock)}"])


def slowloris(server: Attacked) -> Counter[str]:
    """1,000 connections, each sending its head one line every 2 s, never ending it."""
    socks = [server.connect() for _ in range(1000)]
    answers: Counter[str] = Counter()
    for sock in socks:
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\n")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        time.sleep(2)
        for sock in socks:
            try:
                sock.sendall(b"x-slow: 1\r\n")
            except OSError:
                pass
    for sock in socks:
        sock.settimeout(5)
        answers[f"HTTP {_status_line(sock)}"] += 1
        sock.close()
    return answers


def idle_connections(server: Attacked) -> Counter[str]:
    """2,000 connections that send nothing, held 15 s."""
    socks = []
    for _ in range(2000):
        try:
            socks.append(server.connect())
        except OSError:
            break
    time.sleep(15)
    answers: Counter[str] = Counter()
    for sock in socks:
        sock.setblocking(False)
        try:
            data = sock.recv(256)
            answers[f"HTTP {data[9:12].decode() or 'closed'}"] += 1
        except BlockingIOError:
            answers["still open"] += 1
        except OSError:
            answers["reset"] += 1
        sock.close()
    return answers


def deep_json(server: Attacked) -> Counter[str]:
    """/v1/embeddings: JSON nested 100,000 levels deep."""
    body = b'{"model": "encode", "input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    return Counter([f"HTTP {server.post('/v1/embeddings', body)}"])


def lone_surrogates(server: Attacked) -> Counter[str]:
    """/v1/embeddings and /v1/rerank: texts holding a lone surrogate, 100 times."""
    answers: Counter[str] = Counter()
    for _ in range(50):
        embeddings = b'{"model": "encode", "input": ["a \\ud800 b"]}'
        answers[f"HTTP {server.post('/v1/embeddings', embeddings)}"] += 1
        rerank = b'{"query": "q", "documents": ["\\udfff"]}'
        answers[f"HTTP {server.post('/v1/rerank', rerank)}"] += 1
    return answers


def gone_mid_body(server: Attacked) -> Counter[str]:
    """200 requests that send half their declared body, then close."""
    for _ in range(200):
        with server.connect() as sock:
            sock.sendall(
                b"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b"authorization: Bearer " + TOKEN.encode() + b"\r\n"
                b'content-length: 1000\r\n\r\n{"input": ["half'
            )
    return Counter(["closed by the attacker"])


def slow_body(server: Attacked) -> Counter[str]:
    """100 requests whose body comes one byte a second (each holds a connection)."""
    socks = [server.connect() for _ in range(100)]
    for sock in socks:
        sock.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"authorization: Bearer " + TOKEN.encode() + b"\r\ncontent-length: 1000\r\n\r\n"
        )
    for _ in range(5):
        time.sleep(1)
        for sock in socks:
            try:
                sock.sendall(b" ")
            except OSError:
                pass
    answers: Counter[str] = Counter()
    for sock in socks:
        answers["held (the body timeout is 60 s)"] += 1
        sock.close()
    return answers


def malformed_protobuf(server: Attacked) -> Counter[str]:
    """gRPC Encode with 500 bodies that are not protobuf."""
    answers: Counter[str] = Counter()
    with grpc.insecure_channel(server.target) as channel:
        call = channel.unary_unary(
            "/headserve.v1.Encoder/Encode",
            request_serializer=lambda raw: raw,
            response_deserializer=lambda raw: raw,
        )
        for index in range(500):
            try:
                call(bytes([0xFF, index % 256]) * 40, metadata=AUTH, timeout=10)
                answers["OK"] += 1
            except grpc.RpcError as exc:
                answers[exc.code().name] += 1
    return answers


def idle_streams(server: Attacked) -> Counter[str]:
    """128 EncodeStream calls that send nothing and never half-close, held 10 s."""
    answers: Counter[str] = Counter()
    with grpc.insecure_channel(server.target) as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel)
        hold = threading.Event()

        def requests() -> Iterator[encoder_pb2.EncodeRequest]:
            hold.wait(30)  # sends nothing, and half-closes only when the attack ends
            yield from ()

        calls = [stub.EncodeStream(requests(), metadata=AUTH) for _ in range(128)]
        time.sleep(10)
        hold.set()
        for call in calls:
            try:
                list(call)
                answers["OK"] += 1
            except grpc.RpcError as exc:
                answers[exc.code().name] += 1
    return answers


def tokenless_watches(server: Attacked) -> Counter[str]:
    """128 Health.Watch streams with no token (--open-health), held 10 s."""
    answers: Counter[str] = Counter()
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watches = [health.Watch(health_pb2.HealthCheckRequest()) for _ in range(128)]
        time.sleep(10)
        for watch in watches:
            try:
                next(watch)
                answers["watching"] += 1
            except grpc.RpcError as exc:
                answers[exc.code().name] += 1
            watch.cancel()
    return answers


def abandoned_calls(server: Attacked) -> Counter[str]:
    """3,000 Encode calls of 32 sentences, each cancelled 5 ms after it is sent."""
    request = encoder_pb2.EncodeRequest(
        items=[common_pb2.TextInput(text=f"{SENTENCE} {i}") for i in range(32)]
    )
    with grpc.insecure_channel(server.target) as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel)
        for _ in range(3000):
            future = stub.Encode.future(request, metadata=AUTH)
            time.sleep(0.005)
            future.cancel()
    return Counter(["cancelled by the attacker"])


def big_images(server: Attacked) -> Counter[str]:
    """Classify: 4 callers at once, each of 2 RGBA PNGs of 6,300 x 6,300 (40 MP, 170 KB)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGBA", (6300, 6300), (200, 30, 40, 128)).save(buffer, "PNG", optimize=True)
    item = common_pb2.TextInput(image=common_pb2.Image(data=buffer.getvalue()))
    request = classifier_pb2.ClassifyRequest(items=[item, item])
    answers: Counter[str] = Counter()

    def one() -> None:
        with grpc.insecure_channel(server.target) as channel:
            try:
                classifier_pb2_grpc.ClassifierStub(channel).Classify(
                    request, metadata=AUTH, timeout=120
                )
                answers["OK"] += 1
            except grpc.RpcError as exc:
                answers[exc.code().name] += 1

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


TEXT_ATTACKS: dict[str, Callable[[Attacked], Counter[str]]] = {
    "token ids": token_ids,
    "long texts": long_texts,
    "long rerank": long_rerank,
    "huge header": huge_header,
    "many headers": many_headers,
    "slowloris": slowloris,
    "idle connections": idle_connections,
    "deep JSON": deep_json,
    "lone surrogates": lone_surrogates,
    "gone mid-body": gone_mid_body,
    "slow body": slow_body,
    "malformed protobuf": malformed_protobuf,
    "idle streams": idle_streams,
    "tokenless watches": tokenless_watches,
    "abandoned calls": abandoned_calls,
}
IMAGE_ATTACKS = {"big images": big_images, "tokenless watches": tokenless_watches}


# --- the honest caller -----------------------------------------------------------------------


def measured(server: Attacked, attack: Callable[[Attacked], Counter[str]] | None, calls: int):  # type: ignore[no-untyped-def]
    """Run `attack` on a thread while the caller measures; (answers, latencies ms, rss peak
    and after, in MB)."""
    answers: Counter[str] = Counter()
    done = threading.Event()

    def attacking() -> None:
        try:
            if attack is not None:
                answers.update(attack(server))
        except Exception as exc:  # the attack itself broke: say so in the table
            answers[f"attack failed: {exc!r}"[:80]] += 1
        finally:
            done.set()

    sampler = RssSampler(server.pid, 0.05)
    sampler.start()
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    with grpc.insecure_channel(server.target) as channel:
        request = _caller_request(channel)
        thread = threading.Thread(target=attacking, daemon=True)
        start = time.perf_counter()
        thread.start()
        while len(latencies) < calls or not done.is_set():
            began = time.perf_counter()
            try:
                request()
            except grpc.RpcError as exc:
                errors[exc.code().name] += 1
            latencies.append((time.perf_counter() - began) * 1000)
            time.sleep(0.005)
        thread.join()
        end = time.perf_counter()
    time.sleep(2)  # what the server keeps once the attack is over
    after = vmrss_kib(server.pid) / 1024
    sampler.stop()
    peak = max(sampler.between(start, end), default=0) / 1024
    return answers, errors, latencies, peak, after


def _caller_request(channel: grpc.Channel) -> Callable[[], object]:
    encoder = encoder_pb2_grpc.EncoderStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    if IMAGES:  # an image backbone has no Encode of text: the caller checks health
        return lambda: health.Check(health_pb2.HealthCheckRequest(), metadata=AUTH, timeout=30)
    request = encoder_pb2.EncodeRequest(items=[common_pb2.TextInput(text=SENTENCE)])
    return lambda: encoder.Encode(request, metadata=AUTH, timeout=30)


IMAGES = False


def main() -> None:
    global IMAGES
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", action="store_true", help="EfficientNet-Lite0 and images")
    parser.add_argument("--only", nargs="*", help="these attacks only")
    parser.add_argument("--calls", type=int, default=200, help="the caller's calls per attack")
    args = parser.parse_args()
    IMAGES = args.images
    attacks = IMAGE_ATTACKS if IMAGES else TEXT_ATTACKS
    if args.only:
        attacks = {name: attacks[name] for name in args.only}
    model = ["efficientnet-lite0"] if IMAGES else []
    serve = [*model, "--http-port", "0", "--open-health", "--grace", "1"]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HEADSERVE_AUTH_TOKENS": TOKEN,
    }
    log_path = RESULTS / "attacks.log"
    rows = []
    with headserve_server(serve, log_path, env=env) as (proc, target):
        http_port = int(log_path.read_text().split("OpenAI-style HTTP on port ")[1].split()[0])
        server = Attacked(target, http_port, proc.pid)
        for name, attack in {"(none)": None, **attacks}.items():
            answers, errors, latencies, peak, after = measured(server, attack, args.calls)
            row = {
                "attack": name,
                "what": (attack.__doc__ or "").split("\n")[0] if attack else "the caller alone",
                "refused how": dict(answers),
                "caller errors": dict(errors),
                "caller calls": len(latencies),
                "p50 ms": percentile(latencies, 0.5),
                "p99 ms": percentile(latencies, 0.99),
                "max ms": max(latencies),
                "rss peak MB": peak,
                "rss after MB": after,
            }
            rows.append(row)
            print(_line(row), flush=True)
    write_json(RESULTS / ("attacks_images.json" if IMAGES else "attacks.json"), rows)
    print(
        "\n".join(
            markdown_head(
                "attack | what | refused how | caller p99 ms | caller max ms | RSS peak / after MB",
                "lllrrr",
            )
        )
    )
    for row in rows:
        print(_line(row))


def _line(row: dict) -> str:  # type: ignore[type-arg]
    answers = ", ".join(f"{k} x{v}" for k, v in row["refused how"].items()) or "-"
    if row["caller errors"]:
        answers += f" (caller: {row['caller errors']})"
    return (
        f"| {row['attack']} | {row['what']} | {answers} | {row['p99 ms']:.1f} | "
        f"{row['max ms']:.1f} | {row['rss peak MB']:.0f} / {row['rss after MB']:.0f} |"
    )


if __name__ == "__main__":
    main()
