"""--runtime onnx: the packed pass is exported once per backbone (cached by its weights'
fingerprint), checked against torch at every load, and refused with a warning (torch runs)
when the cached file is broken or computes something else. Exactness of every head with it:
test_conformance.py."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModel

from headserve.server.backbone import TextBackbone

LOGGER = "headserve.server.onnx_pass"


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
