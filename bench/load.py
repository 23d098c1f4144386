"""A bounded gRPC load generator (loopback only) for headserve's Encoder and friends.

    .venv/bin/python bench/load.py TARGET --concurrency 64 --seconds 15 [--mix encode|mixed|...]
    .venv/bin/python bench/load.py TARGET --stream-batch 32 --seconds 15

Unary mode: CONCURRENCY callers, each sending one sentence per call, back to back, for
SECONDS (and at most --max-calls calls). Stream mode: one bidirectional stream of
batches of STREAM_BATCH sentences, with up to --stream-window batches outstanding.
"mixed" rotates Encode, Classify, AnswerQuestion and PredictTokens in equal shares on
the same sentences; "classify", "qa" or "predict" sends that RPC alone. Prints one JSON
object: sentences/s, p50/p99 latency (ms), errors. With --server-pid and --metrics (a
`headserve serve --metrics-port` server), also what the server did during the timed load:
its mean batch, and where the cores went (model workers, the rest of the server, this
load generator, the machine's busy and stolen time).

Below the CLI's own code are the pieces other scripts share: this generator run in a
subprocess (`run_load`: throughput.py, ab.py, ray_proxy.py), and for bench/overload.py and
bench/soak.py per-call records, closed- and open-loop load, a VmRSS sampler and a recorded run
of a server.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from data import masked, sentences
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from report import write_json
from servers import ENV, headserve_server, log_problems

from headserve.v1 import (
    classifier_pb2,
    classifier_pb2_grpc,
    common_pb2,
    encoder_pb2,
    encoder_pb2_grpc,
    question_answerer_pb2,
    question_answerer_pb2_grpc,
    token_predictor_pb2,
    token_predictor_pb2_grpc,
)

MIXES = ("encode", "classify", "qa", "predict", "mixed")  # --mix: one RPC alone, or all four


def calls(
    channel: grpc.aio.Channel, mix: str, timeout: float | None = None
) -> list[Callable[[str], Awaitable[Any]]]:
    """One callable per RPC of the mix (one sentence per call): "mixed" is all four in
    equal shares (Encode, Classify, AnswerQuestion, PredictTokens), any other one RPC alone;
    `timeout`: each call's deadline."""
    encoder = encoder_pb2_grpc.EncoderStub(channel)
    encode = lambda t: encoder.Encode(  # noqa: E731
        encoder_pb2.EncodeRequest(items=[common_pb2.TextInput(text=t)]), timeout=timeout
    )
    classifier = classifier_pb2_grpc.ClassifierStub(channel)
    qa = question_answerer_pb2_grpc.QuestionAnswererStub(channel)
    mlm = token_predictor_pb2_grpc.TokenPredictorStub(channel)
    every = {
        "encode": encode,
        "classify": lambda t: classifier.Classify(
            classifier_pb2.ClassifyRequest(items=[common_pb2.TextInput(text=t)]), timeout=timeout
        ),
        "qa": lambda t: qa.AnswerQuestion(
            question_answerer_pb2.AnswerQuestionRequest(
                items=[
                    question_answerer_pb2.QuestionContext(question="What is it about?", context=t)
                ]
            ),
            timeout=timeout,
        ),
        "predict": lambda t: mlm.PredictTokens(
            token_predictor_pb2.PredictTokensRequest(items=[common_pb2.TextInput(text=masked(t))]),
            timeout=timeout,
        ),
    }
    return list(every.values()) if mix == "mixed" else [every[mix]]


APPLICATION: list[tuple[str, str]] = []  # --application: Ray Serve's `application` metadata


class _Metadata(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.StreamStreamClientInterceptor):
    """Adds APPLICATION to every call (a Ray Serve endpoint serving several backbones)."""

    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._with(details), request)

    async def intercept_stream_stream(self, continuation, details, requests):  # type: ignore[no-untyped-def]
        return await continuation(self._with(details), requests)

    @staticmethod
    def _with(details):  # type: ignore[no-untyped-def]
        metadata = [*(details.metadata or ()), *APPLICATION]
        return details._replace(metadata=metadata)


def _channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, interceptors=[_Metadata()] if APPLICATION else None)


def scrape(url: str, timeout: float = 10.0) -> list[Sample]:
    """Every sample the server's /metrics shows now."""
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        text = reply.read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


@dataclass(frozen=True)
class Probe:
    """Counters at one moment: the server's CPU and metrics, this process's CPU, the machine's."""

    at: float
    server_cpu: float
    generator_cpu: float
    machine: tuple[int, int, int]
    metrics: dict[str, float]

    @classmethod
    def take(cls, server_pid: int, metrics_url: str) -> Probe:
        metrics = {s.name: s.value for s in scrape(metrics_url) if not s.labels}
        return cls(
            time.perf_counter(),
            cpu_seconds(server_pid),
            time.process_time(),
            machine_ticks(),
            metrics,
        )


