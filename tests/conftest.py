"""Shared, generic pytest fixtures (keep domain-specific fixtures in the test files that use them)."""

from __future__ import annotations

import tracemalloc
from contextlib import contextmanager
from typing import Callable, Iterator, List

import pytest


@pytest.fixture
def peak_alloc() -> Callable:
    """Context manager measuring the peak Python/numpy allocation (bytes) inside a ``with`` block.

    Example::

        with peak_alloc() as peak:
            do_work()
        assert peak[0] < 50e6
    """

    @contextmanager
    def measure() -> Iterator[List[int]]:
        result = [0]
        started = not tracemalloc.is_tracing()
        if started:
            tracemalloc.start()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        try:
            yield result
        finally:
            result[0] = tracemalloc.get_traced_memory()[1] - base
            if started:
                tracemalloc.stop()

    return measure
