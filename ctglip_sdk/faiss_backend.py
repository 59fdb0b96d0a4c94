"""Import FAISS once, tell which build is installed (faiss-cpu or faiss-gpu) and whether GPUs can be used."""

from __future__ import annotations

import logging
from functools import lru_cache
from importlib import metadata
from types import ModuleType
from typing import Dict, Optional

from ctglip_sdk.errors import ConfigError

__all__ = ["import_faiss", "gpu_count", "backend_info"]

log = logging.getLogger(__name__)

_FIX = ("faiss-cpu and faiss-gpu install into the same 'faiss' folder and break each other; repair with "
        "`pip uninstall -y faiss-cpu faiss-gpu && pip install faiss-cpu` (or `make faiss-gpu` for the GPU "
        "build, see docs/install.md)")


@lru_cache(maxsize=1)
def import_faiss() -> ModuleType:
    """Import faiss, turning a broken or half-installed package into a ConfigError that says how to fix it."""
    try:
        import faiss  # noqa: PLC0415 - heavy, imported lazily on purpose
        faiss.IndexFlatIP  # a half-removed package imports but lacks its classes
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"faiss cannot be imported ({exc}); {_FIX}") from exc
    return faiss


def _dist_version(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def gpu_count() -> int:
    """Number of GPUs FAISS can use: 0 with faiss-cpu, or with faiss-gpu on a machine without a GPU."""
    faiss = import_faiss()
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def backend_info() -> Dict[str, object]:
    """Which FAISS distributions are installed and how many GPUs are usable (for `ctglip doctor`)."""
    cpu, gpu = _dist_version("faiss-cpu"), _dist_version("faiss-gpu")
    info: Dict[str, object] = {"faiss_cpu": cpu, "faiss_gpu": gpu}
    if cpu and gpu:
        info["warning"] = "both faiss-cpu and faiss-gpu are installed; " + _FIX
    try:
        info["faiss_version"] = getattr(import_faiss(), "__version__", None)
        info["gpus"] = gpu_count()
    except ConfigError as exc:
        info["error"] = str(exc)
        info["gpus"] = 0
    return info