def usage(a: Probe, b: Probe) -> dict[str, float]:
    """Between two probes: the batches the server formed, and where the machine's cores went
    (the model workers' CPU, the rest of the server's, this load generator's)."""
    wall = b.at - a.at
    delta = lambda name: b.metrics[name] - a.metrics[name]  # noqa: E731
    batches = max(1.0, delta("headserve_batch_rows_count"))
    model = delta("headserve_model_cpu_seconds_total")
    busy, steal, total = (y - x for x, y in zip(a.machine, b.machine, strict=True))
    return {
        "batches": delta("headserve_batch_rows_count"),
        "mean_batch_rows": delta("headserve_batch_rows_sum") / batches,
        "mean_batch_tokens": delta("headserve_batch_tokens_sum") / batches,
        "model_tokens_s": delta("headserve_batch_tokens_sum") / wall,
        "model_cores": model / wall,
        # of the workers' wall time, the share spent computing batches
        "workers_busy_pct": 100
        * delta("headserve_batch_seconds_sum")
        / (wall * b.metrics["headserve_model_workers"]),
        "server_other_cores": (b.server_cpu - a.server_cpu - model) / wall,
        "generator_cores": (b.generator_cpu - a.generator_cpu) / wall,
        "machine_busy_pct": 100 * busy / max(1, total),
        "steal_pct": 100 * steal / max(1, total),
    }


@dataclass(frozen=True)
class Watch:
    """--server-pid and --metrics: probe the server around the timed load (or do nothing)."""

    server_pid: int | None = None
    metrics_url: str | None = None

    def probe(self) -> Probe | None:
        if self.server_pid is None or self.metrics_url is None:
            return None
        return Probe.take(self.server_pid, self.metrics_url)

    def between(self, a: Probe | None, b: Probe | None) -> dict[str, object]:
        return {} if a is None or b is None else {"server": usage(a, b)}


async def unary(
    target: str,
    texts: list[str],
    concurrency: int,
    seconds: float,
    max_calls: int,
    mix: str,
    watch: Watch = Watch(),
) -> dict:
    async with _channel(target) as channel:
        rpcs = calls(channel, mix)
        await rpcs[0](texts[0])  # warm up the connection and the model
        before = watch.probe()
        started = time.perf_counter()
        recorder = await closed_loop(rpcs, texts, concurrency, seconds, max_calls=max_calls)
        elapsed = time.perf_counter() - started
        after = watch.probe()
    latencies = [c.done - c.sent for c in recorder.calls if c.code == "OK"]
    errors = len(recorder.calls) - len(latencies)
    extra = {"concurrency": concurrency, "mix": mix, **watch.between(before, after)}
    return _summary(len(latencies), latencies, elapsed, errors, **extra)


async def stream(
    target: str, texts: list[str], batch: int, window: int, seconds: float, watch: Watch = Watch()
) -> dict:
    async with _channel(target) as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel)
        sent: dict[str, float] = {}
        latencies: list[float] = []
        errors = 0
        credit = asyncio.Semaphore(window)
        stop_at = time.perf_counter() + seconds

        async def requests() -> AsyncIterator[encoder_pb2.EncodeRequest]:
            for n in itertools.count():
                if time.perf_counter() >= stop_at:
                    return
                await credit.acquire()
                start = n * batch % len(texts)
                chunk = (texts * 2)[start : start + batch]
                sent[str(n)] = time.perf_counter()
                yield encoder_pb2.EncodeRequest(
                    id=str(n), items=[common_pb2.TextInput(text=t) for t in chunk]
                )

        before = watch.probe()
        started = time.perf_counter()
        async for reply in stub.EncodeStream(requests()):
            latencies.append(time.perf_counter() - sent.pop(reply.id))
            errors += reply.HasField("error")
            credit.release()
        elapsed = time.perf_counter() - started
        after = watch.probe()
    extra = {"stream_batch": batch, **watch.between(before, after)}
    return _summary(len(latencies) * batch, latencies, elapsed, errors, **extra)


def _summary(
    done: int, latencies: list[float], elapsed: float, errors: int, **extra: object
) -> dict:
    return {
        **extra,
        "sentences": done,
        "seconds": elapsed,
        "sentences_s": done / elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "errors": errors,
    }


