"""Typed, frozen model configuration: vision, text, projection and preprocessing specs with strict JSON I/O."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, Literal, Mapping, Optional, Tuple

from ctglip_sdk.errors import ConfigError

__all__ = [
    "SCHEMA_VERSION",
    "VisionConfig",
    "TextConfig",
    "ProjectionConfig",
    "PreprocessConfig",
    "CTGlipConfig",
    "merge_dicts",
]

#: Version of the config/checkpoint layout. Bump when a saved model can no longer be read as before.
SCHEMA_VERSION = 1


def _fail(path: str, message: str) -> ConfigError:
    return ConfigError(f"config key {path!r}: {message}")


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check/convert one JSON value against a type hint; the error names the key path."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], path)
    if origin is Literal:
        if value not in args:
            raise _fail(path, f"must be one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise _fail(path, f"must be an object, got {type(value).__name__}")
        return _from_mapping(tp, value, path)
    if origin in (tuple, Tuple):
        if not isinstance(value, (list, tuple)):
            raise _fail(path, f"must be a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise _fail(path, f"must have {len(args)} items, got {len(value)}")
        return tuple(_convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise _fail(path, f"must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(path, f"must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _fail(path, f"must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _fail(path, f"must be a string, got {value!r}")
        return value
    if origin in (dict, Dict):
        if not isinstance(value, Mapping):
            raise _fail(path, f"must be an object, got {type(value).__name__}")
        return dict(value)
    raise _fail(path, f"unsupported type {tp!r}")  # pragma: no cover - programming error


def _from_mapping(cls: Any, data: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"unknown config key {where!r}; valid keys here: {', '.join(sorted(names))}")
    kwargs = {k: _convert(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def _to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        # A field added after models were saved is left out while at its default (metadata "omit_default"), so
        # those models' canonical JSON, and the config_hash an index stores, do not change with the library.
        return {f.name: _to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not (f.metadata.get("omit_default") and getattr(value, f.name) == f.default)}
    if isinstance(value, (tuple, list)):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_jsonable(v) for k, v in value.items()}
    return value


class _ConfigBase:
    """Shared from_dict / to_dict for the config dataclasses."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        """Build from a JSON-like mapping; unknown keys and wrong types raise ConfigError naming the key path."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{cls.__name__} must be built from an object, got {type(data).__name__}")
        return _from_mapping(cls, data, "")

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists)."""
        return _to_jsonable(self)

    def replace(self, **changes: Any) -> Any:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclass(frozen=True)
class VisionConfig(_ConfigBase):
    """Dense 3-D image encoder.

    ``arch``: ``tiny`` (small residual CNN with a light top-down path), ``cnn`` (MONAI DynUNet encoder-decoder
    whose highest-resolution decoder map is at ``feature_stride``), ``vit`` (3-D ViT, patch tokens reshaped to
    a grid; ``feature_stride`` must equal ``patch_size``). ``channels`` are per-stage widths, ``depth`` blocks per
    stage (cnn: residual blocks when > 1; ViT: transformer layers), ``out_channels`` the feature dimension
    pooled per organ.
    """

    arch: Literal["tiny", "cnn", "vit"] = "tiny"
    channels: Tuple[int, ...] = (16, 32, 48, 64)
    depth: int = 1
    feature_stride: int = 4
    out_channels: int = 64
    patch_size: int = 16
    num_heads: int = 4
    mlp_ratio: float = 4.0
    pos_grid: Tuple[int, int, int] = (8, 8, 8)
    norm: Literal["group", "instance"] = "group"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if not self.channels or any(c <= 0 for c in self.channels):
            raise _fail("vision.channels", f"must be positive widths, got {list(self.channels)}")
        if self.feature_stride < 1 or self.feature_stride & (self.feature_stride - 1):
            raise _fail("vision.feature_stride", f"must be a power of two, got {self.feature_stride}")
        if self.arch == "tiny" and not 2 <= self.feature_stride <= 2 ** len(self.channels):
            raise _fail("vision.feature_stride", f"the tiny CNN's stages sit at strides 2..{2 ** len(self.channels)} "
                        f"(one per entry of vision.channels); got {self.feature_stride}")
        if self.arch == "cnn" and len(self.channels) < 2:
            raise _fail("vision.channels", "the cnn encoder-decoder needs at least two levels")
        if self.arch == "vit":
            if self.patch_size != self.feature_stride:
                raise _fail("vision.patch_size", f"a ViT's feature stride is its patch size; set both to "
                            f"the same value (got {self.patch_size} and {self.feature_stride})")
            if self.channels[0] % self.num_heads:
                raise _fail("vision.num_heads", f"channels[0]={self.channels[0]} (ViT width) must divide by "
                            f"num_heads={self.num_heads}")
        if self.depth < 1 or self.out_channels < 1:
            raise _fail("vision.depth", "depth and out_channels must be >= 1")


@dataclass(frozen=True)
class TextConfig(_ConfigBase):
    """Text tower: a local Hugging Face folder (``pretrained_path``) or a small BERT built from this spec.

    With ``pretrained_path`` the spec fields (vocab_size, hidden_size, ...) are ignored and the folder's own
    config is used; nothing is ever fetched from a hub. ``max_length`` (tokens, [CLS]/[SEP] included) must not
    exceed what that encoder's position table holds: checked when the tower is built (ConfigError), or loaded
    (CheckpointError), since this dataclass does not read the folder.
    """

    pretrained_path: Optional[str] = None
    vocab_size: int = 4096
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 512
    max_length: int = 64
    pooling: Literal["cls", "mean"] = "mean"
    frozen: bool = False

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise _fail("text.num_heads", f"hidden_size={self.hidden_size} must divide by num_heads={self.num_heads}")
        if self.max_length < 8 or self.vocab_size < 64:
            raise _fail("text.max_length", "max_length must be >= 8 and vocab_size >= 64")


@dataclass(frozen=True)
class ProjectionConfig(_ConfigBase):
    """Projection heads into the joint space: linear when ``hidden`` is 0, else Linear-GELU-Linear."""

    embed_dim: int = 128
    hidden: int = 0

    def __post_init__(self) -> None:
        if self.embed_dim < 1 or self.hidden < 0:
            raise _fail("projection.embed_dim", "embed_dim must be >= 1 and hidden >= 0")


@dataclass(frozen=True)
class PreprocessConfig(_ConfigBase):
    """How a Volume becomes the network input; saved with every model so inference never guesses.

    ``spacing`` is the target voxel size in mm along the RAS array axes; each entry of ``hu_windows`` gives one
    input channel, HU clipped to (lo, hi) and scaled to [0, 1] (``scale="unit"``) or [-1, 1] (``"symmetric"``).
    ``crop``: ``organs`` encodes the box around the requested organs plus ``margin_mm``; ``body`` the box where
    HU > ``body_threshold_hu``; ``none`` the whole field of view. The resampled box is padded at its far side
    to a multiple of the network stride; a box larger than ``max_shape`` is resampled at a coarser spacing (and
    a warning logged) rather than failing.
    """

    orientation: Literal["RAS"] = "RAS"
    spacing: Tuple[float, float, float] = (3.5, 3.5, 3.5)
    hu_windows: Tuple[Tuple[float, float], ...] = ((-1000.0, 1000.0),)
    scale: Literal["unit", "symmetric"] = "unit"
    crop: Literal["organs", "body", "none"] = "organs"
    margin_mm: float = 20.0
    body_threshold_hu: float = -500.0
    max_shape: Tuple[int, int, int] = (160, 160, 192)
    #: HU bin edges of the per-organ histogram (first-order radiomics) fed to the projection beside the pooled
    #: features; empty = off. See docs/model.md, "HU histogram".
    hu_histogram: Tuple[float, ...] = ()
    #: Per-organ size and focal-contrast descriptors (deviation-from-median volumes, HU percentiles, log
    #: volume) fed to the projection beside the pooled features. See docs/model.md, "Organ descriptors".
    organ_descriptors: bool = False
    #: Per-organ focal-lesion and shape descriptors (blob filters on the organ's median-removed HU, thickness,
    #: largest cross-section) fed to the projection after the organ descriptors. See docs/model.md,
    #: "Focal descriptors". Models saved before it existed load with it off.
    focal_descriptors: bool = False
    #: Large-lesion, isolation and cyst descriptors (6 mm bright blob and dot filter, largest dense ball, brightest
    #: isolated peak, largest water ball) after the focal descriptors. See docs/model.md, "Extended focal
    #: descriptors". Added after v7 was saved: while off it is not written to the config, so such configs hash
    #: the same as before it existed.
    focal_extended: bool = field(default=False, metadata={"omit_default": True})

    def __post_init__(self) -> None:
        if any(b >= a for a, b in zip(self.hu_histogram[1:], self.hu_histogram[:-1])):
            raise _fail("preprocess.hu_histogram", f"bin edges must increase strictly, got {list(self.hu_histogram)}")
        if any(s <= 0 for s in self.spacing):
            raise _fail("preprocess.spacing", f"must be positive mm, got {list(self.spacing)}")
        if not self.hu_windows or any(lo >= hi for lo, hi in self.hu_windows):
            raise _fail("preprocess.hu_windows", f"need at least one (lo, hi) with lo < hi, got {self.hu_windows}")
        if self.margin_mm < 0 or any(m < 8 for m in self.max_shape):
            raise _fail("preprocess.max_shape", "margin_mm must be >= 0 and max_shape entries >= 8")

    @property
    def in_channels(self) -> int:
        return len(self.hu_windows)

    @property
    def n_hist_bins(self) -> int:
        """Histogram bins per organ: below the first edge, between edges, above the last (0 when off)."""
        return len(self.hu_histogram) + 1 if self.hu_histogram else 0

    @property
    def n_stats(self) -> int:
        """Width of ``PreparedStudy.stats``: histogram bins, organ, focal and extended focal descriptors (0: off)."""
        from ctglip_sdk.model.focal import N_FOCAL  # noqa: PLC0415 - keeps config free of numerical imports
        from ctglip_sdk.model.focal_ext import N_EXTENDED  # noqa: PLC0415 - as above
        from ctglip_sdk.model.preprocess import N_DESCRIPTORS  # noqa: PLC0415 - preprocess imports this module

        return (self.n_hist_bins + (N_DESCRIPTORS if self.organ_descriptors else 0)
                + (N_FOCAL if self.focal_descriptors else 0) + (N_EXTENDED if self.focal_extended else 0))


@dataclass(frozen=True)
class CTGlipConfig(_ConfigBase):
    """A whole model: architecture, text tower, projection, preprocessing and the initial temperature.

    Example:
        >>> cfg = CTGlipConfig.from_dict({"name": "demo", "vision": {"arch": "tiny"}})
        >>> CTGlipConfig.from_json(cfg.to_json()) == cfg
        True
    """

    name: str = "ctglip-custom"
    schema_version: int = SCHEMA_VERSION
    description: str = ""
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    init_logit_scale: float = math.log(1 / 0.07)
    #: How an organ's feature cells become one vector: ``mean`` (area-weighted mean, CT-GLIP's mask pooling) or
    #: ``mean_max`` (that mean concatenated with the channel-wise max over the cells mostly inside the organ):
    #: a lesion of a few voxels barely moves an organ's mean, but it does reach its max.
    organ_pooling: Literal["mean", "mean_max"] = "mean"
    #: Standardised per-organ stats are clamped to +-this many training standard deviations (None: no clamp).
    #: A stats column that barely varied in training (e.g. the share of bone above 1000 HU on 3 mm scans) can
    #: read 8 sigma on a finer scan and then outweigh every other input; the clamp keeps the signal's sign and
    #: bounds its weight. See docs/model.md, "Standardisation of the stats".
    stats_clip: Optional[float] = None

    def __post_init__(self) -> None:
        if self.stats_clip is not None and not (isinstance(self.stats_clip, (int, float)) and self.stats_clip > 0):
            raise _fail("stats_clip", "must be a positive number of standard deviations or null, "
                                      f"got {self.stats_clip!r}")
        if self.schema_version != SCHEMA_VERSION:
            raise _fail("schema_version", f"this ctglip-sdk reads schema {SCHEMA_VERSION}, got {self.schema_version}")
        if not self.name or "/" in self.name:
            raise _fail("name", f"must be a non-empty name without '/', got {self.name!r}")

    def to_json(self) -> str:
        """Indented JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "CTGlipConfig":
        """Parse JSON text (strict, like :meth:`from_dict`)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"model config is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    @property
    def config_hash(self) -> str:
        """sha256 of the canonical JSON; an index stores it to refuse vectors from a different model config.

        A local text tower counts by its folder's name only: moving the folder (another user, another machine,
        a mounted share) must not make an index refuse the same model. A config without one hashes as before.
        """
        d = self.to_dict()
        text = d.get("text") or {}
        if text.get("pretrained_path"):
            text["pretrained_path"] = os.path.basename(os.path.normpath(str(text["pretrained_path"])))
        canon = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def merge_dicts(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> Dict[str, Any]:
    """Recursive dict merge (``overrides`` wins); used to override parts of a registered config."""
    out = dict(base)
    for k, v in overrides.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge_dicts(out[k], v)
        else:
            out[k] = v
    return out
