"""Model registry (JSON configs shipped in the package, user-registered configs, bundled weights) and factories."""

from __future__ import annotations

import json
import logging
import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, Optional, Union

from ctglip_sdk.errors import CheckpointError, ConfigError
from ctglip_sdk.model.config import CTGlipConfig, merge_dicts

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ctglip_sdk.model.modeling import CTGlipModel

__all__ = ["list_models", "model_info", "get_config", "register_model_config", "create", "load"]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
_USER_CONFIGS: Dict[str, CTGlipConfig] = {}
_USER_WEIGHTS: Dict[str, Path] = {}


def _package_dir(sub: str) -> Optional[Path]:
    base = resources.files("ctglip_sdk.model").joinpath(sub)
    return Path(str(base)) if base.is_dir() else None


def _builtin_configs() -> Dict[str, Path]:
    folder = _package_dir("configs")
    return {p.stem: p for p in sorted(folder.glob("*.json"))} if folder else {}


def _bundled_weights() -> Dict[str, Path]:
    """Model folders shipped under ``ctglip_sdk/model/weights/<name>/`` (config.json + model.safetensors)."""
    folder = _package_dir("weights")
    found = {}
    if folder:
        for d in sorted(folder.iterdir()):
            if (d / "config.json").is_file() and (d / "model.safetensors").is_file():
                found[d.name] = d
    found.update(_USER_WEIGHTS)
    return found


def _read_config_file(path: Path) -> CTGlipConfig:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read model config: {exc}", path=path) from None
    if isinstance(data, dict) and "format" in data and "config" in data:  # a saved model's config.json
        data = data["config"]
    try:
        return CTGlipConfig.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(exc.reason, path=path) from None


def list_models(with_info: bool = False) -> List[Any]:
    """Names of registered configs and bundled weights (sorted), or with ``with_info`` one dict per name.

    Example:
        >>> "ctglip-tiny" in list_models()
        True
    """
    names = sorted(set(_builtin_configs()) | set(_USER_CONFIGS) | set(_bundled_weights()))
    return [model_info(n) for n in names] if with_info else names


def model_info(name: str) -> Dict[str, Any]:
    """What the registry knows about ``name``: config source, weights folder, embed_dim, config_hash."""
    weights = _bundled_weights().get(name)
    cfg = get_config(name)
    return {"name": name, "has_weights": weights is not None, "weights": os.fspath(weights) if weights else None,
            "arch": cfg.vision.arch, "embed_dim": cfg.projection.embed_dim, "config_hash": cfg.config_hash,
            "description": cfg.description}


def get_config(name: str) -> CTGlipConfig:
    """The config registered as ``name`` (user registrations shadow nothing: names are unique)."""
    if name in _USER_CONFIGS:
        return _USER_CONFIGS[name]
    builtin = _builtin_configs()
    if name in builtin:
        return _read_config_file(builtin[name])
    weights = _bundled_weights()
    if name in weights:
        return _read_config_file(weights[name] / "config.json")
    raise ConfigError(f"unknown model {name!r}; registered: {', '.join(list_models()) or 'none'} "
                      "(register_model_config(path) adds one)")


def register_model_config(source: Union[PathLike, Mapping[str, Any], CTGlipConfig], overwrite: bool = False) -> str:
    """Register a config JSON file, a config dict/object, or a saved model folder (then ``load(name)`` works).

    Returns the registered name. A name already registered with a different config, or a folder whose name
    already has other weights (the bundled model's, say: model.safetensors compared tensor by tensor), is a
    ConfigError unless ``overwrite``.

    Example:
        >>> register_model_config({"name": "my-tiny", "vision": {"arch": "tiny"}})
        'my-tiny'
    """
    folder = None
    if isinstance(source, CTGlipConfig):
        cfg = source
    elif isinstance(source, Mapping):
        cfg = CTGlipConfig.from_dict(source)
    else:
        path = Path(source)
        if path.is_dir():
            folder = path
            path = path / "config.json"
        if not path.is_file():
            raise ConfigError("model config not found (pass a .json file or a saved model folder)", path=path)
        cfg = _read_config_file(path)
        if folder is not None and not (folder / "model.safetensors").is_file():
            raise CheckpointError("model folder has no model.safetensors", path=folder)
    name = cfg.name
    if not overwrite:
        try:
            old = get_config(name)
        except ConfigError:
            old = None
        if old is not None and old.config_hash != cfg.config_hash:
            raise ConfigError(f"model name {name!r} is already registered with a different config; pass "
                              "overwrite=True or rename it")
        if folder is not None:
            _refuse_other_weights(name, folder)
    _USER_CONFIGS[name] = cfg
    if folder is not None:
        _USER_WEIGHTS[name] = folder.resolve()
    log.info("registered model config %s", name)
    return name


