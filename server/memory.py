"""Giving freed memory back to the operating system."""

from __future__ import annotations

import ctypes
import gc


def release_freed_memory() -> None:
    """Collect garbage and ask glibc to return free heap pages (a no-op elsewhere).

    Used after loading (the heads' discarded checkpoint copies) and when the server goes
    idle after a busy spell (a burst's working memory), so resident size follows the load.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
