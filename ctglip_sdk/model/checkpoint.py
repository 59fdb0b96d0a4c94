"""Safe model folders: config.json + model.safetensors + tokenizer/, strict loading, never unpickling."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Union

import torch

from ctglip_sdk.errors import CheckpointError, ConfigError
from ctglip_sdk.model.config import SCHEMA_VERSION, CTGlipConfig

if TYPE_CHECKING:  # pragma: no cover
    from ctglip_sdk.model.modeling import CTGlipModel

__all__ = ["save_pretrained", "load_pretrained", "FORMAT", "PICKLE_SUFFIXES", "library_versions", "unshare_tensors"]

log = logging.getLogger(__name__)

FORMAT = "ctglip-sdk-model"
WEIGHTS = "model.safetensors"
#: Files that may hold pickles. A model folder containing any of them is refused without opening it:
#: unpickling runs arbitrary code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")

PathLike = Union[str, "os.PathLike[str]"]


def library_versions() -> Dict[str, str]:
    """Versions of the libraries that shape a saved model (recorded in config.json)."""
    from importlib import metadata

    out = {}
    for dist in ("ctglip-sdk", "torch", "transformers", "tokenizers", "safetensors", "monai", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _folder_sha256(folder: Path) -> str:
    """One checksum over a folder's files (relative names and contents, in name order)."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0" + _sha256(path).encode())
    return h.hexdigest()


def unshare_tensors(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A state dict safetensors can write: a tensor whose storage an earlier one already holds becomes a copy.

    Why: safetensors refuses tensors that share memory, and models tie some (MONAI's DynUNet in ``ctglip-cnn``
    reaches its input and bottleneck blocks again through ``skip_layers``); loading fills each key, so the copies
    load back into the tied parameters alike.
    """
    seen = set()
    out = {}
    for k, v in sd.items():
        ptr = v.untyped_storage().data_ptr() if v.numel() else id(v)
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


def save_pretrained(model: "CTGlipModel", folder: PathLike) -> Path:
    """Write a model folder; files are replaced atomically and config.json (with the weights' checksum) last.

    Example:
        >>> model.save_pretrained("models/my-ctglip")  # doctest: +SKIP
    """
    from safetensors.torch import save_file

    out = Path(folder).expanduser()  # as load and text.pretrained_path read "~" (a literal "~" folder otherwise)
    out.mkdir(parents=True, exist_ok=True)
    stray = [p.name for p in out.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES]
    if stray:
        raise CheckpointError(f"refusing to save next to pickle files {stray}: loading would refuse this folder",
                              path=out)
    state = unshare_tensors({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    fd, tmp = tempfile.mkstemp(dir=out, suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"format": "pt", "ctglip_config_hash": model.config_hash})
        os.replace(tmp, out / WEIGHTS)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    model.tokenizer.save_pretrained(os.fspath(out / "tokenizer"))
    meta = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "config": model.config.to_dict(),
        "config_hash": model.config_hash,
        "text_model_config": model.text.hf_config_dict(),
        "text_model_config_sha256": _json_sha256(model.text.hf_config_dict()),
        "config_sha256": _config_sha256(model.config.to_dict()),
        "weights_sha256": _sha256(out / WEIGHTS),
        # The tokenizer decides the text vectors as much as the weights do: a replaced one must not load.
        "tokenizer_sha256": _folder_sha256(out / "tokenizer"),
        "library_versions": library_versions(),
    }
    if getattr(model, "calibration", None):
        meta["calibration"] = {k: float(v) for k, v in sorted(model.calibration.items())}
        if getattr(model, "calibration_source", None):
            meta["calibration_source"] = model.calibration_source
    fd, tmp = tempfile.mkstemp(dir=out, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
    os.replace(tmp, out / "config.json")
    log.info("saved model %s to %s", model.name, out)
    return out


def _json_sha256(obj: Any) -> str:
    """sha256 of an object's canonical JSON (sorted keys), as config.json stores it."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _config_sha256(config: Dict[str, Any]) -> str:
    """Checksum of what a config decides about the vectors: all but its name, description and the text tower's
    source path (a saved model carries the tower's weights itself)."""
    d = {k: v for k, v in config.items() if k not in ("name", "description")}
    if isinstance(d.get("text"), dict):
        d["text"] = {k: v for k, v in d["text"].items() if k != "pretrained_path"}
    return _json_sha256(d)


def refuse_pickles(folder: Path) -> None:
    """Raise CheckpointError if any file in ``folder`` may be a pickle; such files are never opened."""
    found = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
    if found:
        raise CheckpointError(f"refusing to load: {', '.join(found)} may hold a pickle, which can run arbitrary "
                              "code when loaded; ctglip-sdk reads only safetensors. Remove the file(s) or convert "
                              "the weights to model.safetensors in a trusted environment", path=folder)


def read_meta(folder: Path) -> Dict[str, Any]:
    """Parse and check config.json of a model folder (format and schema version)."""
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError("not a model folder: config.json is missing", path=folder)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"config.json is not valid JSON: {exc}", path=path) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"config.json is not a ctglip-sdk model config (format {meta.get('format')!r} "
                              f"!= {FORMAT!r})" if isinstance(meta, dict) else "config.json must be an object",
                              path=path)
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise CheckpointError(f"model was saved with schema version {meta.get('schema_version')!r}; this "
                              f"ctglip-sdk reads schema {SCHEMA_VERSION}", path=path)
    for key in ("config", "text_model_config"):
        if not isinstance(meta.get(key), dict):
            raise CheckpointError(f"config.json lacks the {key!r} object", path=path)
    return meta


