"""read_ahead: ordered results, bounded in-flight calls, per-item errors, inline mode and early stop."""

from __future__ import annotations

import threading
import time
from contextlib import closing

import pytest

from ctglip_sdk.readahead import read_ahead


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_results_come_in_item_order_with_their_items(workers):
    def slow_square(x):
        time.sleep(0.002 * (7 - x % 7))  # later items finish first
        return x * x

    out = [(item, fut.result()) for item, fut in read_ahead(slow_square, range(20), workers)]
    assert out == [(i, i * i) for i in range(20)]


def test_at_most_twice_the_workers_are_in_flight():
    lock, state = threading.Lock(), {"now": 0, "peak": 0, "started": 0}

    def work(x):
        with lock:
            state["now"] += 1
            state["started"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.005)
        with lock:
            state["now"] -= 1
        return x

    seen = []
    for item, fut in read_ahead(work, range(30), workers=2):
        # When the caller holds item k, no call beyond item k + 2 * workers - 1 has been submitted.
        assert state["started"] <= item + 4
        seen.append(fut.result())
    assert seen == list(range(30)) and state["peak"] <= 2


@pytest.mark.parametrize("workers", [0, 2])
def test_an_error_stays_with_its_item_and_the_rest_go_on(workers):
    def fn(x):
        if x == 3:
            raise OSError(f"cannot read item {x}")
        return x

    results = {}
    for item, fut in read_ahead(fn, range(6), workers):
        try:
            results[item] = fut.result()
        except OSError as exc:
            results[item] = str(exc)
    assert results == {0: 0, 1: 1, 2: 2, 3: "cannot read item 3", 4: 4, 5: 5}


def test_inline_mode_runs_each_call_when_its_item_is_reached():
    calls = []
    gen = read_ahead(lambda x: calls.append(x) or x, range(5), workers=0)
    assert calls == []
    next(gen)
    assert calls == [0]


def test_stopping_early_cancels_calls_not_yet_started():
    started = []
    release = threading.Event()

    def fn(x):
        started.append(x)
        release.wait(1.0)
        return x

    with closing(read_ahead(fn, range(100), workers=1)) as ahead:
        item, fut = next(ahead)
        release.set()
        assert item == 0 and fut.result() == 0
    # One worker, two submitted at a time: the pool ran at most the calls submitted before the stop.
    assert len(started) <= 3


def test_negative_workers_are_refused():
    with pytest.raises(ValueError, match="workers"):
        list(read_ahead(lambda x: x, [1], -1))
