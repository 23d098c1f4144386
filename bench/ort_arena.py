"""ONNX Runtime's CPU memory arena on and off: the memory a burst leaves behind, and what the
arena buys in speed.

    .venv/bin/python bench/ort_arena.py [--seconds 30] [--callers 16] [--rounds 2]

For each setting ($HEADSERVE_ORT_CPU_ARENA 1 or 0), a server on the packaged MiniLM (ONNX
Runtime, the default on a CPU) takes a burst: CALLERS closed-loop callers of Encode, each
call 32 texts of 1 to 400 words (every batch a new shape), for SECONDS. The server's resident
memory is read before the burst, at its peak, and 15 s after it (the server trims its heap
when it goes idle). Rounds alternate the settings.
"""

from __future__ import annotations

import argparse
import os
import random
import threading
import time

import grpc
from load import RssSampler, percentile, vmrss_kib
from report import RESULTS, write_json
from servers import headserve_server

from headserve.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc

WORDS = "the of and to in is was for on that with as by at from his her an which".split()


def _request(rng: random.Random) -> encoder_pb2.EncodeRequest:
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(1, 400))) for _ in range(32)]
    return encoder_pb2.EncodeRequest(
        items=[common_pb2.TextInput(text=t) for t in texts],
        options=encoder_pb2.EncodeOptions(truncate=True),
    )


def burst(target: str, callers: int, seconds: float) -> tuple[int, list[float]]:
    """(texts answered, call latencies in ms) of `callers` closed-loop callers."""
    answered = [0]
    latencies: list[float] = []
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def caller(seed: int) -> None:
        rng = random.Random(seed)
        with grpc.insecure_channel(target) as channel:
            stub = encoder_pb2_grpc.EncoderStub(channel)
            while time.monotonic() < end:
                request = _request(rng)
                began = time.perf_counter()
                stub.Encode(request, timeout=120)
                with lock:
                    latencies.append((time.perf_counter() - began) * 1000)
                    answered[0] += len(request.items)

    threads = [threading.Thread(target=caller, args=(seed,)) for seed in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answered[0], latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rows = []
    for round_ in range(args.rounds):
        for arena in ("1", "0"):
            env = {
                **os.environ,
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "HEADSERVE_ORT_CPU_ARENA": arena,
            }
            log = RESULTS / f"ort_arena_{arena}.log"
            with headserve_server(["--runtime", "onnx"], log, env=env) as (proc, target):
                time.sleep(3)
                before = vmrss_kib(proc.pid) / 1024
                sampler = RssSampler(proc.pid, 0.1)
                sampler.start()
                began = time.perf_counter()
                texts, latencies = burst(target, args.callers, args.seconds)
                elapsed = time.perf_counter() - began
                time.sleep(15)
                after = vmrss_kib(proc.pid) / 1024
                sampler.stop()
                peak = max(kib for _, kib in sampler.samples) / 1024
            row = {
                "round": round_,
                "arena": arena == "1",
                "texts/s": texts / elapsed,
                "p50 ms": percentile(latencies, 0.5),
                "p99 ms": percentile(latencies, 0.99),
                "rss before MB": before,
                "rss peak MB": peak,
                "rss 15 s after MB": after,
            }
            rows.append(row)
            print(
                f"| {round_} | {'on' if row['arena'] else 'off'} | {row['texts/s']:.0f} | "
                f"{row['p50 ms']:.0f} / {row['p99 ms']:.0f} | {before:.0f} | {peak:.0f} | "
                f"{after:.0f} |",
                flush=True,
            )
    write_json(RESULTS / "ort_arena.json", rows)


if __name__ == "__main__":
    main()
