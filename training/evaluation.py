"""Zero-shot evaluation on an archive split: organ recognition, abnormality AUC/F1, text->organ retrieval."""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import numpy as np

from ctglip_sdk import organs as vocab
from ctglip_sdk.errors import ConfigError, CTGlipError, InputError
from ctglip_sdk.readahead import read_ahead
from ctglip_sdk.training.data import (StudyRecord, archive_seed, read_manifest, read_truth, relative_reason,
                                      report_split_labels, safe_reason, shared_patients, study_hash)
from ctglip_sdk.training.eval_report import markdown_table, write_reports
from ctglip_sdk.training.metrics import auc, best_f1_threshold, f1_score, retrieval_metrics, roc_curve
from ctglip_sdk.training.objectives import finding_phrasings
from ctglip_sdk.training.runinfo import json_safe

__all__ = ["evaluate", "encode_split", "read_splits", "SplitEmbeddings", "markdown_table", "auc_by_size",
           "auc_by_group", "size_bin_names"]

log = logging.getLogger(__name__)
PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class SplitEmbeddings:
    """Organ vectors of every study in a split, flattened: row r is organ `names[r]` of study `study[r]`."""

    study: np.ndarray           # [R] study index into `records`
    names: List[str]            # [R] organ class names
    vectors: np.ndarray         # [R, D]
    records: List[StudyRecord]
    #: (study_uid, reason) of studies that could not be read: they have no rows, and the run went on.
    skipped: List[Tuple[str, str]] = field(default_factory=list)


def encode_split(model: Any, records: Sequence[StudyRecord], progress: bool = False,
                 workers: int = 0) -> SplitEmbeddings:
    """Encode every labelled organ of each study with the SDK's inference path (load -> encode_organs).

    ``workers`` threads read and preprocess the next studies while the network runs on the current one (as
    the index's ingest does); the vectors are the same as with ``workers=0``: each study still goes through
    ``prepare`` then ``encode_prepared`` alone, which is what ``encode_organs`` does.
    """
    from contextlib import closing

    from tqdm.auto import tqdm

    if workers < 0:
        raise InputError(f"workers must be >= 0, got {workers}")
    study, names, vecs = [], [], []
    skipped: List[Tuple[str, str]] = []
    ahead = read_ahead(lambda rec: _prepare_record(model, rec), records, workers, "ctglip-encode")
    with closing(ahead), tqdm(total=len(records), desc="encode", unit="study", disable=not progress) as bar:
        for i, (rec, fut) in enumerate(ahead):
            try:
                prepared = fut.result()
            except CTGlipError as exc:
                # One unreadable study must not end an evaluation of hundreds: it is left out and listed.
                reason = safe_reason(exc, rec)
                log.warning("study %s left out of the evaluation: %s", rec.study_uid, reason)
                skipped.append((rec.study_uid, reason))
                bar.update(1)
                continue
            emb = model.encode_prepared([prepared], 1)[0]
            study += [i] * len(emb.names)
            names += list(emb.names)
            vecs.append(emb.vectors)
            bar.update(1)
    dim = int(model.embed_dim)
    matrix = np.concatenate(vecs).astype(np.float32) if vecs else np.zeros((0, dim), np.float32)
    return SplitEmbeddings(np.asarray(study, np.int64), names, matrix, list(records), skipped)


def require_read(emb: SplitEmbeddings, what: str, root: Any, hint: str = "") -> None:
    """InputError naming the manifest when studies were listed but none could be read: nothing to measure on."""
    if emb.records and not len(emb.names):
        first = relative_reason(emb.skipped[0][1], root) if emb.skipped else "no organ vectors"
        raise InputError(f"no study of {what} could be read ({len(emb.skipped)} unreadable; the first: {first})"
                         f"{hint}", path=Path(root) / "manifest.csv")


