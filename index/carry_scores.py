"""Scores of a re-ingested series whose organs came out the same: kept for the new organ ids, not dropped."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from sqlalchemy import select
from sqlalchemy.engine import Connection

if TYPE_CHECKING:  # pragma: no cover
    from .archive import ArchiveIndex

__all__ = ["scores_to_carry", "insert_carried"]

# Two encodings of the same pixels differ by float rounding at most (batch composition, thread count); both are
# stored as float16, whose step near the largest unit-vector components is ~5e-4. Any change of the pixels or the
# mask that moves an organ's vector by more than this is a different organ, whose old scores are dropped.
_SAME_VECTOR = 2e-3
_BOX = ("i0", "j0", "k0", "i1", "j1", "k1")


def scores_to_carry(conn: Connection, index: "ArchiveIndex", series_uid: str, names: Sequence[str],
                    vectors: np.ndarray, bboxes: Optional[np.ndarray],
                    volumes_ml: Optional[np.ndarray]) -> List[Tuple[int, str, str, float]]:
    """``(row j of the new organs, finding, model_hash, probability)`` of the stored series' scores, when every
    organ of the series comes out of the new encoding as it was stored: the same organ names, boxes, volumes and
    (within float16 rounding) vectors. Otherwise [] (the old scores go with the old organs, as before).

    Why: a series whose files were only touched (copied without ``-a``, ``touch``) has a new fingerprint and is
    re-embedded with new organ ids; the scores another classifier stored with ``insert_scores`` (which ``score()``
    cannot recompute) were deleted with the old ids. Called inside the ingest transaction, before the old series
    is deleted; ``vectors`` are the new unit vectors as stored (float16-rounded).
    """
    t = index.store.t
    sid = conn.execute(select(t.series.c.id).where(t.series.c.series_uid == series_uid)).scalar()
    if sid is None:
        return []
    old = conn.execute(select(t.organs.c.id, t.organs.c.organ, t.organs.c.volume_ml,
                              *(t.organs.c[c] for c in _BOX)).where(t.organs.c.series_id == sid)
                       .order_by(t.organs.c.id)).all()
    if [r[1] for r in old] != list(names):
        return []
    ids = np.asarray([int(r[0]) for r in old], np.int64)
    if not conn.execute(select(t.scores.c.organ_id).where(t.scores.c.organ_id.in_(ids.tolist())).limit(1)).first():
        return []  # nothing to keep: the common case costs one query
    for j, r in enumerate(old):
        box = tuple(r[3:9])
        new_box = (None,) * 6 if bboxes is None else tuple(int(v) for v in bboxes[j])
        if box != new_box:
            return []
        vol = None if volumes_ml is None else float(volumes_ml[j])
        if (r[2] is None) != (vol is None) or (vol is not None and not np.isclose(r[2], vol, rtol=1e-6, atol=1e-9)):
            return []
    try:
        stored = index.vectors.gather(ids)
    except Exception:  # noqa: BLE001 - a vector missing from the file: nothing can be compared, keep nothing
        return []
    if stored.shape != vectors.shape or float(np.max(np.abs(stored - vectors), initial=0.0)) > _SAME_VECTOR:
        return []
    row_of: Dict[int, int] = {int(i): j for j, i in enumerate(ids)}
    rows = conn.execute(select(t.scores.c.organ_id, t.scores.c.finding, t.scores.c.model_hash,
                               t.scores.c.probability).where(t.scores.c.organ_id.in_(ids.tolist()))).all()
    return [(row_of[int(r[0])], str(r[1]), str(r[2]), float(r[3])) for r in rows]


def insert_carried(conn: Connection, index: "ArchiveIndex", new_ids: Sequence[int],
                   carried: Sequence[Tuple[int, str, str, float]]) -> None:
    """Store carried scores under the new organ ids (same finding, model_hash and probability)."""
    if carried:
        rows: List[Dict[str, Any]] = [{"organ_id": int(new_ids[j]), "finding": f, "model_hash": h, "probability": p}
                                      for j, f, h, p in carried]
        conn.execute(index.store.t.scores.insert(), rows)
