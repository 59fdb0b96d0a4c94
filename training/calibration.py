"""Per-finding calibration: choose each finding's decision threshold on held-out studies, store it in the model."""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ctglip_sdk.errors import ConfigError, InputError
from ctglip_sdk.training.data import (UNSPECIFIED, StudyText, archive_seed, read_reports, read_truth, relative_reason,
                                      report_labels, study_hash)
from ctglip_sdk.training.evaluation import SplitEmbeddings, encode_split, read_splits, require_read
from ctglip_sdk.training.metrics import best_f1_threshold, f1_score

__all__ = ["calibrate", "calibration_labels", "summary_rows"]

log = logging.getLogger(__name__)
PathLike = Union[str, "os.PathLike[str]"]
#: An offset is never set further than this from 0 (logit units): a handful of positives must not be able to
#: push a finding to "always" or "never".
MAX_OFFSET = 8.0


def calibration_labels(emb: SplitEmbeddings, rows: np.ndarray, keys: Sequence[str], source: str, archive: PathLike,
                       dictionary: Any, texts: Optional[Sequence[StudyText]] = None) -> np.ndarray:
    """Label per scored pair: 1 present, 0 absent, -1 unknown (uncertain in the report: left out).

    ``source="reports"`` reads what each study's report says (``ctglip_sdk.reports``, as training does), so
    any archive with reports can calibrate; ``source="truth"`` reads a synthetic archive's truth.jsonl.
    ``texts``: the records' reports already annotated (``read_reports``), so that none is read twice.
    """
    if source == "truth":
        truth = read_truth(archive)
        have = {(s, f.get("organ"), f.get("finding")) for s, rec in enumerate(emb.records)
                for f in truth.get(rec.study_uid, [])}
        return np.array([(int(emb.study[r]), emb.names[r], k) in have for r, k in zip(rows.tolist(), keys)], np.int8)
    if source != "reports":
        raise ConfigError(f"calibration labels come from 'reports' or 'truth', not {source!r}")
    texts = texts if texts is not None else report_labels(emb.records, dictionary)
    out = np.zeros(len(keys), np.int8)
    for i, (r, k) in enumerate(zip(rows.tolist(), keys)):
        st, organ = texts[int(emb.study[r])], emb.names[r]
        if k in st.present.get(organ, ()):
            out[i] = 1
        elif k in st.uncertain.get(organ, ()) or UNSPECIFIED in st.uncertain.get(organ, ()):
            out[i] = -1
    return out