def run_load(target: str, seconds: float, *options: str) -> dict:
    """This load generator in a subprocess of its own, against `target` for `seconds`, with
    more of its command-line `options`: its JSON summary."""
    script = str(Path(__file__).resolve())
    run = subprocess.run(
        [sys.executable, script, target, "--seconds", str(seconds), *options],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=seconds + 120,
        check=True,
    )
    return json.loads(run.stdout)


def brief(result: dict) -> str:
    """A `run_load` summary in a table cell: sentences/s (p50 / p99 ms)."""
    return f"{result['sentences_s']:.1f} ({result['p50_ms']:.0f} / {result['p99_ms']:.0f})"


# --- Per-call records, open-loop load, the server's memory and CPU (overload.py, soak.py) ------


@dataclass(slots=True)
class Call:
    """One call: when the schedule wanted it sent, when it was sent and answered, its status."""

    rpc: int  # index into the mix of `calls()`
    scheduled: float  # time.perf_counter(); a closed-loop call is scheduled when it is sent
    sent: float
    done: float
    code: str  # "OK" or the grpc.StatusCode name
    queue_ms: float = float("nan")  # the reply's Timing: in the server's queue
    inference_ms: float = float("nan")  # ... and in the batches that computed it

    @property
    def ms(self) -> float:
        return (self.done - self.sent) * 1e3

    @property
    def outside_ms(self) -> float:
        """The part of the latency outside the server's queue and model: gRPC, the event loops
        of both sides (tokenizing included), the network."""
        return self.ms - self.queue_ms - self.inference_ms


@dataclass
class Recorder:
    """Every call's record, and up to three distinct messages per status code."""

    calls: list[Call] = field(default_factory=list)
    messages: dict[str, list[str]] = field(default_factory=dict)
    debug: dict[str, str] = field(default_factory=dict)  # gRPC's debug string, one per code

    async def call(
        self, rpcs: Sequence[Callable[[str], Awaitable[Any]]], n: int, text: str, scheduled: float
    ) -> str:
        sent = time.perf_counter()
        code = "OK"
        timing = None
        try:
            timing = getattr(await rpcs[n % len(rpcs)](text), "timing", None)
        except grpc.RpcError as exc:
            code = exc.code().name
            seen = self.messages.setdefault(code, [])
            detail = re.sub(r"\d+", "N", str(exc.details()))
            if len(seen) < 3 and detail not in seen:
                seen.append(detail)
            if code not in self.debug:
                self.debug[code] = str(exc.debug_error_string())  # type: ignore[attr-defined]
        call = Call(n % len(rpcs), scheduled, sent, time.perf_counter(), code)
        if timing is not None:
            call.queue_ms, call.inference_ms = timing.queue_ms, timing.inference_ms
        self.calls.append(call)
        return code


def by_code(calls: Sequence[Call]) -> dict[str, int]:
    """How many calls ended with each status code."""
    counts: dict[str, int] = {}
    for c in calls:
        counts[c.code] = counts.get(c.code, 0) + 1
    return dict(sorted(counts.items()))


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank quantile `q` (0..1) of `values`; NaN if empty."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def closed_loop(
    rpcs: Sequence[Callable[[str], Awaitable[Any]]],
    texts: Sequence[str],
    concurrency: int,
    seconds: float,
    *,
    max_calls: int = 1_000_000,
    pause_after_error: float = 0.0,
    recorder: Recorder | None = None,
) -> Recorder:
    """CONCURRENCY callers, each sending one sentence per call, back to back, for SECONDS (and
    at most `max_calls` calls); a caller whose call failed waits `pause_after_error` first."""
    recorder = recorder if recorder is not None else Recorder()
    counter = itertools.count()
    stop_at = time.perf_counter() + seconds

    async def caller(k: int) -> None:
        i = k * 97
        while time.perf_counter() < stop_at:
            n = next(counter)
            if n >= max_calls:
                return
            code = await recorder.call(rpcs, n, texts[i % len(texts)], time.perf_counter())
            i += 1
            if code != "OK" and pause_after_error:
                await asyncio.sleep(pause_after_error)

    await asyncio.gather(*(caller(k) for k in range(concurrency)))
    return recorder


async def timed_loop(
    call: Callable[[str], Awaitable[Any]], texts: Sequence[str], callers: int, seconds: float
) -> dict[str, float]:
    """CALLERS closed-loop callers of `call`, one text each time, for SECONDS, whatever the
    transport: calls/s, p50 and p99 of the calls that succeeded, and how many failed."""
    counter = itertools.count()
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal errors
        while time.perf_counter() < stop_at:
            text = texts[next(counter) % len(texts)]
            began = time.perf_counter()
            try:
                await call(text)
            except Exception:  # counted: a run with errors is not a fair comparison
                errors += 1
                continue
            latencies.append((time.perf_counter() - began) * 1e3)

    began = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    wall = time.perf_counter() - began
    return {
        "calls": len(latencies),
        "calls_s": len(latencies) / wall,
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
        "errors": errors,
    }


