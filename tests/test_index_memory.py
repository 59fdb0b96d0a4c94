"""Ingest's allocator setting: applied once per process, never when the user asked to keep their own."""

from __future__ import annotations

import ctypes

from ctglip_sdk.index import memory


def test_mmap_threshold_is_set_once_and_respects_the_users_choice(monkeypatch):
    calls = []

    class FakeLibc:
        def __init__(self, *_a, **_k):
            def mallopt(param, value):
                calls.append((param, value))
                return 1
            self.mallopt = mallopt

    monkeypatch.setattr(ctypes, "CDLL", FakeLibc)
    monkeypatch.setattr(memory, "_MALLOC_TUNED", [])
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.setenv("CTGLIP_KEEP_MALLOC", "1")
    memory.bound_heap_growth()
    assert calls == []                                     # the user keeps glibc's defaults
    monkeypatch.setattr(memory, "_MALLOC_TUNED", [])
    monkeypatch.delenv("CTGLIP_KEEP_MALLOC")
    memory.bound_heap_growth()
    memory.bound_heap_growth()                            # once per process
    assert calls == [(-3, 1 << 20)]
