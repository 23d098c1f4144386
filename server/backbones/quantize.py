"""`--quantize int8`: the packed pass's ONNX export with int8 weights, made once and cached.

ONNX Runtime's dynamic quantization (weights int8 per output channel, activations quantized
per batch at run time) of every MatMul except the feed-forward output projections (the
[intermediate, hidden] weights: their inputs, after GELU, have the outliers that int8 loses
most on), which stay float32. On the packaged MiniLM this keeps mean-pooled cosine against
float32 at 0.996 on average, 0.987 at worst, over 2,000 sentences (bench/int8.py and
BENCHMARKS.md give the speed and the sentiment and MLM figures); quantizing everything is
faster but not accurate enough (0.88 worst).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from .packing import Computed

SCHEME = "int8 (dynamic, per channel; feed-forward outputs float32)"
MIN_COSINE = 0.98  # at load, every check row's mean-pooled vector against float32's


def pooled_cosine(got: Computed, want: Computed) -> torch.Tensor:
    """Per row, the cosine of the mean-pooled states of `got` and `want` (same rows)."""
    vectors = []
    for computed in (got, want):
        mask = computed.mask.unsqueeze(-1).float()
        vectors.append((computed.hidden.float() * mask).sum(1) / mask.sum(1))
    return torch.nn.functional.cosine_similarity(vectors[0], vectors[1], dim=-1)


def ffn_outputs(path: Path, intermediate_size: int) -> list[str]:
    """Names of the MatMul nodes of `path` whose weight is [intermediate_size, hidden]."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    return [
        node.name
        for node in graph.node
        if node.op_type == "MatMul"
        and any(
            len(shapes.get(name, ())) == 2 and shapes[name][0] == intermediate_size
            for name in node.input
        )
    ]


def int8(
    source: Path,
    target: Path,
    *,
    intermediate_size: int,
    per_channel: bool = True,
    keep_ffn_output: bool = True,
    also_keep: Sequence[str] = (),
) -> None:
    """Write the int8 version of the float32 export `source` to `target` (atomically)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    keep = ffn_outputs(source, intermediate_size) if keep_ffn_output else []
    keep += also_keep
    if keep_ffn_output and not ffn_outputs(source, intermediate_size):
        raise ValueError(f"no feed-forward output MatMul of width {intermediate_size} found")
    partial = target.with_suffix(".partial.onnx")
    target.parent.mkdir(parents=True, exist_ok=True)
    logging.disable(logging.WARNING)  # the quantizer logs every node to the root logger
    try:
        quantize_dynamic(
            str(source),
            str(partial),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=keep,
            per_channel=per_channel,
        )
    finally:
        logging.disable(logging.NOTSET)
    partial.replace(target)
