"""Safe model folders: config.json + model.safetensors + tokenizer/, strict loading, never unpickling."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Union

import torch

from ctglip_sdk.errors import CheckpointError, ConfigError
from ctglip_sdk.model.config import SCHEMA_VERSION, CTGlipConfig

if TYPE_CHECKING:  # pragma: no cover
    from ctglip_sdk.model.modeling import CTGlipModel

__all__ = ["save_pretrained", "load_pretrained", "FORMAT", "PICKLE_SUFFIXES", "library_versions", "unshare_tensors"]

log = logging.getLogger(__name__)

FORMAT = "ctglip-sdk-model"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER = "tokenizer"
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


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tensors_sha256(path: Path) -> str:
    """sha256 over a safetensors file's tensors (names in order, dtypes, shapes, bytes), not its header's metadata.

    Why: safetensors writes the metadata in hash-map order, which changes from one process to the next, so two
    saves of the same weights can differ in their bytes (and ``weights_sha256``).
    """
    from safetensors import safe_open

    h = hashlib.sha256()
    with safe_open(os.fspath(path), framework="pt") as f:
        for k in sorted(f.keys()):
            t = f.get_tensor(k).contiguous()
            h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _folder_sha256(folder: Path) -> str:
    """One checksum over a folder's files (relative names and contents, in name order)."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0" + file_sha256(path).encode())
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


