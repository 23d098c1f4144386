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

from .packed_pass import PackedInputs, PackedPass, PaddedPass

log = logging.getLogger(__name__)

NAMES = ("ids", "allowed", "types", "positions")
AXES = {
    "ids": {0: "sequences", 1: "tokens"},
    "allowed": {0: "sequences", 2: "tokens", 3: "tokens"},
    "types": {0: "sequences", 1: "tokens"},
    "positions": {0: "sequences", 1: "tokens"},
    "hidden": {0: "sequences", 1: "tokens"},
}
# The padded pass (a model whose rows cannot pack): ids, padding mask, token types
PADDED_NAMES = ("ids", "mask", "types")
PADDED_AXES = {name: {0: "rows", 1: "tokens"} for name in (*PADDED_NAMES, "hidden")}
OPSET = 17
PASS_VERSION = 5  # in the cached file's name: a pass that changed is exported again


ARENA_VARIABLE = "HEADSERVE_ORT_CPU_ARENA"


def cpu_arena() -> bool:
    """Whether sessions use ONNX Runtime's CPU memory arena: yes unless
    $HEADSERVE_ORT_CPU_ARENA is 0. Without it every run maps and faults in its buffers anew:
    a burst of long texts ran 40% slower (bench/ort_arena.py). With it, the arena keeps what
    the largest batch took until `OrtPass.shrink` gives it back, when the server goes idle."""
    return os.environ.get(ARENA_VARIABLE, "1") != "0"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "headserve" / "onnx"


class OrtPass:
    """An ONNX Runtime session that runs the packed pass (or, `packed` False, the padded
    one), callable like the trace."""

    def __init__(self, path: Path, threads: int, scheme: str = "", packed: bool = True) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.enable_cpu_mem_arena = cpu_arena()
        self.path = path
        self.scheme = scheme  # how the weights are quantized; "": float32
        self.packed = packed
        self.names = NAMES if packed else PADDED_NAMES
        self.version = ort.__version__
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        # the exporter drops an input the model does not read (DistilBERT's token types)
        self.inputs = {i.name for i in self.session.get_inputs()}

    def shrink(self) -> None:
        """Hand back the arena's memory beyond its first chunk: one tiny run with ONNX
        Runtime's arena shrinkage on (what a burst's largest batches took stays otherwise)."""
        import onnxruntime as ort

        options = ort.RunOptions()
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        feed: dict[str, np.ndarray] = {}
        for given in self.session.get_inputs():
            shape = [d if isinstance(d, int) else 1 for d in given.shape]
            dtype = {"tensor(bool)": np.bool_, "tensor(float)": np.float32}.get(
                given.type, np.int64
            )
            feed[given.name] = np.zeros(shape, dtype=dtype)
        self.session.run(["hidden"], feed, options)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        feed = {
            name: t.numpy()
            for name, t in zip(self.names, inputs, strict=True)
            if name in self.inputs
        }
        (hidden,) = self.session.run(["hidden"], feed)
        return torch.from_numpy(np.asarray(hidden))


def export(
    module: PackedPass | PaddedPass, example: PackedInputs, path: Path, packed: bool = True
) -> None:
    """Write the pass to `path` (atomically: a partial file is renamed)."""
    module.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings: the checks at load decide
        torch.onnx.export(
            module,
            example,
            str(partial),
            input_names=list(NAMES if packed else PADDED_NAMES),
            output_names=["hidden"],
            dynamic_axes=AXES if packed else PADDED_AXES,
            opset_version=OPSET,
            dynamo=False,
        )
    partial.replace(path)


def load(
    module: PackedPass | PaddedPass,
    *,
    example: PackedInputs,
    checks: Sequence[PackedInputs],
    tolerance: float,
    path: Path,
    threads: int,
) -> OrtPass | None:
    """The checked ONNX Runtime pass of `module` (exported to `path` unless it is there), or
    None, with a warning saying why, when it cannot be made or differs from the module. A
    padded pass is compared on real tokens only (padding's states mean nothing)."""
    packed = isinstance(module, PackedPass)
    try:
        if not path.is_file():
            export(module, example, path, packed)
            log.info("backbone exported to ONNX: %s", path)
        else:
            log.info("backbone's ONNX export found in the cache: %s", path)
        ort_pass = OrtPass(path, threads, packed=packed)
        module.eval()
        with torch.inference_mode():
            error = max(_difference(ort_pass, module, inputs, packed) for inputs in checks)
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


def _difference(
    ort_pass: OrtPass, module: torch.nn.Module, inputs: PackedInputs, packed: bool
) -> float:
    got, want = ort_pass(*inputs).float(), module(*inputs).float()
    if not packed:
        real = inputs[1].bool()
        got, want = got[real], want[real]
    return float((got - want).abs().max())
