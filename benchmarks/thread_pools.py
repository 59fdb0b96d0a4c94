"""Thread pools of the benchmarks: ``--threads`` exported before numpy loads, and OpenBLAS set through ctypes.

Imported by common.py before numpy: the BLAS/OpenMP variables only size the pools when numpy loads.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def threads_from_argv(argv: Sequence[str], default: int = 2) -> Tuple[int, bool]:
    """``(n, explicit)`` from ``--threads N`` / ``--threads=N`` in ``argv``, else ``(default, False)``."""
    for i, a in enumerate(argv):
        val = argv[i + 1] if a == "--threads" and i + 1 < len(argv) else a[10:] if a.startswith("--threads=") else None
        if val is not None and val.isdigit() and int(val) > 0:
            return int(val), True
    return default, False


def pin_threads_before_numpy() -> None:
    """Export ``--threads`` to the BLAS/OpenMP variables before numpy loads (they size the pools at load time).

    Runs only when a script of this folder is the program (tests that import this module keep their settings);
    ``--threads`` overrides the variables, without it they default to 2 unless the caller already set them.
    """
    if not sys.argv or Path(sys.argv[0]).resolve().parent != Path(__file__).resolve().parent:
        return
    n, explicit = threads_from_argv(sys.argv[1:])
    for var in THREAD_VARS:
        if explicit:
            os.environ[var] = str(n)
        else:
            os.environ.setdefault(var, str(n))



@functools.lru_cache(maxsize=1)
def _openblas_calls() -> Tuple[Optional[Callable[[], int]], Optional[Callable[[int], None]]]:
    """(get, set) of the OpenBLAS that numpy loaded, by ctypes (threadpoolctl's method, without the dependency).

    numpy's wheels bundle ``libscipy_openblas64_`` with prefixed symbols; plain OpenBLAS builds export the bare
    names. ``(None, None)`` when no OpenBLAS is loaded (MKL, Accelerate, no /proc). Cached: the timed loops
    switch the count around single calls, and reading /proc/self/maps costs about a millisecond.
    """
    libs: List[str] = []
    try:
        for line in Path("/proc/self/maps").read_text().splitlines():
            path = line.split()[-1] if line.split() else ""
            if "openblas" in path.lower() and path not in libs:
                libs.append(path)
    except OSError:
        return None, None
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_openblas", "64_"), ("scipy_openblas", "_64_"), ("openblas", "64_"),
                               ("openblas", "")):
            get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
            if get is not None and put is not None:
                get.restype, put.argtypes = ctypes.c_int, [ctypes.c_int]
                return get, put
    return None, None


def blas_threads() -> Optional[int]:
    """Threads numpy's OpenBLAS uses now (None when it cannot be asked): what a result should record."""
    get, _ = _openblas_calls()
    return int(get()) if get is not None else None


@contextlib.contextmanager
def blas_limit(n: int) -> Iterator[bool]:
    """Run the body with ``n`` OpenBLAS threads; yields whether that could be set (False: unchanged pool).

    The numpy baselines use 1: OpenBLAS splits a matvec of > ~2k rows over its threads, and on a busy shared
    machine each such call waits for a descheduled thread (milliseconds), which would time the scheduler.
    """
    get, put = _openblas_calls()
    if get is None or put is None:
        yield False
        return
    before = int(get())
    put(n)
    try:
        yield True
    finally:
        put(before)


def set_threads(n: int) -> None:
    """Pin numpy/BLAS, torch and FAISS thread pools to ``n``.

    The environment variables only act before numpy loads (this module sets them from ``--threads`` at import,
    see :func:`pin_threads_before_numpy`), so OpenBLAS is also set directly, which works after loading too.
    """
    for var in THREAD_VARS:
        os.environ[var] = str(n)  # child processes (memory check, CLI steps) inherit the same pools
    _get, put = _openblas_calls()
    if put is not None:
        put(n)
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:
        pass
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:
        pass
