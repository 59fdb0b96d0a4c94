"""CTGlipModel: dense 3-D features, area-weighted organ mask pooling, a Hugging Face text tower, one joint space."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ctglip_sdk.errors import InputError, QueryError
from ctglip_sdk.model.config import CTGlipConfig, ProjectionConfig
from ctglip_sdk.model.preprocess import PreparedStudy, prepare_study, prepare_volume
from ctglip_sdk.model.text import TextTower
from ctglip_sdk.model.vision import build_vision
from ctglip_sdk.volume import Segmentation, Volume

__all__ = ["CTGlipModel", "OrganEmbeddings", "MAX_LOGIT_SCALE", "pool_sparse", "pooled_width"]

log = logging.getLogger(__name__)

#: CLIP's clamp on exp(logit_scale): a temperature no smaller than 0.01.
MAX_LOGIT_SCALE = 100.0


@dataclass
class OrganEmbeddings:
    """Per-organ unit vectors of one study, with the organ boxes and sizes users see.

    Attributes:
        names: organ class names, one per row.
        vectors: ``[N, D]`` float32 unit vectors in the joint image-text space.
        bboxes: ``[N, 6]`` int ``(i0, j0, k0, i1, j1, k1)`` half-open, on the input volume's grid.
        volumes_ml: ``[N]`` organ volumes in millilitres (voxel count x voxel volume, input grid).
        mean_hu: ``[N]`` mean HU inside each mask on the input grid.
        missing: requested organs that are absent (or below ``min_voxels``); never given a vector.
    """

    names: List[str]
    vectors: np.ndarray
    bboxes: np.ndarray
    volumes_ml: np.ndarray
    mean_hu: np.ndarray
    missing: List[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)

    def vector(self, organ: str) -> np.ndarray:
        """The vector of one organ; QueryError naming what is available when absent."""
        if organ not in self.names:
            raise QueryError(f"no embedding for {organ!r}; have {self.names} (missing: {self.missing})")
        return self.vectors[self.names.index(organ)]


def _projection(in_dim: int, cfg: ProjectionConfig) -> nn.Module:
    if cfg.hidden:
        return nn.Sequential(nn.Linear(in_dim, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, cfg.embed_dim))
    return nn.Linear(in_dim, cfg.embed_dim)


def pool_sparse(features: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor,
                n: int, mode: str = "mean") -> torch.Tensor:
    """Pool ``features [C, *grid]`` for ``n`` organs given COO area weights -> ``[n, C]`` (``[n, 2C]`` for mean_max).

    ``mean``: area-weighted mean. ``mean_max``: that mean, then the channel-wise max over the organ's cells
    whose area fraction is at least 0.5 (or, for an organ smaller than a cell, its best-covered cells), so a
    boundary cell that is mostly a neighbour does not set the organ's max.
    """
    flat = features.reshape(features.shape[0], -1).t().float()
    vals = vals.to(flat.device, torch.float32)
    rows, cols = rows.to(flat.device), cols.to(flat.device)
    out = torch.zeros(n, flat.shape[1], device=flat.device).index_add_(0, rows, flat[cols] * vals[:, None])
    wsum = torch.zeros(n, device=flat.device).index_add_(0, rows, vals)
    mean = out / wsum.clamp_min(1e-12)[:, None]
    if mode == "mean":
        return mean
    if mode != "mean_max":
        raise ValueError(f"unknown organ pooling {mode!r}")
    best = torch.zeros(n, device=flat.device).scatter_reduce(0, rows, vals, "amax", include_self=False)
    keep = vals >= best.clamp(max=0.5)[rows] - 1e-6
    r, c = rows[keep], cols[keep]
    idx = r[:, None].expand(-1, flat.shape[1])
    # Organs without cells keep 0 (include_self=False leaves untouched rows at their initial value).
    mx = torch.zeros(n, flat.shape[1], device=flat.device).scatter_reduce(0, idx, flat[c], "amax",
                                                                           include_self=False)
    return torch.cat([mean, mx], dim=1)


def pooled_width(channels: int, mode: str) -> int:
    """Width of a pooled organ vector for ``channels`` feature channels under pooling ``mode``."""
    return channels * (2 if mode == "mean_max" else 1)


class CTGlipModel(nn.Module):
    """CT-GLIP: organ embeddings by mask pooling of one dense 3-D feature map, text embeddings, one space.

    Build with ``ctglip_sdk.create(name)`` or ``ctglip_sdk.load(path_or_name)``. ``forward`` and the tensor
    methods do no file I/O; ``encode_*`` take SDK objects and return numpy under ``torch.inference_mode``.

    Example:
        >>> model = create("ctglip-tiny")                          # doctest: +SKIP
        >>> emb = model.encode_organs(vol, seg, organs=["liver"])  # doctest: +SKIP
        >>> float(emb.vectors[0] @ model.encode_text("the liver"))  # doctest: +SKIP
    """

    def __init__(self, config: CTGlipConfig, tokenizer: Any, hf_text_config: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        cap = getattr(tokenizer, "model_max_length", None)
        if isinstance(cap, int) and cap < config.text.max_length:
            # tokenize() reads min(text.max_length, the tokenizer's cap): say so, since the config alone promises more
            log.warning("the tokenizer reads at most %d tokens (its model_max_length), fewer than text.max_length %d:"
                        " longer texts are cut at %d", cap, config.text.max_length, cap)
        self.vision = build_vision(config.vision, config.preprocess.in_channels)
        self.text = TextTower(config.text, len(tokenizer), hf_text_config)
        self.vision_proj = _projection(pooled_width(self.vision.out_channels, config.organ_pooling)
                                       + config.preprocess.n_stats, config.projection)
        self.text_proj = _projection(self.text.hidden_size, config.projection)
        if config.preprocess.n_stats:
            # Standardisation of the stats columns (after the histogram's log scale), set from the training data by
            # `set_stats_norm` before training: AdamW moves a weight by ~lr per step, so a column with a spread
            # of 0.1 around 1.4 (an organ's log thickness) could hardly be used in a 1,000-step budget.
            self.register_buffer("stats_shift", torch.zeros(config.preprocess.n_stats))
            self.register_buffer("stats_scale", torch.ones(config.preprocess.n_stats))
        #: log of the inverse temperature, as in CLIP; use :meth:`temperature_scale` for the clamped exp.
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        self.channels_last = False
        #: On CUDA the towers run under bf16 autocast (pooling, projection and outputs stay float32).
        self.cuda_bf16 = True
        self._loads = 0  # bumped by checkpoint loading; part of weights_version()
        #: Per-finding logit offsets chosen on held-out studies (``ctglip calibrate``; saved in config.json):
        #: ``ZeroShotClassifier`` subtracts them so that probability 0.5 is each finding's F1-best threshold.
        self.calibration: Dict[str, float] = {}
        #: Where ``calibration`` was chosen: archive, split, study count and hashed study UIDs (``calibrate`` sets
        #: it), so that an evaluation can tell when it scores the calibration studies themselves.
        self.calibration_source: Optional[Dict[str, Any]] = None

    # ----------------------------------------------------------------- identity
    @property
    def name(self) -> str:
        return self.config.name

    @property
    def config_hash(self) -> str:
        """sha256 of the canonical config JSON (architecture + preprocessing)."""
        return self.config.config_hash

    @property
    def embed_dim(self) -> int:
        return self.config.projection.embed_dim

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    def weights_version(self) -> tuple:
        """Changes whenever any parameter is modified in place (optimizer step, load_state_dict) or moved.

        Caches of derived embeddings (zero-shot prompt vectors) key on it.
        """
        return (self._loads, str(self.device), sum(p._version for p in self.parameters()),
                tuple(p.data_ptr() for p in list(self.parameters())[:4]))

    def weights_hash(self) -> str:
        """sha256 over the state dict (names, dtypes, shapes, bytes): identifies the trained weights."""
        h = hashlib.sha256()
        for k, v in self.state_dict().items():
            t = v.detach().cpu().contiguous()
            h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()

    def set_channels_last(self, enabled: bool = True) -> "CTGlipModel":
        """Run the vision tower in ``channels_last_3d`` (measure: it helps some CNNs on CPU, not these)."""
        self.channels_last = bool(enabled)
        fmt = torch.channels_last_3d if enabled else torch.contiguous_format
        for m in self.vision.modules():
            if isinstance(m, nn.Conv3d):
                m.weight.data = m.weight.data.contiguous(memory_format=fmt)
        return self

    def save_pretrained(self, folder: Union[str, "os.PathLike[str]"]) -> None:
        """Write ``config.json``, ``model.safetensors`` and ``tokenizer/`` (see docs/model.md)."""
        from ctglip_sdk.model.checkpoint import save_pretrained

        save_pretrained(self, folder)

    # ------------------------------------------------------------------ tensors
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda" and self.cuda_bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C_in, X, Y, Z]`` (sides a multiple of the size divisor) -> ``[B, C, X/s, Y/s, Z/s]`` float32."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last_3d)
        with self._autocast():
            feats = self.vision(images)
        return feats.float()

    def pool_organs(self, features: torch.Tensor, masks: torch.Tensor,
                    stats: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Mask pooling: features ``[B, C, *grid]``, masks ``[B, N, *grid]`` (area fractions) -> ``[B, N, C']``.

        Masks are weights on the feature grid, e.g. ``F.avg_pool3d(onehot, stride)`` of one-hot masks on the
        network input grid, or ``PreparedStudy.dense_weights()``. An organ with zero total weight gets zeros.
        ``C'`` is ``C`` for ``organ_pooling="mean"`` and ``2C`` for ``"mean_max"`` (see :func:`pool_sparse`),
        plus the histogram bins when the model has ``hu_histogram`` (``stats [B, N, bins]``, required then).
        """
        w = masks.flatten(2).to(features.dtype)
        if self.config.organ_pooling == "mean":
            num = torch.einsum("bnv,bcv->bnc", w, features.flatten(2))
            pooled = num / w.sum(-1, keepdim=True).clamp_min(1e-12)
        else:
            out = []
            for b in range(w.shape[0]):
                rows, cols = w[b].nonzero(as_tuple=True)
                out.append(pool_sparse(features[b], rows, cols, w[b, rows, cols], w.shape[1],
                                       self.config.organ_pooling))
            pooled = torch.stack(out)
        return self._with_stats(pooled, stats)

    def pool_sparse(self, features: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor,
                    n: int, stats: Optional[torch.Tensor] = None) -> torch.Tensor:
        """:func:`pool_sparse` with this model's ``organ_pooling`` (and histogram ``stats [n, bins]`` when the
        model uses ``hu_histogram``): ``features [C, *grid]`` -> ``[n, C']``."""
        return self._with_stats(pool_sparse(features, rows, cols, vals, n, self.config.organ_pooling), stats)

    def _with_stats(self, pooled: torch.Tensor, stats: Optional[torch.Tensor]) -> torch.Tensor:
        """Append the organs' stats (:meth:`stats_columns`, standardised by ``stats_shift`` / ``stats_scale``,
        clamped to ``config.stats_clip``) when the model uses them."""
        width = self.config.preprocess.n_stats
        if not width:
            return pooled
        if stats is None or stats.shape[-1] != width or stats.shape[:-1] != pooled.shape[:-1]:
            got = None if stats is None else tuple(stats.shape)
            raise InputError(f"this model needs per-organ stats of shape {tuple(pooled.shape[:-1]) + (width,)} "
                             f"(from prepare()/the preprocessing cache), got {got}")
        scaled = (self.stats_columns(stats.to(pooled.device)) - self.stats_shift) / self.stats_scale
        clip = self.config.stats_clip
        if clip is not None:
            scaled = scaled.clamp(-clip, clip)
        return torch.cat([pooled, scaled.to(pooled.dtype)], dim=-1)

    def stats_columns(self, stats: torch.Tensor) -> torch.Tensor:
        """The stats as the projection reads them before standardisation: histogram log-scaled, rest as is."""
        bins = self.config.preprocess.n_hist_bins
        # log10 maps the rare bins (a 7 mm stone is ~0.1 % of a kidney) to the same scale as the common ones:
        # fractions 1e-4 .. 1 -> 0 .. 1. The descriptors are already scaled to about -2 .. 3.
        hist = torch.log10(stats[..., :bins].float().clamp(0, 1) + 1e-4) / 4.0 + 1.0
        return torch.cat([hist, stats[..., bins:].float()], dim=-1)

    def set_stats_norm(self, columns: torch.Tensor, min_scale: float = 0.05) -> None:
        """Standardise the stats columns by the mean and spread of ``columns [N, n_stats]`` (from
        :meth:`stats_columns` over training organs). A column that barely varies keeps ``min_scale`` so that
        noise in it is not blown up."""
        columns = columns.double()
        with torch.no_grad():
            self.stats_shift.copy_(columns.mean(0).to(self.stats_shift))
            self.stats_scale.copy_(columns.std(0).clamp_min(min_scale).to(self.stats_scale))

    def project_vision(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[..., C]`` -> unit vectors ``[..., D]``."""
        return F.normalize(self.vision_proj(pooled.float()), dim=-1)

    def encode_text_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids -> unit vectors ``[B, D]`` (differentiable; used by training)."""
        with self._autocast():
            hidden = self.text(input_ids, attention_mask)
        return F.normalize(self.text_proj(hidden.float()), dim=-1)

    def tokenize(self, texts: Sequence[str]) -> Dict[str, torch.Tensor]:
        """Padded, truncated ``input_ids``/``attention_mask`` on the model's device."""
        limit = min(self.config.text.max_length, getattr(self.tokenizer, "model_max_length", 10 ** 9) or 10 ** 9)
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=limit, return_tensors="pt")
        return {"input_ids": enc["input_ids"].to(self.device), "attention_mask": enc["attention_mask"].to(self.device)}

    def temperature_scale(self) -> torch.Tensor:
        """``exp(logit_scale)`` clamped to :data:`MAX_LOGIT_SCALE`: multiply cosine similarities by this."""
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(self, images: torch.Tensor, masks: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor, stats: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Training step tensors: organ vectors ``[B, N, D]``, text vectors ``[T, D]`` and the logit scale."""
        organs = self.project_vision(self.pool_organs(self.forward_features(images), masks, stats))
        return {"organ_embeds": organs, "text_embeds": self.encode_text_tokens(input_ids, attention_mask),
                "logit_scale": self.temperature_scale()}

    # --------------------------------------------------------------- SDK level
    def prepare(self, volume: Volume, segmentation: Segmentation, organs: Optional[Sequence[str]] = None,
                min_voxels: int = 1) -> PreparedStudy:
        """Preprocess a study with this model's saved spec (box, resampling, windows, area weights)."""
        return prepare_study(volume, segmentation, organs, self.config.preprocess, self.vision.feature_stride,
                             self.vision.size_divisor, min_voxels, device=self.device)

    def _embed_prepared(self, preps: List[PreparedStudy], chunk: int) -> List[np.ndarray]:
        """One forward pass per shape group (same-shape studies share a batch), then pooling per study."""
        out: List[np.ndarray] = [np.zeros((0, self.embed_dim), np.float32)] * len(preps)
        groups: Dict[tuple, List[int]] = {}
        for i, p in enumerate(preps):
            if p.names:
                groups.setdefault(tuple(p.image.shape), []).append(i)
        for idx in groups.values():
            for b0 in range(0, len(idx), max(1, chunk)):
                part = idx[b0:b0 + max(1, chunk)]
                feats = self.forward_features(torch.stack([preps[i].image for i in part]).to(self.device))
                for f, i in zip(feats, part):
                    p = preps[i]
                    pooled = self.pool_sparse(f, p.rows, p.cols, p.vals, len(p.names), p.stats)
                    out[i] = self.project_vision(pooled).cpu().numpy().astype(np.float32)
        return out

    def encode_organs(self, volume: Volume, segmentation: Segmentation, organs: Optional[Sequence[str]] = None,
                      batch_size: int = 1, min_voxels: int = 1) -> OrganEmbeddings:
        """Organ vectors of one study from ONE forward pass over the box that holds every labelled organ (the same
        box whichever organs are requested, so a subset gets the vectors of a full request).

        Args:
            volume: the CT volume (HU, RAS canonical).
            segmentation: labels on the volume's grid.
            organs: class names, groups or synonyms (``"kidney"`` -> both kidneys); None = every labelled organ.
            batch_size: kept for API symmetry with :meth:`encode_organs_batch` (one study = one pass).
            min_voxels: organs with fewer voxels are reported in ``missing`` (default: only absent ones).

        Returns:
            OrganEmbeddings; absent organs are listed in ``missing``, never given a vector. An organ that is
            smaller than a feature cell is still pooled: its area weights are the fractions of the cells it
            overlaps, so it never rounds away (see docs/model.md, "small organs").

        Example:
            >>> emb = model.encode_organs(vol, seg, organs=["liver", "kidney"])  # doctest: +SKIP
            >>> emb.vectors.shape                                                # doctest: +SKIP
            (3, 128)
        """
        return self.encode_organs_batch([volume], [segmentation], organs, batch_size, min_voxels)[0]

    def encode_organs_batch(self, volumes: Sequence[Volume], segmentations: Sequence[Segmentation],
                            organs: Optional[Sequence[str]] = None, batch_size: int = 2,
                            min_voxels: int = 1) -> List[OrganEmbeddings]:
        """:meth:`encode_organs` for several studies; studies whose boxes resample to the same shape share a
        batch of up to ``batch_size`` (others run one pass each)."""
        if len(volumes) != len(segmentations):
            raise InputError(f"{len(volumes)} volumes but {len(segmentations)} segmentations")
        if isinstance(min_voxels, bool) or not isinstance(min_voxels, int) or min_voxels < 1:
            raise InputError(f"min_voxels must be an integer >= 1, got {min_voxels!r}")
        with torch.inference_mode():
            preps = [self.prepare(v, s, organs, min_voxels) for v, s in zip(volumes, segmentations)]
        return self.encode_prepared(preps, batch_size)

    def encode_prepared(self, preps: Sequence[PreparedStudy], batch_size: int = 2) -> List[OrganEmbeddings]:
        """Second half of :meth:`encode_organs_batch`: network + pooling for studies from :meth:`prepare`.

        Lets a pipeline preprocess in worker threads and run the network in batches (the index's ingest does).
        """
        with torch.inference_mode():
            vecs = self._embed_prepared(list(preps), batch_size)
        return [OrganEmbeddings(list(p.names), v, np.asarray(p.bboxes, np.int64),
                                np.asarray(p.volumes_ml, np.float64), np.asarray(p.mean_hu, np.float64),
                                list(p.missing)) for p, v in zip(preps, vecs)]

    def encode_volume(self, volume: Volume) -> np.ndarray:
        """A global unit vector ``[D]``: the mean of features over the body (HU above the body threshold).

        Example:
            >>> model.encode_volume(vol).shape  # doctest: +SKIP
            (128,)
        """
        with torch.inference_mode():
            p = prepare_volume(volume, self.config.preprocess, self.vision.feature_stride, self.vision.size_divisor,
                               device=self.device)
            return self._embed_prepared([p], 1)[0][0]

    def encode_text(self, texts: Union[str, Sequence[str]], batch_size: int = 64) -> np.ndarray:
        """Unit text vectors: ``[N, D]`` float32 for a list, ``[D]`` for a single string (as sentence-transformers).

        Texts are sorted by length so each batch pads little, and the input order is restored.

        Example:
            >>> model.encode_text(["renal cyst", "no hydronephrosis"]).shape  # doctest: +SKIP
            (2, 128)
        """
        single = isinstance(texts, str)
        if not single and not isinstance(texts, (list, tuple)):
            raise QueryError(f"encode_text takes a string or a list of strings, got {type(texts).__name__}")
        items = [texts] if single else list(texts)
        if any(not isinstance(t, str) for t in items):
            raise QueryError("encode_text takes a string or a list of strings")
        if batch_size < 1:
            raise QueryError(f"batch_size must be >= 1, got {batch_size}")
        out = np.zeros((len(items), self.embed_dim), np.float32)
        order = sorted(range(len(items)), key=lambda i: -len(items[i]))
        with torch.inference_mode():
            for b0 in range(0, len(order), batch_size):
                idx = order[b0:b0 + batch_size]
                tok = self.tokenize([items[i] for i in idx])
                out[idx] = self.encode_text_tokens(tok["input_ids"], tok["attention_mask"]).cpu().numpy()
        return out[0] if single else out

    def iter_parameters_by_tower(self) -> Iterator[tuple]:
        """``(tower, name, parameter)`` for optimizers that set per-tower learning rates."""
        for name, p in self.named_parameters():
            yield name.split(".", 1)[0], name, p