async def side_by_side(
    ways: Sequence[tuple[str, Callable[[str], Awaitable[Any]]]],
    texts: Sequence[str],
    callers: int,
    seconds: float,
    rounds: int,
    probe: Callable[[], float] | None = None,
) -> list[dict[str, dict[str, float]]]:
    """Each round runs `timed_loop` on every way, the order reversed every other round, after
    2 s of warm-up each. With `probe` (a counter read off the server), each run also gets
    `probe_per_call`: how much it grew per successful call."""
    for _, warm in ways:
        await timed_loop(warm, texts, callers, 2.0)
    results = []
    for n in range(rounds):
        one: dict[str, dict[str, float]] = {}
        for name, call in ways if n % 2 == 0 else list(reversed(ways)):
            before = probe() if probe is not None else 0.0
            one[name] = await timed_loop(call, texts, callers, seconds)
            if probe is not None:
                one[name]["probe_per_call"] = (probe() - before) / max(1, one[name]["calls"])
        results.append(one)
    return results


@dataclass
class OpenLoop:
    """What `open_loop` offered: calls wanted by the schedule, sent, and not sent because
    `max_outstanding` calls were already waiting or the run's time was up."""

    recorder: Recorder
    rate: float
    started: float
    dispatch_seconds: float
    wanted: int
    skipped_outstanding: int
    unfinished: int  # still unanswered `drain_timeout` after the last send: cancelled
    max_outstanding_seen: int
    max_outstanding: int

    @property
    def sent(self) -> int:
        return self.wanted - self.skipped_outstanding

    @property
    def offered_rate(self) -> float:
        """Calls/s really sent."""
        return self.sent / self.dispatch_seconds

    @property
    def send_lag_ms(self) -> list[float]:
        """How late each call was sent after its scheduled time, in ms."""
        return [(c.sent - c.scheduled) * 1e3 for c in self.recorder.calls]

    def sending(self) -> dict[str, float]:
        """How the sending went: calls sent and skipped, outstanding, send lag p50 and p99."""
        lag_ms = self.send_lag_ms
        return {
            "sent": self.sent,
            "skipped_max_outstanding": self.skipped_outstanding,
            "max_outstanding": self.max_outstanding,
            "max_outstanding_seen": self.max_outstanding_seen,
            "unfinished": self.unfinished,
            "send_lag_p50_ms": percentile(lag_ms, 0.5),
            "send_lag_p99_ms": percentile(lag_ms, 0.99),
        }


async def open_loop(
    rpcs: Sequence[Callable[[str], Awaitable[Any]]],
    texts: Sequence[str],
    rate: float,
    seconds: float,
    *,
    max_outstanding: int,
    drain_timeout: float,
    dispatched: asyncio.Event | None = None,
    recorder: Recorder | None = None,
) -> OpenLoop:
    """Calls sent on a fixed schedule (call n at n / RATE s), whatever the replies, for SECONDS.

    A generator that falls behind sends the calls it owes at once, up to `max_outstanding`
    unanswered calls; a call due beyond that is skipped and counted, never queued, so the
    generator cannot run away. `dispatched` is set when sending stops; then the calls still
    out get `drain_timeout` seconds to finish (each has its own deadline too).
    """
    recorder = recorder if recorder is not None else Recorder()
    out: set[asyncio.Future[str]] = set()
    started = time.perf_counter()
    stop_at = started + seconds
    n = skipped = most = 0
    while (now := time.perf_counter()) < stop_at:
        due = int((now - started) * rate) + 1
        for _ in range(min(due - n, 256)):  # yield to the replies at least every 256 sends
            if len(out) >= max_outstanding:
                skipped += 1
            else:
                task = asyncio.ensure_future(
                    recorder.call(rpcs, n, texts[n % len(texts)], started + n / rate)
                )
                out.add(task)
                task.add_done_callback(out.discard)
            n += 1
        most = max(most, len(out))
        await asyncio.sleep(max(0.0, started + n / rate - time.perf_counter()))
    dispatch_seconds = time.perf_counter() - started
    if dispatched is not None:
        dispatched.set()
    unfinished = 0
    if out:
        _, pending = await asyncio.wait(set(out), timeout=drain_timeout)
        unfinished = len(pending)
        for waiting in pending:
            waiting.cancel()
    return OpenLoop(
        recorder, rate, started, dispatch_seconds, n, skipped, unfinished, most, max_outstanding
    )