def calibrate(model: Any, archive: PathLike, split: str = "val", *, labels: str = "reports", min_positives: int = 3,
              dictionary: Any = None, progress: bool = False, workers: int = 0, reset: bool = False) -> Dict[str, Any]:
    """Set ``model.calibration`` from one split of an archive and return what was chosen.

    For every finding with at least ``min_positives`` positive organs in the split, the offset is the logit
    threshold that maximises F1 there (``ZeroShotClassifier`` subtracts it, so 0.5 becomes that threshold).
    A finding with fewer positives (or none of its organs) in the split keeps the offset the model already had,
    listed in ``kept_offsets`` (a small local archive must not silently undo a model's thresholds), or 0 with
    ``reset=True`` or when it had none. The split must not be one the model is evaluated on.

    Args:
        model: a CTGlipModel (changed in place; save it with ``save_pretrained``).
        archive: archive root with manifest.csv and reports (and truth.jsonl for ``labels="truth"``).
        split: the held-out split: a name, a comma-separated list or "all" (a separate calibration archive).
        labels: "reports" (parsed reports, any archive) or "truth" (synthetic truth.jsonl).
        min_positives: fewer positives than this leave the finding uncalibrated.
        dictionary: AbnormalityDictionary (default: the built-in one).
        workers: threads that read and preprocess studies ahead of the network (same vectors as 0).
        reset: start from no offsets instead of the model's own.

    With ``labels="reports"``, studies whose report is empty (it states no label) are left out with one
    warning, and studies whose report, image or mask cannot be read, or whose mask lies on another grid, are left
    out, each with a warning, and listed in ``skipped_studies``.

    Returns:
        ``{"archive", "archive_seed", "split", "labels", "n_studies", "skipped_studies", "offsets",
        "kept_offsets", "per_finding"}``: ``offsets`` is every offset the model now has, ``kept_offsets`` those
        kept from before; per finding: offset, F1 at it on the split, positives, negatives, or the reason it was
        not chosen here.

    Example:
        >>> report = calibrate(model, "data/train", split="val")      # doctest: +SKIP
        >>> model.save_pretrained("models/calibrated")                # doctest: +SKIP
    """
    import ctglip_sdk as cg
    from ctglip_sdk.model.zeroshot import ZeroShotClassifier

    if min_positives < 1:
        raise ConfigError(f"min_positives must be >= 1, got {min_positives}")
    if labels not in ("reports", "truth"):  # checked before the split is encoded, not after
        raise ConfigError(f"calibration labels come from 'reports' or 'truth', not {labels!r}")
    dictionary = dictionary if dictionary is not None else cg.AbnormalityDictionary.default()
    records = read_splits(archive, split)
    manifest = os.path.join(archive, "manifest.csv")
    if not records:
        raise InputError(f"no studies in split {split!r} to calibrate on", path=manifest)
    texts: Optional[List[StudyText]] = None
    skipped: List[Tuple[str, str]] = []
    if labels == "reports":  # read before encoding: a study without labels is not worth encoding
        records, texts, skipped = read_reports(records, dictionary, purpose="calibration")
        if not records:
            raise InputError(f"no study of split {split!r} has a readable, non-empty report to calibrate on",
                             path=manifest)
    elif labels == "truth":
        read_truth(archive)  # a missing truth.jsonl is an error before the split is encoded, not after
    model.eval()
    emb = encode_split(model, records, progress, workers)
    require_read(emb, f"split {split!r}", archive, " to calibrate on; the model is unchanged")
    zs = ZeroShotClassifier(model, dictionary, calibrated=False)
    rows, keys, logit = zs.detect_logits(emb.names, emb.vectors)
    lab = calibration_labels(emb, rows, keys, labels, archive, dictionary, texts)
    offsets, per = _offsets(np.asarray(keys), logit, lab, min_positives)
    previous = {} if reset else dict(getattr(model, "calibration", None) or {})
    kept = {k: float(v) for k, v in sorted(previous.items()) if k not in offsets}
    for key, value in kept.items():
        entry = per.setdefault(key, {"n_pos": 0, "n_neg": 0, "reason": "no organ of its type in the split"})
        entry.update(offset=value, reason=f"{entry['reason'].split(':')[0]}: kept the model's previous offset")
    if kept:
        log.warning("%d finding(s) could not be calibrated on this split and keep the model's previous offsets: %s "
                    "(reset=True / --reset sets them to 0)", len(kept), ", ".join(kept))
    model.calibration = {**kept, **offsets}
    # The studies with at least one series read: keyed by row, as one unreadable series of a study with two must not
    # take the other out (nor count a study twice)
    used = list(dict.fromkeys(records[i].study_uid for i in sorted(set(emb.study.tolist()))))
    hashes = {study_hash(u) for u in used}
    old_src = getattr(model, "calibration_source", None)
    if kept and isinstance(old_src, dict):
        # kept offsets were chosen on the earlier studies: evaluation must still see those as in-sample
        hashes |= set(old_src.get("study_hashes") or [])
    model.calibration_source = {"archive": os.fspath(archive), "split": split, "labels": labels,
                                "n_studies": len(used), "study_hashes": sorted(hashes),
                                **({"kept_offsets": sorted(kept)} if kept else {}),
                                **({"previous": {k: v for k, v in old_src.items()
                                                 if k not in ("study_hashes", "previous")}}
                                   if kept and isinstance(old_src, dict) else {})}
    skipped += emb.skipped
    return {"archive": os.fspath(archive), "archive_seed": archive_seed(archive), "split": split, "labels": labels,
            "n_studies": len(used),
            "skipped_studies": [{"study_uid": u, "reason": relative_reason(r, archive)} for u, r in skipped],
            "offsets": dict(model.calibration), "kept_offsets": kept,
            "per_finding": per}


def _offsets(keys: np.ndarray, logit: np.ndarray, lab: np.ndarray,
             min_positives: int) -> Tuple[Dict[str, float], Dict[str, Dict[str, Any]]]:
    offsets: Dict[str, float] = {}
    per: Dict[str, Dict[str, Any]] = {}
    for key in sorted(set(keys.tolist())):
        sel = (keys == key) & (lab >= 0)
        y = lab[sel] == 1
        n_pos, n_neg = int(y.sum()), int((~y).sum())
        entry: Dict[str, Any] = {"n_pos": n_pos, "n_neg": n_neg}
        if n_pos < min_positives or n_neg == 0:
            entry.update(offset=0.0, reason=f"{n_pos} positives / {n_neg} negatives: left uncalibrated")
        else:
            thr, f1 = best_f1_threshold(logit[sel], y)
            off = float(np.clip(thr, -MAX_OFFSET, MAX_OFFSET)) if math.isfinite(thr) else MAX_OFFSET
            if off != thr:  # clipped: the F1 reported is the one the stored offset gives, not the unclipped one's
                f1 = f1_score(logit[sel], y, off)
            offsets[key] = off
            entry.update(offset=offsets[key], f1=round(float(f1), 4))
        per[key] = entry
    return offsets, per


def summary_rows(report: Dict[str, Any]) -> List[Dict[str, Any]]:
    """One row per finding for a table: finding, offset, F1, positives, negatives."""
    return [{"finding": k, "offset": v["offset"], "f1": v.get("f1"), "n_pos": v["n_pos"], "n_neg": v["n_neg"]}
            for k, v in sorted(report["per_finding"].items())]

