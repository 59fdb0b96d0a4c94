"""ctglip-sdk: CT-GLIP organ-level CT embeddings, report understanding, archive search and zero-shot scoring."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ctglip_sdk._version import __version__
from ctglip_sdk.errors import (
    CheckpointError,
    ConfigError,
    CTGlipError,
    GeometryError,
    IndexStateError,
    InputError,
    QueryError,
)

# Heavy modules (torch, transformers, pydicom, faiss) load on first use so that `import ctglip_sdk` stays fast.
_LAZY_ATTRS = {
    "Volume": ("ctglip_sdk.volume", "Volume"),
    "Segmentation": ("ctglip_sdk.volume", "Segmentation"),
    "load_volume": ("ctglip_sdk.io", "load_volume"),
    "load_segmentation": ("ctglip_sdk.io", "load_segmentation"),
    "discover": ("ctglip_sdk.io", "discover"),
    "AbnormalityDictionary": ("ctglip_sdk.reports", "AbnormalityDictionary"),
    "parse_report": ("ctglip_sdk.reports", "parse_report"),
    "list_models": ("ctglip_sdk.model", "list_models"),
    "register_model_config": ("ctglip_sdk.model", "register_model_config"),
    "create": ("ctglip_sdk.model", "create"),
    "load": ("ctglip_sdk.model", "load"),
    "CTGlipModel": ("ctglip_sdk.model", "CTGlipModel"),
    "OrganEmbeddings": ("ctglip_sdk.model", "OrganEmbeddings"),
    "ZeroShotClassifier": ("ctglip_sdk.model", "ZeroShotClassifier"),
}
_LAZY_MODULES = ("organs", "synth", "reports", "io", "model", "volume", "privacy")

__all__ = [
    "__version__",
    "CTGlipError",
    "InputError",
    "GeometryError",
    "ConfigError",
    "CheckpointError",
    "IndexStateError",
    "QueryError",
    *_LAZY_ATTRS,
    *_LAZY_MODULES,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY_ATTRS:
        module, attr = _LAZY_ATTRS[name]
        value = getattr(importlib.import_module(module), attr)
    elif name in _LAZY_MODULES:
        value = importlib.import_module(f"ctglip_sdk.{name}")
    else:
        raise AttributeError(f"module 'ctglip_sdk' has no attribute {name!r}")
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from ctglip_sdk import io, model, organs, privacy, reports, synth, volume  # noqa: F401
    from ctglip_sdk.io import discover, load_segmentation, load_volume  # noqa: F401
    from ctglip_sdk.model import (  # noqa: F401
        CTGlipModel, OrganEmbeddings, ZeroShotClassifier, create, list_models, load, register_model_config)
    from ctglip_sdk.reports import AbnormalityDictionary, parse_report  # noqa: F401
    from ctglip_sdk.volume import Segmentation, Volume  # noqa: F401
