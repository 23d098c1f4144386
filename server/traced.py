"""The packed backbone pass as a TorchScript trace, checked against the model at load.

A model worker runs the backbone's Python (transformers' layers, a few hundred small
calls per pass) holding the GIL between operators, so the event loop's work (gRPC,
tokenizing, replies) and the model's Python queue for each other. A trace runs the
whole pass in C++ without the GIL. Measured on this machine (2 cores, two workers,
`bench/contention.py`, BENCHMARKS.md): with a Python thread of the same process busy
30% of the time beside them, eager workers lost 25% of their speed, traced ones 8%.

The trace is made once, on packed rows (the block-diagonal mask is always applied, so
no input-dependent branch is left out), and used only if its hidden states equal the
model's on packed batches of other shapes; otherwise the model runs as it is.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from .packing import pack

if TYPE_CHECKING:
    from .backbone import Backbone

log = logging.getLogger(__name__)

_EXAMPLE = [  # lengths that pack several rows per sequence, with padding left over
    "hello world",
    "a slightly longer sentence, with a comma, to trace the packed pass",
    "x",
    "one two three",
    "the model runs once for every head",
]
_CHECKS = [
    ["a single row, alone in its sequence"],
    [f"check sentence number {i} " + "word " * (3 * i) for i in range(9)],
    ["short", "a row that is much longer than the rest of this batch " * 4, "mid length row"],
]


class _PackedPass(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, token_types: bool) -> None:
        super().__init__()
        self.model = model
        self.token_types = token_types

    def forward(
        self,
        ids: torch.Tensor,
        allowed: torch.Tensor,
        types: torch.Tensor,
        positions: torch.Tensor,
    ) -> torch.Tensor:
        if self.token_types:
            out = self.model(
                input_ids=ids, attention_mask=allowed, token_type_ids=types, position_ids=positions
            )
        else:
            out = self.model(input_ids=ids, attention_mask=allowed, position_ids=positions)
        return out.last_hidden_state


def trace(backbone: Backbone, pack_tokens: int) -> torch.jit.ScriptModule | None:
    """The traced packed pass, or None (with the reason logged) if it is not exact."""
    module = _PackedPass(backbone.model, backbone.wants_token_types).eval()
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings: the checks below decide
            example = pack(backbone, backbone.probe_rows(_EXAMPLE), pack_tokens)
            traced = torch.jit.trace(module, example.inputs(backbone.device), check_trace=False)
            error = max(_error(backbone, module, traced, texts, pack_tokens) for texts in _CHECKS)
    except Exception as exc:  # the model does not trace: run it as it is
        log.info("backbone not traced (%s): %r", backbone.config.model_type, exc)
        return None
    tolerance = 1e-4 if backbone.dtype == torch.float32 else 2e-2
    if error > tolerance:
        log.info("backbone not traced: the trace differs by %.2e", error)
        return None
    return traced


def _error(  # type: ignore[no-untyped-def]
    backbone: Backbone, module, traced, texts: Sequence[str], pack_tokens: int
) -> float:
    inputs = pack(backbone, backbone.probe_rows(texts), pack_tokens).inputs(backbone.device)
    return float((traced(*inputs).float() - module(*inputs).float()).abs().max())
