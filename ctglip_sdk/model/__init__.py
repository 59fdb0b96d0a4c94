"""CT-GLIP model: config and registry, dense 3-D encoders with organ mask pooling, text tower, zero-shot."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ctglip_sdk.model.config import (
    SCHEMA_VERSION,
    CTGlipConfig,
    PreprocessConfig,
    ProjectionConfig,
    TextConfig,
    VisionConfig,
)
from ctglip_sdk.model.registry import create, get_config, list_models, load, model_info, register_model_config

# torch/transformers load on first use, so that `ctglip models` and config checks stay fast.
_LAZY = {
    "CTGlipModel": "ctglip_sdk.model.modeling",
    "OrganEmbeddings": "ctglip_sdk.model.modeling",
    "PreparedStudy": "ctglip_sdk.model.preprocess",
    "ZeroShotClassifier": "ctglip_sdk.model.zeroshot",
    "Detection": "ctglip_sdk.model.zeroshot",
    "OrganIdentification": "ctglip_sdk.model.zeroshot",
    "train_tokenizer": "ctglip_sdk.model.text",
    "default_corpus": "ctglip_sdk.model.text",
}

__all__ = [
    "SCHEMA_VERSION",
    "CTGlipConfig",
    "VisionConfig",
    "TextConfig",
    "ProjectionConfig",
    "PreprocessConfig",
    "create",
    "load",
    "list_models",
    "model_info",
    "get_config",
    "register_model_config",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ctglip_sdk.model' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover
    from ctglip_sdk.model.modeling import CTGlipModel, OrganEmbeddings  # noqa: F401
    from ctglip_sdk.model.preprocess import PreparedStudy  # noqa: F401
    from ctglip_sdk.model.text import default_corpus, train_tokenizer  # noqa: F401
    from ctglip_sdk.model.zeroshot import Detection, OrganIdentification, ZeroShotClassifier  # noqa: F401
