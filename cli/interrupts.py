"""Interrupts: Ctrl-C (SIGINT) exits 130 and SIGTERM 143, each with one line instead of click's "Aborted!".

Exit codes follow the shell's 128 + signal number, so a batch pipeline can tell an interrupted run from a user
error (1). During writes, SIGTERM is turned into an exception like Ctrl-C, so that the library's ``finally``
blocks run: an ingest run is then recorded as 'interrupted' instead of staying 'running' forever.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from types import FrameType
from typing import Iterator, Optional

__all__ = ["INTERRUPTED_EXIT", "TERMINATED_EXIT", "Terminated", "sigterm_as_interrupt", "exit_code", "message"]

INTERRUPTED_EXIT = 128 + int(signal.SIGINT)  # 130
TERMINATED_EXIT = 128 + int(signal.SIGTERM)  # 143


class Terminated(KeyboardInterrupt):
    """SIGTERM raised as an exception. A KeyboardInterrupt subclass, so code that cleans up after Ctrl-C (and
    lets other exceptions through ``except Exception``) treats both alike."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread; the old handler comes back after.

    Outside the main thread Python cannot install handlers, so the block then runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_signum: int, _frame: Optional[FrameType]) -> None:
        # Ignore repeats: a second SIGTERM must not cut short the cleanup that the first one started (an
        # orchestrator that loses patience sends SIGKILL, which no handler can delay).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_code(exc: KeyboardInterrupt) -> int:
    """130 for Ctrl-C, 143 for SIGTERM."""
    return TERMINATED_EXIT if isinstance(exc, Terminated) else INTERRUPTED_EXIT


def message(exc: KeyboardInterrupt) -> str:
    """The one line printed on stderr: what stopped the command, and the command's own hint when it gave one."""
    head = "Terminated (SIGTERM)" if isinstance(exc, Terminated) else "Interrupted"
    detail = str(exc).strip()
    return f"{head}: {detail}" if detail else head
