"""What a training run records about itself: the host it ran on and its peak memory after each stage."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any, Dict, Optional

import torch

__all__ = ["host_info", "peak_rss_mb", "MemoryLog"]


def _cpu_model() -> str:
    """The CPU's marketing name ("Intel(R) Xeon(R) Processor", "AMD EPYC ..."), or platform's best guess."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine()


def host_info() -> Dict[str, Any]:
    """CPU, instruction set torch dispatches to, core and thread counts, library versions.

    Why it is recorded: the same command, seed and data give bit-identical weights on one kind of CPU, but
    other weights on another (the convolution kernels torch picks, and so the order of float additions,
    depend on the CPU), so a run's summary says which host produced it (docs/training.md, "Reproducibility").
    """
    info: Dict[str, Any] = {"cpu": _cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "torch": torch.__version__, "python": platform.python_version(),
                            "platform": platform.platform(terse=True)}
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
    return info


def _vm_hwm_mb() -> Optional[float]:
    """Linux: this process's own peak resident size (``VmHWM``), or None where /proc is missing."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 2 ** 10, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_mb(children: bool = False) -> Optional[float]:
    """High-water mark of the resident set size in MiB: this process, or (``children``) the largest of its
    finished child processes (DataLoader workers). None where neither /proc nor ``resource`` exists (Windows).

    Why ``VmHWM`` first: ``getrusage``'s ``ru_maxrss`` survives ``exec``, so a process started by a large
    parent (a test runner, a notebook) reports the parent's size at the fork as its own peak. A child's
    figure counts the pages it shares with the parent it was forked from, as any RSS reading does.
    """
    if not children:
        hwm = _vm_hwm_mb()
        if hwm is not None:
            return hwm
    try:
        import resource
    except ImportError:
        return None
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    raw = resource.getrusage(who).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return round(raw / (2 ** 20 if sys.platform == "darwin" else 2 ** 10), 1)


class MemoryLog:
    """Peak memory read after each stage of a run.

    The values are high-water marks since the process started, so they never fall; the first stage at which
    the value jumps is the stage that set the peak. ``cuda`` is torch's peak allocation on the run's GPU.

    Example:
        >>> mem = MemoryLog()
        >>> mem.mark("cache")
        >>> sorted(mem.as_dict())
        ['stages_mb', 'workers_mb']
    """

    def __init__(self, device: Optional[torch.device] = None) -> None:
        self.device = device if device is not None and device.type == "cuda" else None
        self.stages: Dict[str, Optional[float]] = {}
        self.cuda: Dict[str, float] = {}

    def mark(self, stage: str) -> None:
        """Record the peaks reached by the end of ``stage``."""
        self.stages[stage] = peak_rss_mb()
        if self.device is not None:
            self.cuda[stage] = round(torch.cuda.max_memory_allocated(self.device) / 2 ** 20, 1)

    def as_dict(self) -> Dict[str, Any]:
        """``stages_mb`` (this process), ``workers_mb`` (largest finished child), ``cuda_mb`` on a GPU."""
        out: Dict[str, Any] = {"stages_mb": dict(self.stages), "workers_mb": peak_rss_mb(children=True)}
        if self.device is not None:
            out["cuda_mb"] = dict(self.cuda)
        return out
