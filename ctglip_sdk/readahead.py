"""Ordered, bounded read-ahead: run a function over items in worker threads while the caller consumes results."""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Deque, Iterable, Iterator, Tuple, TypeVar

from ctglip_sdk.errors import ConfigError

__all__ = ["read_ahead"]

T = TypeVar("T")
R = TypeVar("R")


def read_ahead(fn: Callable[[T], R], items: Iterable[T], workers: int, name: str = "ctglip-read"
               ) -> Iterator[Tuple[T, "Future[R]"]]:
    """Yield ``(item, future of fn(item))`` in the order of ``items``, with ``fn`` running ahead in threads.

    At most ``2 * workers`` calls are in flight, so memory does not grow with the number of items. With
    ``workers=0`` each call runs inline when its item is reached. A call's exception is held in its future
    (``future.result()`` raises it), so the caller decides per item whether to stop or record it and go on.
    Why threads: the work is file reads and numpy/torch preprocessing, which release the GIL, while the caller
    runs the network on the previous item. If the caller stops early, calls not yet started are cancelled.

    Example:
        >>> [f.result() for _, f in read_ahead(lambda x: x * x, [1, 2, 3], workers=2)]
        [1, 4, 9]
    """
    if workers < 0:  # checked here, when called, not at the first item: a generator would defer it
        raise ConfigError(f"workers must be >= 0, got {workers}")
    return _read_ahead(fn, items, workers, name)


def _read_ahead(fn: Callable[[T], R], items: Iterable[T], workers: int, name: str
                ) -> Iterator[Tuple[T, "Future[R]"]]:
    if workers == 0:
        for item in items:
            fut: "Future[R]" = Future()
            try:
                fut.set_result(fn(item))
            except Exception as exc:  # noqa: BLE001 - handed to the caller through the future
                fut.set_exception(exc)
            yield item, fut
        return
    window: Deque[Tuple[T, "Future[R]"]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) as pool:
        try:
            for item in items:
                window.append((item, pool.submit(fn, item)))
                while len(window) >= 2 * workers:
                    yield window.popleft()
            while window:
                yield window.popleft()
        finally:  # the caller raised or stopped: do not start what nobody will read
            for _item, pending in window:
                pending.cancel()
