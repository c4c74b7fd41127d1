"""The process's garbage collector after start-up: the loaded heap frozen, young collections rarer."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from app.resources import GC_YOUNG_THRESHOLD, freeze_startup_heap


@pytest.fixture
def restored_gc() -> Iterator[tuple[int, ...]]:
    before = gc.get_threshold()
    yield before
    gc.set_threshold(*before)


def test_start_up_freezes_the_heap_and_spaces_young_collections(restored_gc: tuple[int, ...]) -> None:
    gc.set_threshold(700, 10, 10)  # CPython's defaults, as a new process has them
    freeze_startup_heap()
    freeze_startup_heap()  # the worker and the API both call it; a second call changes nothing
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 10, 10)
    assert gc.get_freeze_count() > 0


def test_young_collections_run_once_per_threshold_allocations(restored_gc: tuple[int, ...]) -> None:
    freeze_startup_heap()
    collections = 0

    def count(phase: str, info: dict[str, int]) -> None:
        nonlocal collections
        if phase == "start" and info["generation"] == 0:
            collections += 1

    gc.callbacks.append(count)
    try:
        # Tracked objects that stay alive: each counts towards the next young collection.
        kept: list[list[int]] = [[] for _ in range(10 * GC_YOUNG_THRESHOLD)]
    finally:
        gc.callbacks.remove(count)
    assert len(kept) == 10 * GC_YOUNG_THRESHOLD
    assert 5 <= collections <= 11
