"""The packed pass as one module: ids, block-diagonal mask, token types, positions -> states.

Rows laid end to end (packing.py) need the model to attend within each row only and to number
each row's positions from its own start. How a model is told that is its family's business
(`families.Family.call`):

- masked: a 4D mask [sequences, 1, tokens, tokens] in place of the padding mask. transformers
  hands a 4D mask to attention as it is, so an eager attention (which adds the mask to the
  scores) gets it as 0 / the dtype's minimum; SDPA takes it as booleans.
- windowed: models with local (sliding-window) layers (ModernBERT) build a second mask for
  them from the padding mask, which a 4D mask would replace: they get both, as the mapping
  {"full_attention", "sliding_attention"} that their forward takes, the second narrowed to
  |i - j| <= config.sliding_window within each row (transformers' own window rule).
- causal: decoders: the block-diagonal mask narrowed to the tokens at or before each token's
  position, as a decoder attends within each row (unless the config makes its attention
  bidirectional, as EmbeddingGemma's does). A model whose config names each layer's type
  (Qwen2/3, Gemma 2/3: `layer_types`) takes one mask per type, {"full_attention",
  "sliding_attention"}, and picks each layer's; the sliding one is narrowed to the tokens fewer
  than `config.sliding_window` behind (transformers' causal-window rule), or, bidirectional,
  fewer than it away. A model without layer types (Mistral) takes one mask, narrowed to the
  window when its config declares one.
- deberta: DeBERTa reads a 4D mask as [rows, 1, 1, tokens]; its embeddings and encoder are
  called one after the other, the encoder with the 3D mask it expands itself. Its relative
  positions come from token distances, equal within a packed row.

The same module runs eagerly, is traced (traced.py) and is exported to ONNX (onnx_pass.py), so
all three compute one thing; every one is checked against the model's own padded pass at load.
A checkpoint whose rows cannot pack (a DeBERTa with a convolution layer) runs `PaddedPass`,
the model's own pass on padded rows, on ONNX Runtime instead.
"""

from __future__ import annotations

import torch

from .families import Family

PackedInputs = tuple[torch.Tensor, ...]  # ids, block-diagonal mask, token types, positions


class PackedPass(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, family: Family, token_types: bool) -> None:
        super().__init__()
        self.model = model
        self.call = family.call
        self.token_types = token_types
        config = getattr(model, "config")  # noqa: B009 (nn.Module hides it)
        self.additive = getattr(config, "_attn_implementation", None) == "eager"
        self.window = int(getattr(config, "sliding_window", 0) or 0)
        self.layer_types = tuple(sorted(set(getattr(config, "layer_types", None) or ())))
        self.bidirectional = bool(getattr(config, "use_bidirectional_attention", False))
        self.dtype = next(model.parameters()).dtype

    def forward(
        self,
        ids: torch.Tensor,
        allowed: torch.Tensor,
        types: torch.Tensor,
        positions: torch.Tensor,
    ) -> torch.Tensor:
        if self.call == "deberta":
            return self._deberta(ids, allowed, types, positions)
        full = self._mask(allowed)
        mask: torch.Tensor | dict[str, torch.Tensor] = full
        if self.call == "causal":
            mask = self._causal(allowed, positions)
        if self.call == "windowed":
            near = (positions[:, None, :, None] - positions[:, None, None, :]).abs() <= self.window
            mask = {"full_attention": full, "sliding_attention": self._mask(allowed & near)}
        kwargs: dict[str, torch.Tensor | dict[str, torch.Tensor]] = {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": positions,
        }
        if self.token_types:
            kwargs["token_type_ids"] = types
        hidden: torch.Tensor = self.model(**kwargs).last_hidden_state
        return hidden

    def _causal(
        self, allowed: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """A decoder's masks: query i sees key j of its row when j's position <= i's (or any
        j, bidirectional); a sliding layer only those fewer than the window behind (away)."""
        behind = positions[:, None, :, None] - positions[:, None, None, :]
        full = allowed if self.bidirectional else allowed & (behind >= 0)
        local = full
        if self.window:
            local = full & ((behind.abs() if self.bidirectional else behind) < self.window)
        if not self.layer_types:  # one mask for every layer (Mistral's window in it)
            return self._mask(local)
        return {  # the model picks each layer's mask by the layer's type
            kind: self._mask(local if kind == "sliding_attention" else full)
            for kind in self.layer_types
        }

    def _mask(self, allowed: torch.Tensor) -> torch.Tensor:
        if not self.additive:
            return allowed
        blocked = torch.finfo(self.dtype).min
        return torch.zeros(allowed.shape, dtype=self.dtype, device=allowed.device).masked_fill(
            ~allowed, blocked
        )

    def _deberta(
        self,
        ids: torch.Tensor,
        allowed: torch.Tensor,
        types: torch.Tensor,
        positions: torch.Tensor,
    ) -> torch.Tensor:
        model = self.model
        embedded = model.embeddings(  # type: ignore[operator]
            input_ids=ids,
            token_type_ids=types if self.token_types else None,
            position_ids=positions,
        )
        encoded = model.encoder(  # type: ignore[operator]
            embedded, allowed[:, 0], output_hidden_states=False, return_dict=True
        )
        hidden: torch.Tensor = encoded.last_hidden_state
        return hidden


class PaddedPass(torch.nn.Module):
    """The model's own pass on padded rows (ids, padding mask, token types -> states): what
    ONNX Runtime runs for a checkpoint whose rows cannot pack."""

    def __init__(self, model: torch.nn.Module, token_types: bool) -> None:
        super().__init__()
        self.model = model
        self.token_types = token_types

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        kwargs = {"input_ids": ids, "attention_mask": mask}
        if self.token_types:
            kwargs["token_type_ids"] = types
        hidden: torch.Tensor = self.model(**kwargs).last_hidden_state
        return hidden


def packs(model: torch.nn.Module, family: Family) -> str | None:
    """Why `model` cannot run packed rows although its family can (None: it can)."""
    config = getattr(model, "config")  # noqa: B009
    if family.call == "deberta":
        if int(getattr(config, "conv_kernel_size", 0) or 0) > 0:
            return "its convolution layer reads neighbouring tokens across packed rows"
        if int(getattr(model, "z_steps", 0) or 0) > 1:
            return "its z_steps re-run the last layer outside the encoder"
    return None