def vmrss_kib(pid: int) -> int:
    """VmRSS of process `pid` from /proc/PID/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """utime + stime of process `pid` (or of its thread `tid`) from /proc, in seconds."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int, int]:
    """The whole machine's clock ticks so far (/proc/stat): busy, stolen by the hypervisor
    (this VM's CPUs were ready but not run), and in all."""
    cpu = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = cpu[:8]
    busy = user + nice + system + irq + softirq
    return busy, steal, busy + idle + iowait + steal


def cpu_between(
    samples: list[tuple[float, float, int, int, int]], start: float, end: float
) -> dict[str, float | None]:
    """From CPU samples (perf_counter, cpu_seconds, *machine_ticks): the process's % of one
    core, and the machine's busy and stolen % of all its time, between the samples nearest
    start and end."""
    inside = [s for s in samples if start <= s[0] <= end]
    if len(inside) < 2:
        return {"server_pct": None, "machine_busy_pct": None, "steal_pct": None}
    (t0, p0, b0, s0, a0), (t1, p1, b1, s1, a1) = inside[0], inside[-1]
    total = max(1, a1 - a0)
    return {
        "server_pct": 100 * (p1 - p0) / (t1 - t0),
        "machine_busy_pct": 100 * (b1 - b0) / total,
        "steal_pct": 100 * (s1 - s0) / total,
    }


class RssSampler(threading.Thread):
    """VmRSS of `pid` every `every` seconds on a thread: `samples` = [(perf_counter, KiB)];
    and CPU at the same moments: `cpu` = [(perf_counter, cpu_seconds, *machine_ticks())]."""

    def __init__(self, pid: int, every: float) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, int]] = []
        self.cpu: list[tuple[float, float, int, int, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        next_at = time.perf_counter()
        while not self._halt.is_set():
            try:
                now = time.perf_counter()
                self.samples.append((now, vmrss_kib(self.pid)))
                self.cpu.append((now, cpu_seconds(self.pid), *machine_ticks()))
            except (OSError, RuntimeError):  # the process is gone
                return
            next_at += self.every
            self._halt.wait(max(0.0, next_at - time.perf_counter()))

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)

    def between(self, start: float, end: float) -> list[int]:
        return [kib for t, kib in self.samples if start <= t <= end]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--max-calls", type=int, default=200_000)
    parser.add_argument("--mix", choices=MIXES, default="encode")
    parser.add_argument("--stream-batch", type=int, default=0)
    parser.add_argument("--stream-window", type=int, default=4)
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--server-pid", type=int, help="with --metrics: report where CPU went")
    parser.add_argument("--metrics", help="the server's /metrics URL (serve --metrics-port)")
    parser.add_argument("--application", help="Ray Serve: the application to call")
    args = parser.parse_args()
    if args.application:
        APPLICATION.append(("application", args.application))
    texts = sentences(args.sentences)
    watch = Watch(args.server_pid, args.metrics)
    if args.stream_batch:
        result = asyncio.run(
            stream(args.target, texts, args.stream_batch, args.stream_window, args.seconds, watch)
        )
    else:
        result = asyncio.run(
            unary(
                args.target, texts, args.concurrency, args.seconds, args.max_calls, args.mix, watch
            )
        )
    print(json.dumps(result))


def run_recorded(
    script: str,
    serve_args: list[str],
    json_path: Path,
    rss_every: float,
    measure: Callable[[str, int, RssSampler], Awaitable[dict[str, Any]]],
    render: Callable[[dict[str, Any]], str],
) -> None:
    """Start a server, sample its VmRSS while `measure(target, pid, sampler)` runs, then
    write the result (with the command, the server's log and its problems) to `json_path`
    and print `render(result)`."""
    log_path = json_path.with_suffix(".server.log")
    with headserve_server(serve_args, log_path) as (proc, target):
        sampler = RssSampler(proc.pid, rss_every)
        sampler.start()
        try:
            result = asyncio.run(measure(target, proc.pid, sampler))
        finally:
            sampler.stop()
    result = {
        "command": " ".join([".venv/bin/python", script, *sys.argv[1:]]),
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "server": ["headserve", "serve", "--port", "0", *serve_args],
        "server_log": str(log_path),
        "server_log_problems": log_problems(log_path),
        **result,
    }
    write_json(json_path, result, strict=True)
    print(render(result))
    problems = result["server_log_problems"]
    if problems["count"]:
        print(f"\nServer log: {problems['count']} warning/error lines, e.g.:")
        print("\n".join(problems["first"][:5]))


if __name__ == "__main__":
    main()
