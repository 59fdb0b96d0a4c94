"""Training and evaluation of CT-GLIP models (organ-text and abnormality-text contrastive learning)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Loaded on first use: `ctglip_sdk.training.config` must stay importable without the model stack. No module is
# named like a function listed here (evaluate lives in evaluation.py): importing a submodule sets the package
# attribute of its name, which would then hide the function.
_LAZY = {
    "TrainConfig": ("ctglip_sdk.training.config", "TrainConfig"),
    "train": ("ctglip_sdk.training.api", "train"),
    "evaluate": ("ctglip_sdk.training.evaluation", "evaluate"),
    "calibrate": ("ctglip_sdk.training.calibration", "calibrate"),
    "Trainer": ("ctglip_sdk.training.trainer", "Trainer"),
}

__all__ = ["train", "evaluate", "calibrate", "TrainConfig", "Trainer"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'ctglip_sdk.training' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover
    from ctglip_sdk.training.api import train  # noqa: F401
    from ctglip_sdk.training.calibration import calibrate  # noqa: F401
    from ctglip_sdk.training.config import TrainConfig  # noqa: F401
    from ctglip_sdk.training.evaluation import evaluate  # noqa: F401
    from ctglip_sdk.training.trainer import Trainer  # noqa: F401