def _prepare_record(model: Any, rec: StudyRecord) -> Any:
    """Load one study's image and labels and run the model's preprocessing (the first half of encode_organs)."""
    import torch

    import ctglip_sdk as cg
    from ctglip_sdk.io import load_listed_volume

    vol = load_listed_volume(rec.image, rec.series)  # the row's series when its folder holds several
    seg = cg.load_segmentation(rec.mask, like=vol, check_grid=True)  # a mask on another grid: left out, as ingest
    with torch.inference_mode():
        return model.prepare(vol, seg)


def _truth_lesions(emb: SplitEmbeddings, truth: Dict[str, List[Dict[str, Any]]]) -> Dict[Tuple[int, Any, Any], float]:
    """(study index, organ, finding) of every truth finding -> its largest focal ``size_mm`` (NaN when not focal).

    A focal lesion is a truth entry with ``center_ras_mm`` and ``size_mm``; diffuse findings have no size bin.
    """
    out: Dict[Tuple[int, Any, Any], float] = {}
    for s, rec in enumerate(emb.records):
        for f in truth.get(rec.study_uid, []):
            focal = f.get("center_ras_mm") is not None and f.get("size_mm") is not None
            k = (s, f.get("organ"), f.get("finding"))
            out[k] = float(np.fmax(out.get(k, np.nan), float(f["size_mm"]) if focal else np.nan))
    return out


def _labels(emb: SplitEmbeddings, truth: Dict[str, List[Dict[str, Any]]], rows: np.ndarray,
            keys: Sequence[str]) -> np.ndarray:
    """1 where truth.jsonl has finding `keys[i]` on organ row `rows[i]` of its study."""
    have = _truth_lesions(emb, truth)
    return np.array([(int(emb.study[r]), emb.names[r], k) in have for r, k in zip(rows.tolist(), keys)], bool)


#: Lesion-size bins (mm) of ``auc_by_size``: below 6 mm a lesion is about one voxel of the 3 x 3 x 5 mm default grid.
SIZE_EDGES_MM = (6.0, 10.0, 20.0)


def _focal_sizes(emb: SplitEmbeddings, truth: Dict[str, List[Dict[str, Any]]], rows: np.ndarray,
                 keys: Sequence[str]) -> np.ndarray:
    """Largest focal ``size_mm`` of finding `keys[i]` on organ row `rows[i]`; NaN when it has none."""
    size = _truth_lesions(emb, truth)
    return np.array([size.get((int(emb.study[r]), emb.names[r], k), np.nan) for r, k in zip(rows.tolist(), keys)],
                    np.float64)


def size_bin_names(edges: Sequence[float] = SIZE_EDGES_MM) -> List[str]:
    """Names of the ``auc_by_size`` bins, smallest first: ``["<6 mm", "6-10 mm", "10-20 mm", ">=20 mm"]``."""
    return [f"<{edges[0]:g} mm"] + [f"{a:g}-{b:g} mm" for a, b in zip(edges, edges[1:])] + [f">={edges[-1]:g} mm"]


def auc_by_size(prob: np.ndarray, lab: np.ndarray, size: np.ndarray,
                edges: Sequence[float] = SIZE_EDGES_MM) -> Dict[str, Dict[str, Any]]:
    """AUC of the positives in each lesion-size bin against every negative: which lesions a model misses.

    Positives without a focal size (diffuse findings) are left out; empty bins are not reported.

    Example:
        >>> auc_by_size(np.array([.9, .2, .8, .1]), np.array([1, 1, 0, 0], bool), np.array([12., 4., np.nan, np.nan]))
        {'<6 mm': {'auc': 0.5, 'n_pos': 1}, '10-20 mm': {'auc': 1.0, 'n_pos': 1}}
    """
    lo = [0.0, *edges]
    hi = [*edges, math.inf]
    names = size_bin_names(edges)
    neg = ~lab
    out: Dict[str, Dict[str, Any]] = {}
    for name, a, b in zip(names, lo, hi):
        pos = lab & (size >= a) & (size < b)
        if pos.any() and neg.any():
            sel = pos | neg
            out[name] = {"auc": auc(prob[sel], lab[sel]), "n_pos": int(pos.sum())}
    return out


