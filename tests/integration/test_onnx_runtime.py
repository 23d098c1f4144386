"""--runtime onnx: the packed pass is exported once per backbone (cached by its weights'
fingerprint), checked against torch at every load, and refused with a warning (torch runs)
when the cached file is broken or computes something else; --quantize int8 on it. Exactness of
every head with it: test_conformance.py."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from checkpoints import minilm_dir
from transformers import AutoConfig, AutoModel

from headserve.plugins.backbones import LoadOptions
from headserve.server.backbones import quantize
from headserve.server.backbones.backbone import TextBackbone

LOGGER = "headserve.server.backbones.onnx_pass"


def _load(folder: Path, cache: Path) -> TextBackbone:
    return TextBackbone.load(folder, device="cpu", runtime="onnx", onnx_cache=cache)


def test_the_export_is_cached_and_a_second_start_reuses_it(bert, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger=LOGGER)
    first = _load(bert.backbone, tmp_path)
    assert first.runtime.startswith("onnxruntime") and first.traced is None
    (exported,) = tmp_path.glob("*.onnx")
    assert exported.name.startswith("bert-") and "exported to ONNX" in caplog.text
    stamp = exported.stat().st_mtime_ns
    caplog.clear()
    second = _load(bert.backbone, tmp_path)
    assert second.runtime.startswith("onnxruntime")
    assert exported.stat().st_mtime_ns == stamp and "found in the cache" in caplog.text
    rows = second.rows_of(["the same states", "from either runtime, row by row"])
    with torch.inference_mode():
        got, want = second.run(rows), TextBackbone.load(bert.backbone, device="cpu").run(rows)
    keep = got.mask.bool()
    assert float((got.hidden[keep] - want.hidden[keep]).abs().max()) < 1e-4


def test_the_arena_given_back_when_idle_leaves_the_pass_as_it_was(bert, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """release_memory (run when the server goes idle after a busy spell) shrinks ONNX
    Runtime's arena with one tiny run; the pass computes the same afterwards."""
    backbone = _load(bert.backbone, tmp_path)
    assert backbone.ort is not None
    rows = backbone.rows_of([" ".join(["word"] * n) for n in (3, 40, 90)])
    with torch.inference_mode():
        before = backbone.run(rows).hidden.clone()
        backbone.release_memory()
        after = backbone.run(rows).hidden
    assert torch.equal(before, after)


def _other_bert(folder: Path, like: Path) -> Path:
    """A BERT of the same shape with other random weights (so another fingerprint)."""
    torch.manual_seed(123)
    AutoModel.from_config(AutoConfig.from_pretrained(like)).save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        if (like / name).is_file():
            shutil.copy(like / name, folder / name)
    return folder


def test_a_cached_file_that_computes_something_else_is_refused(
    bert, tmp_path: Path, caplog
) -> None:  # type: ignore[no-untyped-def]
    other = _other_bert(tmp_path / "other", bert.backbone)
    cache = tmp_path / "cache"
    _load(bert.backbone, cache)
    (theirs,) = cache.glob("*.onnx")
    mine = _load(other, tmp_path / "probe")  # to learn the file name the other one uses
    (name,) = (tmp_path / "probe").glob("*.onnx")
    assert mine.runtime.startswith("onnxruntime") and name.name != theirs.name
    shutil.copy(theirs, cache / name.name)  # the other backbone's export under this one's name
    caplog.set_level(logging.WARNING, logger=LOGGER)
    refused = _load(other, cache)
    assert refused.ort is None and refused.runtime == "torch (traced)"
    assert "differ from the model's" in caplog.text


def test_a_broken_cached_file_is_refused_and_torch_runs(bert, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    _load(bert.backbone, tmp_path)
    (exported,) = tmp_path.glob("*.onnx")
    exported.write_bytes(b"not an onnx model")
    caplog.set_level(logging.WARNING, logger=LOGGER)
    backbone = _load(bert.backbone, tmp_path)
    assert backbone.ort is None and "not used, the backbone runs on torch" in caplog.text


@pytest.mark.parametrize("dtype", ["float16"])
def test_onnx_is_float32_on_the_cpu_only(bert, tmp_path: Path, caplog, dtype: str) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING)
    backbone = TextBackbone.load(
        bert.backbone, device="cpu", dtype=dtype, runtime="onnx", onnx_cache=tmp_path
    )
    assert backbone.ort is None and "float32 only" in caplog.text


SENTENCES = [  # varied lengths and registers; the int8 check at load uses other texts
    "The plot is thin, but the acting carries it.",
    "An utterly charming, funny and heartfelt film that I would happily watch again.",
    "Boring.",
    "It's the kind of movie that makes you wonder why anyone greenlit it in the first place.",
    "A masterpiece of quiet, patient storytelling.",
    "The soundtrack is great; everything else is forgettable.",
    "what a waste of two hours",
    "Visually stunning, emotionally hollow, and at least twenty minutes too long for its story.",
]


def _pooled(backbone: TextBackbone, texts: list[str]) -> torch.Tensor:
    with torch.inference_mode():
        computed = backbone.run(backbone.rows_of(texts))
    mask = computed.mask.unsqueeze(-1).float()
    return torch.nn.functional.normalize((computed.hidden * mask).sum(1) / mask.sum(1), dim=-1)


def test_int8_keeps_the_packaged_models_vectors_and_is_cached(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger="headserve.server.backbones.backbone")
    exact = _load(minilm_dir(), tmp_path)
    int8 = TextBackbone.load(
        minilm_dir(), device="cpu", runtime="onnx", quantize="int8", onnx_cache=tmp_path
    )
    assert "int8" in int8.runtime and "int8" not in exact.runtime
    (quantized,) = tmp_path.glob("*-int8.onnx")
    assert "quantized to int8" in caplog.text
    cosine = (_pooled(int8, SENTENCES) * _pooled(exact, SENTENCES)).sum(-1)
    # the bar over 2,000 sentences is 0.995 mean and 0.98 worst (bench/int8.py)
    assert float(cosine.min()) >= 0.98 and float(cosine.mean()) >= 0.99
    assert float(cosine.min()) < 0.99999  # int8 weights really ran: not float32's vectors
    stamp = quantized.stat().st_mtime_ns
    again = TextBackbone.load(
        minilm_dir(), device="cpu", runtime="onnx", quantize="int8", onnx_cache=tmp_path
    )
    assert "int8" in again.runtime and quantized.stat().st_mtime_ns == stamp


def test_int8_that_fails_its_check_at_load_stays_float32(
    tmp_path: Path, caplog, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(quantize, "MIN_COSINE", 1.0001)  # no quantized row can reach it
    caplog.set_level(logging.WARNING, logger="headserve.server.backbones.backbone")
    backbone = TextBackbone.load(
        minilm_dir(), device="cpu", runtime="onnx", quantize="int8", onnx_cache=tmp_path
    )
    assert backbone.ort is not None and backbone.ort.scheme == ""
    assert "int8" not in backbone.runtime and "not applied" in caplog.text


def test_int8_without_onnx_runtime_is_refused(bert) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="--quantize int8 runs on ONNX Runtime"):
        TextBackbone.load(bert.backbone, device="cpu", runtime="torch", quantize="int8")
    with pytest.raises(ValueError, match="--quantize 'int4'"):
        TextBackbone.load(bert.backbone, device="cpu", quantize="int4")


def test_image_backbones_refuse_quantize() -> None:
    from headserve.server.backbones.efficientnet import load

    with pytest.raises(ValueError, match="--quantize int8: image backbones"):
        load("efficientnet-lite0", LoadOptions(quantize="int8"))
