"""The packed backbone pass on ONNX Runtime (`--runtime onnx`): exported once, cached, checked.

The same pass traced.py traces (ids, block-diagonal mask, token types, positions -> last
hidden states) is exported to ONNX with the batch and sequence axes dynamic, at the model's
real shapes, and run by an ONNX Runtime session with the server's thread plan (intra-op
threads = torch threads per worker, one inter-op thread; the session is shared by the
workers, whose runs proceed at once). The file is cached under
~/.cache/headserve/onnx, named by the backbone's weight fingerprint, so a second start does
not export again. At every load the session's hidden states must equal the model's on the
check batches within the tolerance (1e-4 in float32), or the pass stays with torch and the
reason is logged as a warning.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .traced import PackedInputs, PackedPass

log = logging.getLogger(__name__)

NAMES = ("ids", "allowed", "types", "positions")
AXES = {
    "ids": {0: "sequences", 1: "tokens"},
    "allowed": {0: "sequences", 2: "tokens", 3: "tokens"},
    "types": {0: "sequences", 1: "tokens"},
    "positions": {0: "sequences", 1: "tokens"},
    "hidden": {0: "sequences", 1: "tokens"},
}
OPSET = 17


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "headserve" / "onnx"


class OrtPass:
    """An ONNX Runtime session that runs the packed pass, callable like the trace."""

    def __init__(self, path: Path, threads: int, scheme: str = "") -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.path = path
        self.scheme = scheme  # how the weights are quantized; "": float32
        self.version = ort.__version__
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        # the exporter drops an input the model does not read (DistilBERT's token types)
        self.inputs = {i.name for i in self.session.get_inputs()}

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        feed = {
            name: t.numpy() for name, t in zip(NAMES, inputs, strict=True) if name in self.inputs
        }
        (hidden,) = self.session.run(["hidden"], feed)
        return torch.from_numpy(np.asarray(hidden))


def export(model: torch.nn.Module, token_types: bool, example: PackedInputs, path: Path) -> None:
    """Write the packed pass of `model` to `path` (atomically: a partial file is renamed)."""
    module = PackedPass(model, token_types).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings: the checks at load decide
        torch.onnx.export(
            module,
            example,
            str(partial),
            input_names=list(NAMES),
            output_names=["hidden"],
            dynamic_axes=AXES,
            opset_version=OPSET,
            dynamo=False,
        )
    partial.replace(path)


def load(
    model: torch.nn.Module,
    *,
    token_types: bool,
    example: PackedInputs,
    checks: Sequence[PackedInputs],
    tolerance: float,
    path: Path,
    threads: int,
) -> OrtPass | None:
    """The checked ONNX Runtime pass of `model` (exported to `path` unless it is there), or
    None, with a warning saying why, when it cannot be made or differs from the model."""
    try:
        if not path.is_file():
            export(model, token_types, example, path)
            log.info("backbone exported to ONNX: %s", path)
        else:
            log.info("backbone's ONNX export found in the cache: %s", path)
        ort_pass = OrtPass(path, threads)
        module = PackedPass(model, token_types).eval()
        with torch.inference_mode():
            error = max(
                float((ort_pass(*inputs).float() - module(*inputs).float()).abs().max())
                for inputs in checks
            )
    except Exception as exc:  # no exporter for an operator, a corrupt cache file...
        log.warning("--runtime onnx: not used, the backbone runs on torch: %r", exc)
        return None
    if error > tolerance:
        log.warning(
            "--runtime onnx: not used, the backbone runs on torch: ONNX Runtime's states "
            "differ from the model's by %.2e (more than %.0e)",
            error,
            tolerance,
        )
        return None
    return ort_pass