def _read_calibration(meta: Dict[str, Any], path: Path) -> Dict[str, float]:
    """The per-finding logit offsets of config.json (empty when the model was never calibrated)."""
    import math

    raw = meta.get("calibration") or {}
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, (int, float))
                                            and not isinstance(v, bool) and math.isfinite(v) for k, v in raw.items()):
        raise CheckpointError("config.json: 'calibration' must map finding keys to finite logit offsets", path=path)
    return {k: float(v) for k, v in raw.items()}


#: Buffers added after models were first saved; a folder without them loads with their identity values.
_OPTIONAL = ("stats_shift", "stats_scale")


def _strict_load(model: "CTGlipModel", state: Dict[str, torch.Tensor], path: Path) -> None:
    own = model.state_dict()
    absent = [k for k in _OPTIONAL if k in own and k not in state]
    if absent:
        log.info("%s: saved before %s existed; they keep their identity values", path, ", ".join(absent))
        state = {**state, **{k: own[k] for k in absent}}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    problems: List[str] = []
    if missing:
        problems.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    for k in sorted(set(own) & set(state)):
        if tuple(own[k].shape) != tuple(state[k].shape):
            problems.append(f"shape mismatch for {k}: checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)}")
        elif own[k].dtype != state[k].dtype:
            problems.append(f"dtype mismatch for {k}: checkpoint {state[k].dtype}, model {own[k].dtype}")
    if problems:
        raise CheckpointError("weights do not match the config: " + "; ".join(problems[:10]), path=path)
    model.load_state_dict(state, strict=True)


def load_pretrained(folder: PathLike, device: Union[str, torch.device, None] = None) -> "CTGlipModel":
    """Load a model folder strictly. Every failure is a CheckpointError naming the file and the problem.

    Example:
        >>> model = load_pretrained("models/my-ctglip")  # doctest: +SKIP
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ctglip_sdk.model.modeling import CTGlipModel
    from ctglip_sdk.model.text import load_tokenizer

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise CheckpointError("model folder does not exist", path=root)
    refuse_pickles(root)  # before opening anything else
    meta = read_meta(root)
    # Config problems name the model folder, then the file: "<folder>: config.json: <reason>".
    try:
        config = CTGlipConfig.from_dict(meta["config"])
    except ConfigError as exc:
        raise CheckpointError(f"config.json: {exc.reason}", path=root) from None
    # An edited config.json (pooling, a layer norm's eps) changed the vectors without a word: the checksums saved
    # beside it must still describe it. Its name and description may be edited (that is how a copy is renamed).
    expected_cfg = meta.get("config_sha256")  # absent in folders saved before it was recorded
    if expected_cfg and _config_sha256(meta["config"]) != expected_cfg:
        raise CheckpointError("config.json: 'config' does not match its checksum (edited after saving? only "
                              "'name' and 'description' may change)", path=root / "config.json")
    expected_text = meta.get("text_model_config_sha256")  # absent in folders saved before it was recorded
    if expected_text and _json_sha256(meta["text_model_config"]) != expected_text:
        raise CheckpointError("config.json: 'text_model_config' does not match its checksum (edited after "
                              "saving?)", path=root / "config.json")
    tok_dir = root / "tokenizer"
    if not tok_dir.is_dir():
        raise CheckpointError("tokenizer/ folder is missing", path=root)
    expected_tok = meta.get("tokenizer_sha256")  # checked before loading: a missing file must say so, not fail oddly
    if expected_tok and _folder_sha256(tok_dir) != expected_tok:
        raise CheckpointError("tokenizer/ does not match the checksum in config.json (replaced or changed after "
                              "saving)", path=tok_dir)
    try:
        tokenizer = load_tokenizer(tok_dir)
    except ConfigError as exc:
        raise CheckpointError(exc.reason, path=tok_dir) from None
    weights = root / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{WEIGHTS} is missing", path=root)
    try:
        state = load_file(os.fspath(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read safetensors (truncated or corrupt file?): {exc}", path=weights) from None
    try:  # also refuses a text.max_length longer than the text model's position table (TextTower)
        model = CTGlipModel(config, tokenizer, hf_text_config=meta["text_model_config"])
    except ConfigError as exc:
        raise CheckpointError(f"config.json: {exc.reason}", path=root) from None
    _strict_load(model, state, weights)
    expected = meta.get("weights_sha256")
    if expected and _sha256(weights) != expected:
        raise CheckpointError("model.safetensors does not match the checksum in config.json (replaced or "
                              "corrupted after saving)", path=weights)
    rows = model.text.encoder.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:  # token ids past the embedding table would fail at the first encode_text
        raise CheckpointError(f"tokenizer/ has {len(tokenizer)} tokens but the text model embeds {rows}: "
                              "not the tokenizer these weights were trained with", path=tok_dir)
    model.calibration = _read_calibration(meta, root / "config.json")
    source = meta.get("calibration_source")
    model.calibration_source = source if isinstance(source, dict) else None
    model._loads += 1
    model.eval()
    if device is not None:
        model.to(device)
    log.info("loaded model %s from %s", config.name, root)
    return model
