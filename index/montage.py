"""Thumbnails of search hits: the organ box's middle axial slice of each hit, in one PNG montage."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
from sqlalchemy import select

from ctglip_sdk.errors import ConfigError, CTGlipError

from .outputs import MONTAGE_SUFFIXES, check_output_path

if TYPE_CHECKING:  # pragma: no cover
    from .archive import ArchiveIndex
    from .results import SearchResults

__all__ = ["save_montage"]

log = logging.getLogger(__name__)


def organ_window(organ: str) -> tuple:
    """A radiologist's display window (HU low, high) for an organ: lung, bone or soft tissue."""
    if organ.startswith(("lung_", "trachea")):
        return (-1350.0, 150.0)
    if organ.startswith(("vertebrae_", "rib_", "hip_", "femur_", "humerus_", "scapula_", "clavicula_", "sacrum")):
        return (-450.0, 1050.0)
    return (-160.0, 240.0)


def save_montage(index: "ArchiveIndex", results: "SearchResults", path: Any, archive_root: Optional[Any] = None,
                 max_hits: int = 12, window: Optional[tuple] = None) -> Path:
    """Draw each hit's organ box (middle axial slice, mask contour) in a grid and save it as PNG (or .jpg, .pdf,
    .svg; a path inside the index folder is refused).

    The display window follows the organ (lung, bone or soft tissue; ``window=`` overrides); captions give
    organ, score, the study UID's tail and the patient pseudonym.

    Images are read from the archive the series was ingested from (or ``archive_root`` if the archive moved),
    always through ``resolve_within`` so that an index row cannot point outside the archive. A hit whose image
    cannot be read gets an empty panel with the reason.

    Example:
        >>> save_montage(idx, idx.search("renal cyst", k=8, organ="kidney"), "hits.png")  # doctest: +SKIP
    """
    # Checked before drawing: not into the index folder or over its database, and an image type matplotlib writes.
    out = check_output_path(path, index, suffixes=MONTAGE_SUFFIXES, what="montage")
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
        from matplotlib.patches import Rectangle  # noqa: PLC0415
    except ImportError:
        raise ConfigError("a montage needs matplotlib (`pip install matplotlib`)") from None
    from ctglip_sdk.io import load_segmentation, load_volume, resolve_within  # noqa: PLC0415

    hits = list(results)[:max_hits]
    if not hits:
        raise ConfigError("no hits to draw")
    s, o = index.store.t.series, index.store.t.organs
    # By crop id, not the hit's series_uid and path: output shows those without patient identifiers, while the
    # files are read from the paths as stored.
    rows = index.store.read(lambda c: c.execute(
        select(o.c.id, s.c.archive_root, s.c.path, s.c.mask_path).select_from(o.join(s, s.c.id == o.c.series_id))
        .where(o.c.id.in_([h.crop_id for h in hits]))).all())
    roots = {r.id: r.archive_root for r in rows}
    paths = {r.id: r.path for r in rows}
    masks = {r.id: r.mask_path for r in rows}
    cols = min(4, len(hits))
    rows = math.ceil(len(hits) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, h in zip(axes.ravel(), hits):
        title = f"{h.organ} {h.score:.3f}\nstudy …{h.study_uid[-8:]} · {h.patient[:8]}"
        try:
            if None in h.bbox:  # added with add_embeddings without boxes
                raise ConfigError("no organ box stored")
            root = archive_root or roots.get(h.crop_id)
            if root is None or h.crop_id not in paths:
                raise ConfigError("archive root unknown; pass archive_root=")
            vol = load_volume(resolve_within(root, paths[h.crop_id]))
            i0, j0, k0, i1, j1, k1 = h.bbox
            k = (k0 + k1) // 2
            pad = 8
            lo_i, hi_i = max(i0 - pad, 0), min(i1 + pad, vol.shape[0])
            lo_j, hi_j = max(j0 - pad, 0), min(j1 + pad, vol.shape[1])
            kk = min(k, vol.shape[2] - 1)
            win = window if window is not None else organ_window(h.organ)
            img = np.clip(vol.array[lo_i:hi_i, lo_j:hi_j, kk], *win)
            # RAS+ arrays: anterior up and the patient's right on the viewer's left (radiological convention).
            ax.imshow(img.T[::-1, ::-1], cmap="gray", vmin=win[0], vmax=win[1])
            if masks.get(h.crop_id):
                seg = load_segmentation(resolve_within(root, masks[h.crop_id]), like=vol)
                organ_id = seg.ids.get(h.organ)
                if organ_id is not None:
                    m = (seg.array[lo_i:hi_i, lo_j:hi_j, kk] == organ_id).astype(np.float32)
                    if m.any():
                        ax.contour(m.T[::-1, ::-1], levels=[0.5], colors="lime", linewidths=0.8)
            ni, nj = hi_i - lo_i, hi_j - lo_j
            ax.add_patch(Rectangle((ni - (i1 - lo_i) - 0.5, nj - (j1 - lo_j) - 0.5), i1 - i0, j1 - j0,
                                   fill=False, edgecolor="yellow", linewidth=1))
        except (CTGlipError, OSError) as exc:
            ax.text(0.5, 0.5, f"unavailable:\n{getattr(exc, 'reason', exc)}"[:120], ha="center", va="center",
                    wrap=True, fontsize=7, transform=ax.transAxes)
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