def auc_by_group(prob: np.ndarray, lab: np.ndarray, group: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """AUC within each subgroup (e.g. contrast phase): positives and negatives of that group only.

    Returned only when there are at least two non-empty groups; a group without positives or negatives has
    ``auc`` NaN. Subgroup AUCs tell whether a finding's misses are where physics puts them (a water cyst in an
    unenhanced pancreas differs from it by ~30 HU, in the portal venous phase by ~90 HU).

    Example:
        >>> auc_by_group(np.array([.9, .2, .8, .1]), np.array([1, 1, 0, 0], bool), ["a", "b", "b", "a"])
        {'a': {'auc': 1.0, 'n_pos': 1, 'n_neg': 1}, 'b': {'auc': 0.0, 'n_pos': 1, 'n_neg': 1}}
    """
    g = np.asarray(group, dtype=object)
    names = sorted({str(x) for x in g if x})
    if len(names) < 2:
        return {}
    out: Dict[str, Dict[str, Any]] = {}
    for name in names:
        sel = g == name
        n_pos, n_neg = int(lab[sel].sum()), int((~lab[sel]).sum())
        out[name] = {"auc": auc(prob[sel], lab[sel]) if n_pos and n_neg else float("nan"),
                     "n_pos": n_pos, "n_neg": n_neg}
    return out


def _sure(emb: SplitEmbeddings, rows: np.ndarray, keys: Sequence[str], unsure: Set[Tuple[str, str, str]]) -> np.ndarray:
    """False where the report left finding ``keys[i]`` of organ row ``rows[i]`` uncertain."""
    return np.array([(emb.records[int(emb.study[r])].study_uid, emb.names[r], k) not in unsure
                     for r, k in zip(rows.tolist(), keys)], bool)


def _detections(zs: Any, emb: SplitEmbeddings, truth: Dict[str, List[Dict[str, Any]]],
                unsure: Set[Tuple[str, str, str]] = frozenset()):
    # From the logits in float64: float32 probabilities tie at 1.0 from a logit of about 17, which flattened AUC and
    # the threshold search for a model with a large logit scale.
    rows, keys, logit = zs.detect_logits(emb.names, emb.vectors)
    keys, prob = list(keys), 1.0 / (1.0 + np.exp(-np.asarray(logit, np.float64)))
    if unsure:  # report labels: an uncertain statement is neither a positive nor a negative
        keep = _sure(emb, rows, keys, unsure)
        rows, prob, keys = rows[keep], prob[keep], [k for k, ok in zip(keys, keep) if ok]
    return rows, keys, prob, _labels(emb, truth, rows, keys)


def _unscored_positives(emb: SplitEmbeddings, truth: Dict[str, List[Dict[str, Any]]]) -> Dict[str, int]:
    """finding -> positives of read studies whose organ has no vector (the mask lacks it), which no metric sees.

    Real masks miss small organs (a TotalSegmentator run that lost the gallbladder): such a study's gallstones
    are neither a hit nor a miss, so they are counted, warned about and reported beside the metrics.
    """
    have = set(zip(emb.study.tolist(), emb.names))
    out: Dict[str, int] = {}
    for s in sorted(set(emb.study.tolist())):
        for f in truth.get(emb.records[s].study_uid, []):
            organ, key = f.get("organ"), f.get("finding")
            if not isinstance(organ, str) or not vocab.is_known(organ) or not isinstance(key, str):
                continue
            if not any((s, o) in have for o in vocab.expand(organ)):
                out[key] = out.get(key, 0) + 1
    if out:
        log.warning("%d positive(s) are on organs the masks lack and are not scored (%s): see unscored_positives",
                    sum(out.values()), ", ".join(f"{k} {n}" for k, n in sorted(out.items())))
    return out


def _calibration_overlap(model: Any, records: Sequence[StudyRecord]) -> Optional[Dict[str, Any]]:
    """Where the model's own thresholds were chosen, and how many scored studies were among them (then
    ``f1_at_model_threshold`` is in-sample for those); None for a model saved without that record."""
    src = getattr(model, "calibration_source", None)
    if not isinstance(src, dict) or not isinstance(src.get("study_hashes"), list):
        return None
    overlap = len({study_hash(r.study_uid) for r in records} & set(src["study_hashes"]))
    if overlap:
        log.warning("%d scored studies calibrated this model's thresholds: F1 at the model's thresholds is "
                    "in-sample for them", overlap)
    return {"archive": src.get("archive"), "split": src.get("split"), "n_studies": src.get("n_studies"),
            "scored_studies_among_them": overlap}


def _check_truth_covers(records: Sequence[StudyRecord], truth: Dict[str, Any], root: Path) -> None:
    """truth.jsonl is matched by study_uid: a manifest rewritten with other UIDs (``ctglip manifest --force`` on a
    NIfTI archive keys studies by path) used to score nothing and report ``auc_mean: None`` without a word."""
    missing = [r.study_uid for r in records if r.study_uid not in truth]
    if len(missing) == len(records):
        raise InputError(f"none of the {len(records)} studies has an entry in truth.jsonl (matched by study_uid, "
                         f"e.g. {missing[0][:60]!r}); was manifest.csv rewritten? (--labels reports reads the "
                         "reports instead)", path=root / "truth.jsonl")
    if missing:
        log.warning("%d of %d studies have no entry in truth.jsonl: they count as having no finding",
                    len(missing), len(records))


def read_splits(archive: PathLike, split: Optional[str]) -> List[StudyRecord]:
    """Records of one split, of several ("train,test") or of every study ("all")."""
    if split is None:
        return []
    return read_manifest(archive, split)


def evaluate(model: Any, archive: PathLike, split: str = "test", val_split: Optional[str] = "val",
             out_dir: Optional[PathLike] = None, *, val_archive: Optional[PathLike] = None, dictionary: Any = None,
             progress: bool = False, val_embeddings: Optional[SplitEmbeddings] = None, workers: int = 0,
             labels: str = "truth") -> Dict[str, Any]:
    """Zero-shot metrics of a model on one split of an archive, against truth.jsonl or the reports.

    - ``organ_top1``: each labelled organ's vector classified over the 104 organ names (as
      ``ZeroShotClassifier.identify_organs``); ``organ_top1_within_study`` restricts the names to the
      organs labelled in that study.
    - ``per_finding``: for each finding, ``ZeroShotClassifier`` probabilities on every organ it applies to;
      AUC (Mann-Whitney) and F1 at the threshold that maximises F1 on ``val_split`` (0.5 when that split has
      no positive); ``f1_at_model_threshold`` is F1 at probability 0.5, the decision of the model's own
      calibration. ``auc_mean``/``auc_min``/``f1_mean``/``f1_mean_model_thresholds`` over findings with at
      least one positive.
    - ``retrieval``: each positive phrasing of each finding queries the organs of that finding's organ type
      in the split; relevant = organs with the finding in truth. ``r@k`` = share of queries with a relevant
      organ in the top k; ``map`` = mean average precision.

    Args:
        model: a CTGlipModel, or a model folder / registered name for ``cg.load``.
        archive: archive root with manifest.csv and truth.jsonl (or reports, with ``labels="reports"``).
        split: the split to score: a name, a comma-separated list ("train,test") or "all".
        val_split: the split used to choose thresholds (None: 0.5 everywhere); it must hold studies, and must
            not overlap `split` unless `val_archive` is another archive.
        val_archive: take `val_split` from this archive instead (e.g. the training archive's unused val split
            when every study of a fresh held-out archive is scored).
        out_dir: when given, metrics.json, results.md and roc.png are written there.
        dictionary: AbnormalityDictionary (default: the built-in one).
        val_embeddings: ``encode_split(model, read_splits(val_archive, val_split))`` from an earlier call, so one
            calibration archive serving several evaluations is encoded once; it must hold exactly the val
            split's studies. (The val split is also not encoded again when it is the scored split itself.)
        workers: threads that read and preprocess studies ahead of the network (``encode_split``).
        labels: ``"truth"`` (a synthetic archive's truth.jsonl) or ``"reports"``: the findings each study's
            report states (``read_reports``, as training reads them), for archives of your own. Organ and
            finding pairs a report leaves uncertain are left out of AUC, F1 and retrieval; studies with an empty
            report are left out, and those with an unreadable one are listed in ``skipped_studies``.

    Example:
        >>> m = evaluate("ctglip-tiny-synthetic", "heldout/", out_dir="eval/")  # doctest: +SKIP
        >>> m["auc_mean"], m["retrieval"]["r@5"]                                # doctest: +SKIP
    """
    import ctglip_sdk as cg
    from ctglip_sdk.model.zeroshot import ZeroShotClassifier

    t0 = time.perf_counter()
    if not hasattr(model, "encode_organs"):
        model = cg.load(model)
    model.eval()
    if dictionary is None:
        dictionary = cg.AbnormalityDictionary.default()
    zs = ZeroShotClassifier(model, dictionary)
    if labels not in ("truth", "reports"):
        raise ConfigError(f"evaluation labels come from 'truth' or 'reports', not {labels!r}")
    truth = read_truth(archive) if labels == "truth" else {}
    records = read_splits(archive, split)
    if not records:
        raise InputError(f"no studies in split {split!r}", path=Path(archive) / "manifest.csv")
    if labels == "truth":
        _check_truth_covers(records, truth, Path(archive))
    val_root = val_archive if val_archive is not None else archive
    val_records = read_splits(val_root, val_split)
    if val_split is not None and not val_records:
        # As for `split`: a misspelt name must not quietly leave every finding at the default 0.5 threshold.
        raise InputError(f"no studies in val split {val_split!r} to choose thresholds on; name a split that has "
                         "studies, or pass val_split=None (CLI: --val-split none) to keep 0.5",
                         path=Path(val_root) / "manifest.csv")
    if val_archive is None and {r.study_uid for r in val_records} & {r.study_uid for r in records}:
        raise InputError(f"val split {val_split!r} overlaps the scored split {split!r}: thresholds would be "
                         "chosen on test data", path=Path(archive) / "manifest.csv")
    val_truth = read_truth(val_root) if val_archive is not None and labels == "truth" else truth
    unsure: Set[Tuple[str, str, str]] = set()
    unread: List[Tuple[str, str]] = []
    if labels == "reports":  # each report read once; empty or unreadable ones leave their study out
        records, val_records, truth, unsure, unread = report_split_labels(
            records, val_records, dictionary, split, val_split, Path(archive) / "manifest.csv",
            Path(val_root) / "manifest.csv")
        val_truth = truth
    other = val_archive is not None and Path(val_root).resolve() != Path(archive).resolve()  # else in the manifest
    shared = shared_patients(records, archive, f"scored split {split!r}",
                             {f"val_archive split {val_split!r}": val_records} if other else None)
    uids = [r.study_uid for r in val_records]
    same_studies = uids == [r.study_uid for r in records] and Path(val_root).resolve() == Path(archive).resolve()
    # Thresholds chosen on (some of) the scored studies: allowed (a calibration archive scored with itself), but
    # said in the metrics and the table, since F1 is then optimistic.
    in_sample = Path(val_root).resolve() == Path(archive).resolve() and bool(
        set(uids) & {r.study_uid for r in records})
    if in_sample:
        log.warning("%s: F1 thresholds are chosen on studies that are also scored (val split %r overlaps split %r):"
                    " F1 is in-sample", archive, val_split, split)
    if val_embeddings is not None and [r.study_uid for r in val_embeddings.records] != uids:
        raise InputError(f"val_embeddings do not hold the studies of val split {val_split!r}",
                         path=Path(val_root) / "manifest.csv")
    if val_embeddings is not None and same_studies:
        test = val_embeddings  # scored with in-sample thresholds from an earlier encoding of these studies
    else:
        test = encode_split(model, records, progress, workers)
    require_read(test, f"split {split!r}", archive)  # metrics of no study are not metrics (they were all null)
    if val_embeddings is not None:
        val = val_embeddings
    elif val_records and same_studies:
        val = test  # thresholds chosen on the scored studies themselves (in-sample): encode them once
    else:
        val = encode_split(model, val_records, progress, workers) if val_records else None
    if val is not None and val is not test:
        # As for an empty val split: thresholds would all fall back to 0.5 without a word.
        require_read(val, f"val split {val_split!r}", val_root,
                     "; fix them, or pass val_split=None (CLI: --val-split none) to keep 0.5")
    val_skipped = [] if val is None or val is test else val.skipped

    # Organ recognition.
    probs = zs.identify_vectors(test.vectors) if len(test.names) else np.zeros((0, len(vocab.ORGANS)))
    index = {o: i for i, o in enumerate(vocab.ORGANS)}
    known = np.array([n in index for n in test.names], bool)
    true_idx = np.array([index.get(n, -1) for n in test.names])
    top1 = float((probs.argmax(1) == true_idx)[known].mean()) if known.any() else float("nan")
    within = []
    for s in np.unique(test.study):
        rows = np.flatnonzero((test.study == s) & known)
        cols = true_idx[rows]
        within += (cols[probs[np.ix_(rows, cols)].argmax(1)] == cols).tolist()
    top1_within = float(np.mean(within)) if within else float("nan")

    # Abnormality detection.
    t_rows, t_keys, t_prob, t_lab = _detections(zs, test, truth, unsure)
    t_size = _focal_sizes(test, truth, t_rows, t_keys)
    t_phase = np.array([test.records[int(test.study[r])].contrast for r in t_rows.tolist()], dtype=object)
    v_keys, v_prob, v_lab = ([], np.zeros(0), np.zeros(0, bool))
    if val is not None and len(val.names):
        _, v_keys, v_prob, v_lab = _detections(zs, val, val_truth, unsure)
    unscored = _unscored_positives(test, truth)
    per: Dict[str, Dict[str, Any]] = {}
    t_keys_a, v_keys_a = np.asarray(t_keys), np.asarray(v_keys)
    curves = {}
    for key in sorted(set(t_keys)):
        sel = t_keys_a == key
        vs = v_keys_a == key
        thr, source = 0.5, "default"
        if vs.any() and v_lab[vs].any():
            thr, _ = best_f1_threshold(v_prob[vs], v_lab[vs])
            source = val_split
        n_pos = int(t_lab[sel].sum())
        entry = {"auc": auc(t_prob[sel], t_lab[sel]), "f1": f1_score(t_prob[sel], t_lab[sel], thr) if n_pos else
                 float("nan"), "n_pos": n_pos, "n_neg": int((~t_lab[sel]).sum()), "threshold": float(thr),
                 "threshold_from": source,
                 # The decision the model ships with (its calibration puts its own threshold at 0.5): what
                 # `score` and `cohort` call present.
                 "f1_at_model_threshold": f1_score(t_prob[sel], t_lab[sel], 0.5) if n_pos else float("nan"),
                 "n_pos_unscored": unscored.get(key, 0)}
        if np.isfinite(t_size[sel & t_lab]).any():  # focal findings: where the misses are, by lesion size
            entry["auc_by_size"] = auc_by_size(t_prob[sel], t_lab[sel], t_size[sel])
        by_phase = auc_by_group(t_prob[sel], t_lab[sel], t_phase[sel]) if n_pos else {}
        if by_phase:
            entry["auc_by_contrast"] = by_phase
        per[key] = entry
        if n_pos and entry["n_neg"]:
            curves[key] = roc_curve(t_prob[sel], t_lab[sel])[:2]
    # Both means over the same findings: those with positives and negatives among the scored organs (a finding with
    # no negative has an F1 but no AUC).
    both = [v for v in per.values() if math.isfinite(v["auc"])]
    aucs = [v["auc"] for v in both]
    f1s = [v["f1"] for v in both if math.isfinite(v["f1"])]
    f1s_model = [v["f1_at_model_threshold"] for v in both if math.isfinite(v["f1_at_model_threshold"])]

    retrieval = _retrieval(model, dictionary, test, truth, unsure)
    metrics = {
        "model": model.name, "model_config_hash": model.config_hash, "archive": os.fspath(archive),
        "archive_seed": archive_seed(archive), "labels": labels, "split": split, "val_split": val_split,
        "val_archive": os.fspath(val_archive) if val_archive is not None else None,
        # studies with at least one series read, each once (as calibrate counts them)
        "n_studies": len({test.records[i].study_uid for i in set(test.study.tolist())}), "n_organs": len(test.names),
        "patients_shared": shared,
        "skipped_studies": [{"study_uid": u, "reason": relative_reason(r, archive)} for u, r in unread + test.skipped],
        "val_skipped_studies": [{"study_uid": u, "reason": relative_reason(r, val_root)} for u, r in val_skipped],
        "unscored_positives": dict(sorted(unscored.items())),
        "organ_top1": top1, "organ_top1_within_study": top1_within,
        "auc_mean": float(np.mean(aucs)) if aucs else float("nan"),
        "auc_min": float(np.min(aucs)) if aucs else float("nan"),
        "f1_mean": float(np.mean(f1s)) if f1s else float("nan"),
        "f1_mean_model_thresholds": float(np.mean(f1s_model)) if f1s_model else float("nan"),
        "n_findings": len(both), "thresholds_in_sample": in_sample,
        "model_calibration": _calibration_overlap(model, records),
        "per_finding": per, "retrieval": retrieval, "seconds": round(time.perf_counter() - t0, 1),
    }
    metrics = json_safe(metrics)  # null, not NaN: strict JSON readers refuse a bare NaN
    if out_dir is not None:
        write_reports(metrics, Path(out_dir), curves)
    return metrics


def _retrieval(model: Any, dictionary: Any, emb: SplitEmbeddings, truth: Dict[str, List[Dict[str, Any]]],
               unsure: Set[Tuple[str, str, str]] = frozenset()) -> Dict[str, float]:
    queries: List[Tuple[np.ndarray, np.ndarray]] = []
    keys_of: Dict[str, set] = {}
    for n in set(emb.names):
        try:
            keys_of[n] = {e.key for e in dictionary.for_organ(n)}
        except Exception:  # noqa: BLE001 - organs the dictionary has no findings for
            keys_of[n] = set()
    for entry in sorted(dictionary.findings(), key=lambda e: e.key):
        cand = np.flatnonzero([entry.key in keys_of[n] for n in emb.names]).astype(np.int64)
        if unsure and cand.size:
            cand = cand[_sure(emb, cand, [entry.key] * cand.size, unsure)]
        if not cand.size:
            continue
        relevant = _labels(emb, truth, cand, [entry.key] * cand.size)
        if not relevant.any():
            continue
        phrasings, _ = finding_phrasings(dictionary, entry.key)
        q = model.encode_text(phrasings)
        scores = q @ emb.vectors[cand].T
        queries += [(s, relevant) for s in scores]
    return retrieval_metrics(queries, ks=(1, 5, 10))
