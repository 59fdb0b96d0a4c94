"""Training checkpoints as safetensors (every tensor) + JSON (everything else); never pickle or torch.load."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ctglip_sdk.errors import CheckpointError
from ctglip_sdk.model.checkpoint import unshare_tensors

__all__ = ["optimizer_to_flat", "optimizer_from_flat", "rng_to_flat", "rng_from_flat", "save_checkpoint",
           "load_checkpoint", "list_checkpoints", "latest_checkpoint", "CHECKPOINT_SCHEMA"]

log = logging.getLogger(__name__)
CHECKPOINT_SCHEMA = 1
_STEP_DIR = re.compile(r"^step_(\d{8})$")


# ------------------------------------------------------------------ optimizer
def optimizer_to_flat(opt: torch.optim.Optimizer) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Split an optimizer state_dict into named tensors and a JSON-ready remainder.

    Example:
        >>> p = torch.nn.Parameter(torch.ones(2)); o = torch.optim.AdamW([p])
        >>> tensors, meta = optimizer_to_flat(o)
        >>> meta["param_groups"][0]["params"]
        [0]
    """
    sd = opt.state_dict()
    tensors: Dict[str, torch.Tensor] = {}
    scalars: Dict[str, Dict[str, Any]] = {}
    for pid, pstate in sd["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars, "param_ids": sorted(sd["state"])}


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> None:
    """Inverse of `optimizer_to_flat`: load the state into `opt` (tensors moved to each parameter's device)."""
    state: Dict[int, Dict[str, Any]] = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for pid, values in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(values)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g and isinstance(g["betas"], list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    try:
        opt.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"optimizer state does not match the model's parameters: {exc}") from None


# ------------------------------------------------------------------ RNG
def rng_to_flat(generators: Optional[Dict[str, torch.Generator]] = None) -> Tuple[Dict[str, torch.Tensor], Dict]:
    """Capture python, numpy, torch (CPU + CUDA) RNG states and extra torch generators."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy.keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    for name, gen in (generators or {}).items():
        tensors[f"gen.{name}"] = gen.get_state()
    py_version, py_state, py_gauss = random.getstate()
    meta = {"numpy": [kind, int(pos), int(has_gauss), float(cached)],
            "python": [py_version, list(py_state), py_gauss]}
    return tensors, meta


def rng_from_flat(tensors: Dict[str, torch.Tensor], meta: Dict[str, Any],
                  generators: Optional[Dict[str, torch.Generator]] = None) -> None:
    """Restore what `rng_to_flat` captured."""
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["numpy.keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    py_version, py_state, py_gauss = meta["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    for name, gen in (generators or {}).items():
        if f"gen.{name}" in tensors:
            gen.set_state(tensors[f"gen.{name}"])


# ------------------------------------------------------------------ folders
def list_checkpoints(root: Path) -> List[Path]:
    """Complete checkpoint folders under `root` (those with state.json), oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(root: Path) -> Optional[Path]:
    """The newest complete checkpoint folder, or None."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def save_checkpoint(root: Path, step: int, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, state: Dict[str, Any], rank_rng: Dict[int, Tuple[Dict, Dict]],
                    keep: int = 2) -> Path:
    """Write `root/step_NNNNNNNN/` atomically (temp folder, fsynced, then rename) and prune to the newest `keep`.

    Files: model.safetensors, optimizer.safetensors, rng_rank{r}.safetensors + state.json (written last; a
    folder without it is incomplete and ignored).
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    model_sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(unshare_tensors(model_sd), str(tmp / "model.safetensors"))
    opt_tensors, opt_meta = optimizer_to_flat(optimizer)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    rng_meta = {}
    for r, (tensors, meta) in rank_rng.items():
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / f"rng_rank{r}.safetensors"))
        rng_meta[str(r)] = meta
    doc = {"schema": CHECKPOINT_SCHEMA, "step": step, "trainer": state, "optimizer": opt_meta,
           "scheduler": scheduler.state_dict() if scheduler is not None else None, "rng": rng_meta}
    _write_json(tmp / "state.json", doc)
    # On disk before the rename, and the rename on disk before older checkpoints are pruned: after a power cut the
    # newest checkpoint must not be a folder of empty files with the finite older ones already deleted.
    for f in tmp.iterdir():
        _fsync(f)
    _fsync(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(root)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint written: %s", final)
    return final


def load_checkpoint(path: Path, *, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer],
                    scheduler: Any, rank: int = 0,
                    generators: Optional[Dict[str, torch.Generator]] = None) -> Dict[str, Any]:
    """Restore model, optimizer, scheduler and this rank's RNG from a checkpoint folder; return trainer state.

    The learning rate of each optimizer group is then set from ``scheduler``'s own schedule at the step reached,
    so that a resume with another ``max_steps`` uses the new schedule from its first step (the restored groups
    hold the rate the old schedule set at the end of the last step; for an unchanged schedule it is the same).
    A damaged ``state.json`` (not JSON, not UTF-8, a key missing) is a CheckpointError naming it.
    """
    state_file = path / "state.json"
    if not state_file.is_file():
        raise CheckpointError("incomplete checkpoint (no state.json)", path=path)
    doc = _read_state(state_file)
    weights = _read(path / "model.safetensors")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}",
                              path=path)
    for k, v in weights.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointError(f"{k}: shape {tuple(v.shape)} != model {tuple(expected[k].shape)}", path=path)
    model.load_state_dict(weights, strict=True)
    try:
        if optimizer is not None:
            device = next(model.parameters()).device
            opt_tensors = {k: v.to(device) for k, v in _read(path / "optimizer.safetensors").items()}
            # AdamW keeps `step` on the CPU unless capturable/fused; keep it where a fresh optimizer would.
            opt_tensors = {k: (v.cpu() if k.endswith(".step") else v) for k, v in opt_tensors.items()}
            optimizer_from_flat(optimizer, opt_tensors, doc["optimizer"])
        if scheduler is not None and doc.get("scheduler") is not None:
            scheduler.load_state_dict(doc["scheduler"])
            _apply_schedule(scheduler, optimizer)
        rng_file = path / f"rng_rank{rank}.safetensors"
        if rng_file.is_file() and str(rank) in doc["rng"]:
            rng_from_flat(_read(rng_file), doc["rng"][str(rank)], generators)
        else:
            log.warning("no RNG state for rank %d in %s: resuming with fresh RNG", rank, path)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise CheckpointError(f"state.json does not describe this checkpoint ({type(exc).__name__}: "
                              f"{str(exc)[:200]}); delete this checkpoint folder to resume from the previous one",
                              path=state_file) from None
    return doc["trainer"]


