"""headserve head plugin: token classification (named entities) on the shared backbone."""

from .head import TokenClassificationHead, TokenClassificationPlugin

__all__ = ["TokenClassificationHead", "TokenClassificationPlugin"]
