"""Objects alive once the model is loaded are left out of later garbage collections."""

from __future__ import annotations

import gc

from headserve.server.core.memory import freeze_loaded_objects


def test_loaded_objects_are_frozen_and_collections_skip_them() -> None:
    loaded = [{"a model's object": i} for i in range(10_000)]
    before = len(gc.get_objects())
    try:
        freeze_loaded_objects()
        assert gc.get_freeze_count() >= len(loaded)
        assert len(gc.get_objects()) < before - len(loaded) // 2  # no longer walked
    finally:
        gc.unfreeze()  # this test process loads and drops models: let them be collected
