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
    trim_heap()


def trim_heap() -> None:
    """Ask glibc to return the free pages of every malloc arena (a no-op elsewhere).

    A large decode's buffers, once freed, stay in the arena of the thread that made them
    (glibc raises its mmap threshold after such a free), so that each decoding thread keeps
    its own high-water mark: a few threads' worth of gigabytes after large images."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def freeze_loaded_objects() -> None:
    """Collect, then exempt every object alive now from later garbage collections.

    A served process holds some 370,000 objects from torch, transformers and the heads,
    made once and kept for its life. A full collection walked them all: 171 ms with the
    GIL held, a stall of every call in flight (it showed in the overload bench as refusals
    slow at p99). Frozen, they are skipped; a full collection takes microseconds. For a
    server process only: objects frozen here are never collected, so a process that loads
    and drops models (tests) must not call it.
    """
    gc.collect()
    gc.freeze()
