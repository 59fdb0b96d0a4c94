"""What a training run records about itself: its host, peak memory, training data and initial model's options."""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

from ctglip_sdk.errors import CheckpointError

__all__ = ["host_info", "peak_rss_mb", "MemoryLog", "json_safe", "row_key", "DATA_FILE", "data_record",
           "data_differences", "INIT_FILE", "init_options", "read_record"]

#: OUT/train_data.json: which archive and which ordered training rows the run trains on, so that a --resume over
#: other data (another archive, a study gone or added, a report edited) is refused instead of silently continuing
#: at a data position that points into another permutation.
DATA_FILE = "train_data.json"
#: OUT/model_init/init_options.json: the options that built model_init/, so that a --resume with another model,
#: seed or training corpus does not reuse a stale one.
INIT_FILE = "init_options.json"


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


# ------------------------------------------------------------------ run records
def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None: strict JSON parsers refuse a bare NaN.

    Example:
        >>> json_safe({"loss": float("nan"), "steps": [1.5, float("inf")]})
        {'loss': None, 'steps': [1.5, None]}
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _rel(path: Any, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).as_posix()


def row_key(record: Any, root: Any) -> str:
    """A short hash that names one manifest row: study, series and its image, mask and report paths (relative to
    the archive, so a moved archive keeps its keys). A hash, because archives name folders after patients.

    Why per row and not per study: two series of one study are two rows, trained on each on its own; one
    unreadable series must not take its study's other series out of a resumed run.
    """
    base = Path(root).resolve()
    parts = [record.study_uid, record.series_uid, _rel(record.image, base), _rel(record.mask, base),
             _rel(record.report, base)]
    return hashlib.blake2b("\x1f".join(parts).encode("utf-8"), digest_size=8).hexdigest()


def data_record(archive: Any, records: Sequence[Any], texts: Sequence[Any]) -> Dict[str, Any]:
    """What identifies a run's training data: the archive's resolved path, the ordered row keys and a digest of
    the reports (labels and tokenizer come from them). No identifier is stored in clear."""
    reports = hashlib.sha256()
    for t in texts:
        reports.update(hashlib.sha256(t.report.encode("utf-8")).digest())
    rows = [row_key(r, archive) for r in records]
    return {"schema": 1, "archive": os.fspath(Path(archive).resolve()), "n_rows": len(rows), "rows": rows,
            "reports_sha256": reports.hexdigest()}


def _named(keys: List[str], names: Mapping[str, str]) -> str:
    shown = [names.get(k, f"row {k}") for k in keys[:3]]
    return ", ".join(shown) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")


def data_differences(old: Mapping[str, Any], new: Mapping[str, Any], names: Mapping[str, str],
                     partial: bool = False) -> List[str]:
    """How ``new`` (this resume's data) differs from ``old`` (the run's record); empty when they are the same.

    ``partial``: ``new`` holds the candidate rows before the cache build (some may still be left out), so only
    rows of the run that are missing now count. ``names`` maps a row key to words naming it (e.g. its study).
    """
    try:
        old_rows = [str(k) for k in old["rows"]]
    except (KeyError, TypeError):
        return ["the record of the run's data is incomplete"]
    have = set(new["rows"])
    missing = [k for k in old_rows if k not in have]
    out = []
    if missing:
        out.append(f"{len(missing)} of the run's {len(old_rows)} training rows {'is' if len(missing) == 1 else 'are'} "
                   "not in this resume's data "
                   f"({_named(missing, names)})")
    if partial:
        if missing and old.get("archive") != new["archive"]:
            out.insert(0, f"the run trained on archive {old.get('archive')}, this resume reads {new['archive']}")
        return out
    known = set(old_rows)
    added = [k for k in new["rows"] if k not in known]
    if added:
        out.append(f"{len(added)} training row(s) are new ({_named(added, names)})")
    if not out and old_rows != list(new["rows"]):
        out.append("the training rows are the same but in another order (was the manifest rewritten?)")
    if not out and old.get("reports_sha256") != new["reports_sha256"]:
        out.append("the reports of the training rows were changed (labels and tokenizer come from them)")
    if out and old.get("archive") != new["archive"]:
        out.insert(0, f"the run trained on archive {old.get('archive')}, this resume reads {new['archive']}")
    return out


def init_options(model: str, seed: int, corpus: Sequence[str]) -> Dict[str, Any]:
    """The options model_init/ is built from: the model asked for (a path resolved), the seed and a digest of
    the tokenizer's training corpus."""
    path = Path(model)
    digest = hashlib.sha256()
    for doc in corpus:
        digest.update(hashlib.sha256(doc.encode("utf-8")).digest())
    return {"model": model, "model_path": os.fspath(path.resolve()) if path.exists() else None, "seed": seed,
            "corpus_sha256": digest.hexdigest()}


def read_record(path: Path) -> Optional[Dict[str, Any]]:
    """A run-folder JSON record, None when absent; a damaged one is a CheckpointError naming it."""
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"cannot resume: {path.name} is damaged ({type(exc).__name__}); delete it to resume "
                              "without its check, or start a new --out folder", path=path) from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"cannot resume: {path.name} holds a {type(doc).__name__}, not an object", path=path)
    return doc
