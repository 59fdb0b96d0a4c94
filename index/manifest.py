"""The index's manifest.json: reading and checking it, writing it atomically, and the model identity it records."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Union

from ctglip_sdk.errors import IndexStateError

from .vectors import atomic_write

__all__ = ["MANIFEST", "FORMAT", "FORMAT_VERSION", "REPAIR", "read_manifest", "write_manifest", "check_model",
           "model_identity", "load_model"]

PathLike = Union[str, "os.PathLike[str]"]
MANIFEST = "manifest.json"
FORMAT, FORMAT_VERSION = "ctglip-archive-index", 1
REPAIR = "run `ctglip verify --index DIR --repair`"


def model_identity(model: Any) -> Dict[str, Any]:
    """What the manifest records of a model: name, config hash, dimension and weights hash."""
    return {"name": str(model.name), "config_hash": str(model.config_hash), "embed_dim": int(model.embed_dim),
            "weights_hash": str(model.weights_hash()) if hasattr(model, "weights_hash") else None}


def load_model(ref: Union[str, PathLike]) -> Any:
    """A model from a registered name or a model folder (``cg.load``)."""
    import ctglip_sdk as cg  # noqa: PLC0415 - torch is heavy; only the index's model users pay for it

    return cg.load(ref)


def read_manifest(root: Path) -> Dict[str, Any]:
    """manifest.json of an index folder, checked: format, version and the keys every index has."""
    path = root / MANIFEST
    if not path.is_file():
        raise IndexStateError("not an archive index (no manifest.json); create one with ArchiveIndex.create "
                              "or `ctglip ingest ARCHIVE --index DIR`", path=root)
    try:
        manifest = json.loads(path.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexStateError(f"manifest.json is not valid JSON ({exc})", path=path) from None
    if manifest.get("format") != FORMAT:
        raise IndexStateError(f"manifest.json is not a ctglip archive index (format {manifest.get('format')!r})",
                              path=path)
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise IndexStateError("the index was written by a newer ctglip-sdk; upgrade ctglip-sdk", path=path)
    for key in ("index_uid", "model", "dim", "database"):
        if key not in manifest:
            raise IndexStateError(f"manifest.json lacks {key!r}; {REPAIR} cannot rebuild it: recreate the index",
                                  path=path)
    return manifest

def write_manifest(root: Path, manifest: Mapping[str, Any]) -> None:
    """Replace manifest.json atomically (a crash leaves the old or the new file, never half of one)."""
    text = json.dumps(manifest, indent=2, sort_keys=True)
    atomic_write(root / MANIFEST, lambda p: p.write_text(text, "utf-8"))

def check_model(manifest: Mapping[str, Any], model: Any, root: Path) -> None:
    """Refuse a model whose config or weights differ from the ones the index was built with."""
    rec, got = manifest["model"], model_identity(model)
    if rec["config_hash"] != got["config_hash"]:
        raise IndexStateError(
            f"this index was built with model {rec['name']!r} (config {rec['config_hash'][:12]}); the model "
            f"given is {got['name']!r} (config {got['config_hash'][:12]}). Vectors of different models are not "
            "comparable: open without model= (the index loads its own copy) or create a new index", path=root)
    if rec.get("weights_hash") and got.get("weights_hash") and rec["weights_hash"] != got["weights_hash"]:
        raise IndexStateError(
            f"this index was built with other weights of {rec['name']!r} (weights {rec['weights_hash'][:12]}, "
            f"given {got['weights_hash'][:12]}); open without model= or create a new index", path=root)