def _jsonable(value: Any, where: str) -> Any:
    """``value`` as JSON can hold it: numpy scalars and arrays as Python numbers and lists, tuples as lists.
    Anything else is a CheckpointError naming where it is.

    Why: ``calibration_source`` carries counts that may be numpy integers, which json.dump refuses; that TypeError
    came after the weights had been replaced, and the folder no longer loaded.
    """
    import numpy as np

    if isinstance(value, np.generic):
        value = value.item()
    elif isinstance(value, np.ndarray):
        value = value.tolist()
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, dict):  # keys as json.dumps takes them (id2label's are ints), numpy ones made Python
        return {_jsonable(k, where) if isinstance(k, np.generic) else k: _jsonable(v, f"{where}.{k}")
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise CheckpointError(f"cannot save {where}: a {type(value).__name__!r} value cannot be written to config.json "
                          "(JSON holds strings, numbers, booleans, lists and objects)")


def _float32_state(model: "CTGlipModel") -> Dict[str, torch.Tensor]:
    """The state dict to write; a floating-point tensor other than float32 is a CheckpointError.

    Why: cg.load builds every model in float32 and refuses other dtypes, so a model cast to bfloat16 or float64
    used to save a folder that never loaded. Refused rather than cast: casting float64 to float32 would change
    the saved outputs without a word, and a half model cannot encode anyway.
    """
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    odd: Dict[str, str] = {}
    for k, v in state.items():
        if v.is_floating_point() and v.dtype != torch.float32:
            odd.setdefault(str(v.dtype).replace("torch.", ""), k)
    if odd:
        example = ", ".join(f"{k} is {d}" for d, k in list(odd.items())[:3])
        raise CheckpointError(f"cannot save a {'/'.join(odd)} model: model folders hold float32 weights, the dtype "
                              f"cg.load builds (e.g. {example}). Call model.float() before save_pretrained; on "
                              "CUDA, bf16 autocast already runs the towers in half precision")
    return unshare_tensors(state)


def _meta(model: "CTGlipModel") -> Dict[str, Any]:
    """config.json without the files' checksums, already JSON-safe: built before any file is written."""
    config = _jsonable(model.config.to_dict(), "config")
    text_config = _jsonable(model.text.hf_config_dict(), "text_model_config")
    meta: Dict[str, Any] = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "config": config,
        "config_hash": model.config_hash,
        "text_model_config": text_config,
        "text_model_config_sha256": _json_sha256(text_config),
        "config_sha256": _config_sha256(config),
        "library_versions": library_versions(),
    }
    if getattr(model, "calibration", None):
        meta["calibration"] = {k: float(v) for k, v in sorted(model.calibration.items())}
        if getattr(model, "calibration_source", None):
            meta["calibration_source"] = _jsonable(model.calibration_source, "calibration_source")
    try:  # what _jsonable lets through but json refuses (a key that is not a string or number, mixed key types)
        json.dumps(meta, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot save config.json: {exc}") from None
    return meta


def _write_stage(model: "CTGlipModel", state: Dict[str, torch.Tensor], meta: Dict[str, Any], stage: Path,
                 out: Path) -> None:
    """Write the whole model folder into ``stage``; errors name the file in ``out`` they were for."""
    from safetensors.torch import save_file

    try:
        save_file(state, os.fspath(stage / WEIGHTS), metadata={"format": "pt", "ctglip_config_hash": model.config_hash})
    except Exception as exc:  # noqa: BLE001 - OSError (disk full), SafetensorError; the message says which
        raise CheckpointError(f"cannot write the weights: {type(exc).__name__}: {exc}", path=out / WEIGHTS) from exc
    try:
        model.tokenizer.save_pretrained(os.fspath(stage / TOKENIZER))
    except Exception as exc:  # noqa: BLE001 - OSError, or whatever a tokenizer class raises
        raise CheckpointError(f"cannot write the tokenizer: {type(exc).__name__}: {exc}",
                              path=out / TOKENIZER) from exc
    # The tokenizer decides the text vectors as much as the weights do: a replaced one must not load.
    full = {**meta, "weights_sha256": file_sha256(stage / WEIGHTS),
            "tokenizer_sha256": _folder_sha256(stage / TOKENIZER)}
    (stage / CONFIG).write_text(json.dumps(full, indent=2, sort_keys=True), encoding="utf-8")


def _swap_in(stage: Path, out: Path) -> None:
    """Move the staged files into ``out``; on a failure, put the previous ones back.

    The previous config.json leaves first and the new one arrives last, so between the renames the folder reads
    as "config.json is missing", never as a model whose checksums do not match. tokenizer/ is swapped as a whole:
    files an older tokenizer wrote (vocab.json, added_tokens.json ...) and the new one does not would otherwise
    stay, enter the checksum, and change or break the tokenizer cg.load reads.
    """
    previous = stage / ".previous"
    previous.mkdir()
    moved: List[str] = []
    placed: List[str] = []
    try:
        for name in (CONFIG, TOKENIZER, WEIGHTS):
            if os.path.lexists(out / name):
                os.rename(out / name, previous / name)
                moved.append(name)
        for name in (WEIGHTS, TOKENIZER, CONFIG):
            os.rename(stage / name, out / name)
            placed.append(name)
    except BaseException:
        for name in reversed(placed):
            _quiet_rename(out / name, stage / name)
        for name in reversed(moved):
            _quiet_rename(previous / name, out / name)
        raise


def _quiet_rename(src: Path, dst: Path) -> None:
    try:
        os.rename(src, dst)
    except OSError as exc:  # a rollback step that fails must not hide the error that caused the rollback
        log.error("could not restore %s from %s: %s", dst, src, exc)


def save_pretrained(model: "CTGlipModel", folder: PathLike) -> Path:
    """Write a model folder: config.json, model.safetensors and tokenizer/.

    Everything is written into a temporary folder inside ``folder`` first and then moved in (config.json last),
    so a save that fails (a value JSON cannot hold, a full disk, a tokenizer that cannot be written) leaves the
    previous model in ``folder`` loadable and no temporary files. Other files in ``folder`` are kept. Every
    failure is a CheckpointError.

    Example:
        >>> model.save_pretrained("models/my-ctglip")  # doctest: +SKIP
    """
    out = Path(folder).expanduser()  # as load and text.pretrained_path read "~" (a literal "~" folder otherwise)
    if out.exists() and not out.is_dir():
        raise CheckpointError("cannot save a model here: the path is a file, not a folder", path=out)
    if out.is_dir():
        stray = [p.name for p in out.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES]
        if stray:
            raise CheckpointError(f"refusing to save next to pickle files {stray}: loading would refuse this "
                                  "folder", path=out)
    # Everything that can be refused is refused before the first file is written.
    state = _float32_state(model)
    meta = _meta(model)
    created = not out.exists()
    stage: Optional[Path] = None
    done = False
    try:
        out.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".ctglip-saving-", dir=out))
        _write_stage(model, state, meta, stage, out)
        _swap_in(stage, out)
        done = True
    except OSError as exc:
        raise CheckpointError(f"cannot write the model folder: {exc}", path=out) from exc
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)  # after a success it holds only the previous files
        if not done and created:
            try:
                out.rmdir()  # a first save that failed leaves no empty folder behind
            except OSError:
                pass
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
    if expected and file_sha256(weights) != expected:
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