def _read_state(state_file: Path) -> Dict[str, Any]:
    """state.json, checked for what a resume reads from it before anything is restored."""
    try:
        doc = json.loads(state_file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"state.json is not valid JSON: {exc}; delete this checkpoint folder to resume from "
                              "the previous one", path=state_file) from None
    except OSError as exc:
        raise CheckpointError(f"cannot read state.json: {exc.strerror or exc}", path=state_file) from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"state.json holds a {type(doc).__name__}, not an object", path=state_file)
    if doc.get("schema") != CHECKPOINT_SCHEMA:
        raise CheckpointError(f"checkpoint schema {doc.get('schema')!r}, expected {CHECKPOINT_SCHEMA}",
                              path=state_file)
    trainer = doc.get("trainer")
    bad = [k for k in ("step", "epoch", "batch")
           if not isinstance(trainer, dict) or isinstance(trainer.get(k), bool) or not isinstance(trainer.get(k), int)
           or trainer[k] < 0]
    if bad or not isinstance(doc.get("optimizer"), dict) or not isinstance(doc.get("rng"), dict):
        what = ", ".join(f"trainer.{k}" for k in bad) or "optimizer or rng"
        raise CheckpointError(f"state.json lacks {what} (damaged or written by something else); delete this "
                              "checkpoint folder to resume from the previous one", path=state_file)
    return doc


def _apply_schedule(scheduler: Any, optimizer: Optional[torch.optim.Optimizer]) -> None:
    """Set each group's lr to the scheduler's base rate times its (current) lambda at the step reached.

    The same arithmetic as LambdaLR's own step, so an unchanged schedule gives the very same floats (exact
    resume); a recomputed one (another max_steps) takes effect at the first resumed step instead of the second.
    """
    lambdas, bases = getattr(scheduler, "lr_lambdas", None), getattr(scheduler, "base_lrs", None)
    if optimizer is None or lambdas is None or bases is None:
        return
    if len(bases) != len(optimizer.param_groups):
        raise ValueError(f"{len(bases)} scheduled rates for {len(optimizer.param_groups)} parameter groups")
    for group, fn, base in zip(optimizer.param_groups, lambdas, bases):
        group["lr"] = base * fn(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def _read(file: Path) -> Dict[str, torch.Tensor]:
    """A checkpoint's safetensors file; a missing, truncated or corrupt one is a CheckpointError naming it (a
    resume used to end in a raw SafetensorError or FileNotFoundError)."""
    if not file.is_file():
        raise CheckpointError("incomplete checkpoint: file missing (the run was stopped while writing it? resume "
                              "from the previous checkpoint by deleting this folder)", path=file)
    try:
        return load_file(str(file))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own SafetensorError and OSError/ValueError
        raise CheckpointError(f"unreadable checkpoint file ({type(exc).__name__}: {str(exc)[:200]}); delete this "
                              "checkpoint folder to resume from the previous one", path=file) from None


def _fsync(path: Path) -> None:
    """fsync a file or a folder (a folder: so that a rename inside it survives a power cut; no-op where the system
    cannot, e.g. folders on Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - a folder on Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems that refuse fsync on folders
        pass
    finally:
        os.close(fd)


def _write_json(path: Path, doc: Dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w") as fh:
        json.dump(doc, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
