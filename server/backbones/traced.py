"""The packed backbone pass as a TorchScript trace, checked against the model at load.

A model worker runs the backbone's Python (transformers' layers, a few hundred small
calls per pass) holding the GIL between operators, so the event loop's work (gRPC,
tokenizing, replies) and the model's Python queue for each other. A trace runs the
whole pass in C++ without the GIL. Measured on this machine (2 cores, two workers,
`bench/contention.py`, BENCHMARKS.md): with a Python thread of the same process busy
30% of the time beside them, eager workers lost 25% of their speed, traced ones 8%.

The trace is made once, on packed rows (the block-diagonal mask is always applied, so
no input-dependent branch is left out), and used only if its hidden states equal the
model's on packed batches of other shapes; otherwise the model runs as it is. The backbone
makes those inputs (backbone.py); this module knows only the model.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import torch

from .packed_pass import PackedInputs, PackedPass

log = logging.getLogger(__name__)


def trace(
    module: PackedPass,
    *,
    example: PackedInputs,
    checks: Sequence[PackedInputs],
    tolerance: float,
) -> torch.jit.ScriptModule | None:
    """The packed pass (packed_pass.py) traced on `example`, or None (the reason logged)
    unless the trace's states are within `tolerance` of the module's on every input of
    `checks`."""
    module.eval()
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings: the checks below decide
            traced = torch.jit.trace(module, example, check_trace=False)
            error = max(
                float((traced(*inputs).float() - module(*inputs).float()).abs().max())
                for inputs in checks
            )
    except Exception as exc:  # the model does not trace: run it as it is
        log.info("backbone not traced: %r", exc)
        return None
    if error > tolerance:
        log.info("backbone not traced: the trace differs by %.2e", error)
        return None
    return traced
