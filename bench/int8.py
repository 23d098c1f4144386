"""int8 quantization of the packed pass on ONNX Runtime: speed and quality against float32.

    .venv/bin/python bench/int8.py [--sentences 2000]

The packaged MiniLM's packed pass (the server's own ONNX export, --runtime onnx) is quantized
with ONNX Runtime's dynamic quantization in several ways; each runs the same 2,000 VADER
sentences in length-sorted batches of 32 through the server's own backbone code, and is
compared with float32 on the mean-pooled, normalized vectors (the packaged model's pooling):
cosine per sentence (mean and worst) and sentences/s. The issue's bar: mean >= 0.995, worst
>= 0.98. Written to bench/results/int8.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import onnx
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic

sys.path.insert(0, str(Path(__file__).parent))
from data import sentences  # noqa: E402

from headserve.server.backbone import TextBackbone, default_model_dir  # noqa: E402
from headserve.server.onnx_pass import OrtPass  # noqa: E402

HERE = Path(__file__).resolve().parent
VARIANTS = {  # options of quantize_dynamic; "keep": MatMul nodes left in float32, by name
    "dynamic, per tensor (naive)": {},
    "dynamic, per channel": {"per_channel": True},
    "dynamic, per channel, reduced range": {"per_channel": True, "reduce_range": True},
    "dynamic, per channel, FFN output layers in float": {
        "per_channel": True,
        "keep": lambda name: name.endswith("/output/dense/MatMul") and "attention" not in name,
    },
    "dynamic, per channel, first and last layer in float": {
        "per_channel": True,
        "keep": lambda name: "/layer.0/" in name or "/layer.5/" in name,
    },
}


def vectors(backbone: TextBackbone, texts: list[str]) -> tuple[torch.Tensor, float]:
    """Normalized mean-pooled vectors of `texts` (length-sorted batches of 32); seconds."""
    rows = backbone.rows_of(texts)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].input_ids))
    out = torch.zeros(len(rows), backbone.hidden_size)
    started = time.perf_counter()
    with torch.inference_mode():
        for k in range(0, len(order), 32):
            chunk = order[k : k + 32]
            computed = backbone.run([rows[i] for i in chunk])
            mask = computed.mask.unsqueeze(-1).float()
            pooled = (computed.hidden.float() * mask).sum(1) / mask.sum(1)
            out[chunk] = torch.nn.functional.normalize(pooled, dim=-1)
    return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=2000)
    args = parser.parse_args()
    texts = sentences(args.sentences)
    backbone = TextBackbone.load(default_model_dir(), device="cpu", runtime="onnx", threads=2)
    assert backbone.ort is not None
    fp32_path = backbone.ort.path
    want, seconds = vectors(backbone, texts)
    report = {"float32": {"sentences_s": round(len(texts) / seconds, 1)}}
    print("float32", report["float32"], flush=True)
    graph = onnx.load(str(fp32_path)).graph
    matmuls = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    for name, variant in VARIANTS.items():
        options = dict(variant)
        keep = options.pop("keep", None)
        path = HERE / ".cache" / "int8" / (name.replace(" ", "_").replace(",", "") + ".onnx")
        path.parent.mkdir(parents=True, exist_ok=True)
        quantize_dynamic(
            str(fp32_path),
            str(path),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
            nodes_to_exclude=[n for n in matmuls if keep is not None and keep(n)],
            **options,
        )
        backbone.ort = OrtPass(path, 2)
        got, seconds = vectors(backbone, texts)
        cosine = (got * want).sum(-1)
        report[name] = {
            "sentences_s": round(len(texts) / seconds, 1),
            "speed_vs_float32": round(len(texts) / seconds / report["float32"]["sentences_s"], 2),
            "cosine_mean": round(float(cosine.mean()), 4),
            "cosine_worst": round(float(cosine.min()), 4),
            "meets_bar": bool(cosine.mean() >= 0.995 and cosine.min() >= 0.98),
        }
        print(name, report[name], flush=True)
    out = HERE / "results" / "int8.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