def _refuse_other_weights(name: str, folder: Path) -> None:
    """ConfigError if ``name`` already has weights (bundled or registered) that differ from ``folder``'s.

    Why: a fine-tuned copy of a bundled model keeps its name and config, so it passed the config check, and
    registering it silently changed what ``load(name)`` returned. The tensors decide, not the files' bytes (a
    re-save of the same weights may order its metadata otherwise).
    """
    from safetensors import SafetensorError

    from ctglip_sdk.model.checkpoint import WEIGHTS, file_sha256, tensors_sha256

    current = _bundled_weights().get(name)
    if current is None or current.resolve() == folder.resolve():
        return
    try:
        same = (file_sha256(current / WEIGHTS) == file_sha256(folder / WEIGHTS)
                or tensors_sha256(current / WEIGHTS) == tensors_sha256(folder / WEIGHTS))
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"cannot compare the weights of {folder} with those registered as {name!r} "
                              f"({current}): {exc}", path=folder / WEIGHTS) from None
    if not same:
        raise ConfigError(f"model name {name!r} already has other weights ({current}); pass overwrite=True to "
                          f"make load({name!r}) return those of {folder}, or give the copy another name "
                          "(\"name\" under \"config\" in its config.json)")


def create(name_or_config: Union[str, Mapping[str, Any], CTGlipConfig] = "ctglip-tiny", *,
           overrides: Optional[Mapping[str, Any]] = None, tokenizer: Any = None,
           corpus: Optional[Iterable[str]] = None, dictionary: Any = None, seed: Optional[int] = None,
           device: Union[str, "torch.device", None] = None) -> "CTGlipModel":
    """A randomly initialised model from a registered name, a config dict or a CTGlipConfig.

    Args:
        name_or_config: registry name (see :func:`list_models`), dict or config.
        overrides: nested dict merged into the config (e.g. ``{"vision": {"channels": [8, 16]}}``); unknown keys
            raise ConfigError.
        tokenizer: a tokenizer to use as is. Otherwise the text tower's local folder's tokenizer, or a WordPiece
            tokenizer trained on ``corpus`` (e.g. training reports) plus the built-in organ/dictionary corpus.
        dictionary: abnormality dictionary whose phrasings join the tokenizer corpus (default: the built-in).
        seed: seed for a reproducible initialisation (the global RNG is left untouched).

    Example:
        >>> model = create("ctglip-tiny", overrides={"projection": {"embed_dim": 64}})  # doctest: +SKIP
        >>> model.embed_dim                                                             # doctest: +SKIP
        64
    """
    import torch

    from ctglip_sdk.model.modeling import CTGlipModel
    from ctglip_sdk.model.text import default_corpus, load_tokenizer, shared_words_only, train_tokenizer

    device = checked_device(device)
    if isinstance(name_or_config, str):
        cfg = get_config(name_or_config)
    elif isinstance(name_or_config, CTGlipConfig):
        cfg = name_or_config
    else:
        cfg = CTGlipConfig.from_dict(name_or_config)
    if overrides:
        cfg = CTGlipConfig.from_dict(merge_dicts(cfg.to_dict(), overrides))
    if tokenizer is None:
        if cfg.text.pretrained_path:
            from ctglip_sdk.model.text import _check_local

            tokenizer = load_tokenizer(_check_local(cfg.text.pretrained_path))
        else:
            # the reports' rare words (names, record numbers) never become tokens (text.shared_words_only)
            lines = shared_words_only(corpus or []) + default_corpus(dictionary)
            tokenizer = train_tokenizer(lines, cfg.text.vocab_size, cfg.text.max_length)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = CTGlipModel(cfg, tokenizer)
    model.eval()
    return model.to(device) if device is not None else model


def checked_device(device: Union[str, "torch.device", None]) -> Union["torch.device", None]:
    """``device`` as a torch.device, checked before any weight is read: a name torch does not know ("gpu") or
    CUDA where there is none is a ConfigError (they surfaced as torch's RuntimeError or an AssertionError)."""
    if device is None:
        return None
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device={device!r}: not a torch device (expected cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r}: this torch build or machine has no CUDA device "
                          f"(torch {torch.__version__}); use device='cpu'")
    return dev


def load(path_or_name: PathLike, device: Union[str, "torch.device", None] = None) -> "CTGlipModel":
    """Load weights: a registered name with bundled/registered weights, else a model folder path.

    Example:
        >>> model = load("ctglip-tiny-synthetic")  # doctest: +SKIP
    """
    from ctglip_sdk.model.checkpoint import load_pretrained

    if not isinstance(path_or_name, (str, os.PathLike)):
        raise ConfigError(f"load: expected a registered model name or a model folder, got "
                          f"{type(path_or_name).__name__}")
    key = os.fspath(path_or_name)
    device = checked_device(device)
    weights = _bundled_weights()
    if key in weights:
        return load_pretrained(weights[key], device)
    path = Path(key).expanduser()
    if path.is_dir():
        return load_pretrained(path, device)
    if path.is_file() and path.name == "config.json":
        return load_pretrained(path.parent, device)
    if key in _USER_CONFIGS or key in _builtin_configs():
        raise CheckpointError(f"{key!r} is a registered config without weights; use create({key!r}) for a "
                              "randomly initialised model, or pass a saved model folder")
    raise CheckpointError(f"no model folder or registered weights named {key!r}; have weights for: "
                          f"{', '.join(weights) or 'none'}")
