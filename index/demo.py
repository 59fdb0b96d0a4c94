"""The end-to-end demo: synthetic archive -> bundled model -> index -> searches, scoring, cohort -> report."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

from ctglip_sdk import organs

from .nlq import parse_query

__all__ = ["DemoQuery", "DEFAULT_QUERIES", "run_demo", "load_truth"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoQuery:
    """A cohort-discovery question and the dictionary finding whose ground truth judges its hits."""

    question: str
    finding: str


DEFAULT_QUERIES: Tuple[DemoQuery, ...] = (
    DemoQuery("kidney stone", "renal_stone"),
    DemoQuery("fatty liver in women over 60", "hepatic_steatosis"),
    DemoQuery("enlarged spleen", "splenomegaly"),
    DemoQuery("gallstones", "gallstones"),
    DemoQuery("renal cyst", "renal_cyst"),
)
DEFAULT_COHORT = {"all_of": ["hepatic_steatosis"], "none_of": ["splenomegaly"]}


def planted_cases(queries: Sequence[DemoQuery], n_patients: int) -> Dict[int, Dict[str, Any]]:
    """One patient per question who answers it (its finding, and sex/age inside its filters), spread over the
    archive; every other patient is drawn at random. At 30 patients and ~20 % prevalence a filtered question
    ("... in women over 60") otherwise often has no right answer to find.

    Example:
        >>> planted_cases([DemoQuery("fatty liver in women over 60", "hepatic_steatosis")], 30)
        {0: {'findings': ['hepatic_steatosis'], 'sex': 'F', 'age': 65}}
    """
    if n_patients < len(queries):
        return {}
    step = n_patients // max(len(queries), 1)
    out: Dict[int, Dict[str, Any]] = {}
    for i, q in enumerate(queries):
        where = parse_query(q.question).where or {}
        spec: Dict[str, Any] = {"findings": [q.finding]}
        if where.get("sex") in ("F", "M"):
            spec["sex"] = where["sex"]
        age = where.get("age")
        if isinstance(age, tuple) and len(age) == 2:
            lo, hi = age
            spec["age"] = int(lo + 5 if hi is None else (lo + hi) // 2) if lo is not None else int(hi) - 5
        out[i * step] = spec
    return out


def load_truth(archive: Union[str, Path]) -> Dict[str, Set[Tuple[str, str]]]:
    """``truth.jsonl`` of a synthetic archive -> {study_uid: {(organ class, finding key), ...}}."""
    out: Dict[str, Set[Tuple[str, str]]] = {}
    with open(Path(archive) / "truth.jsonl", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rec = json.loads(line)
                out[rec["study_uid"]] = {(f["organ"], f["finding"]) for f in rec.get("findings", [])}
    return out


def _patients_with(truth_rows: List[dict], finding: str) -> Set[str]:
    return {r["study_uid"] for r in truth_rows if any(f["finding"] == finding for f in r.get("findings", []))}


@dataclass
class DemoResult:
    """Everything the demo did, for printing (CLI) or inspection (tests)."""

    out_dir: Path
    archive: Path
    index_dir: Path
    model: str
    ingest: Dict[str, Any]
    searches: List[Dict[str, Any]] = field(default_factory=list)
    scoring: Dict[str, Any] = field(default_factory=dict)
    cohort: Dict[str, Any] = field(default_factory=dict)
    montage: Optional[Path] = None
    report: Optional[Path] = None
    seconds: Dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {"out_dir": str(self.out_dir), "archive": str(self.archive), "index": str(self.index_dir),
                "model": self.model, "ingest": self.ingest, "searches": self.searches, "scoring": self.scoring,
                "cohort": self.cohort, "montage": str(self.montage) if self.montage else None,
                "report": str(self.report) if self.report else None, "seconds": self.seconds}


def _judge_hits(results: Any, finding: str, truth: Dict[str, Set[Tuple[str, str]]]) -> List[Dict[str, Any]]:
    hits = []
    for h in results:
        true = (h.organ, finding) in truth.get(h.study_uid, set())
        hits.append({"crop_id": h.crop_id, "organ": h.organ, "score": round(float(h.score), 4),
                     "study_uid": h.study_uid, "patient": h.patient, "age": h.age, "sex": h.sex, "correct": true})
    return hits


def _warn_if_other_archive(archive: Path, n_patients: int, seed: int, preset: str) -> None:
    """Re-runs reuse the archive: say so when it was made with other settings than the ones asked for now."""
    try:
        made = json.loads((archive / "synth.json").read_text())
    except (OSError, ValueError):
        return
    preset_name = made.get("preset", {}).get("name") if isinstance(made.get("preset"), dict) else made.get("preset")
    asked = {"seed": seed, "n_patients": n_patients, "preset": preset}
    had = {"seed": made.get("seed"), "n_patients": made.get("n_patients"), "preset": preset_name}
    differ = [f"{k} {had[k]} (asked {asked[k]})" for k in asked if had[k] != asked[k]]
    if differ:
        log.warning("reusing the archive in %s, made with %s; use another --out (or delete it) for the new "
                    "settings", archive, ", ".join(differ))


def run_demo(out_dir: Union[str, Path] = "demo-output", n_patients: int = 30, seed: int = 2026,
             model: str = "ctglip-tiny-synthetic", preset: str = "default", k: int = 5,
             queries: Sequence[DemoQuery] = DEFAULT_QUERIES, montage: bool = True,
             progress: bool = True) -> DemoResult:
    """Run the whole product once on a fresh synthetic archive and judge the answers against its truth.

    Re-running reuses the archive and the index already in ``out_dir`` (ingest is idempotent).

    Example:
        >>> res = run_demo("/tmp/demo", n_patients=6, preset="small", montage=False)  # doctest: +SKIP
        >>> res.searches[0]["precision"]                                             # doctest: +SKIP
    """
    import ctglip_sdk as cg  # noqa: PLC0415 - heavy modules load only when the demo runs

    from .archive import ArchiveIndex  # noqa: PLC0415

    out = Path(out_dir)
    archive, index_dir = out / "archive", out / "index"
    seconds: Dict[str, float] = {}
    t = time.perf_counter()
    if not (archive / "manifest.csv").exists():
        cg.synth.generate_archive(archive, n_patients=n_patients, seed=seed, fmt="dicom", preset=preset,
                                  cases=planted_cases(queries, n_patients), progress=progress, workers=2)
    else:
        _warn_if_other_archive(archive, n_patients, seed, preset)
    seconds["synth"] = time.perf_counter() - t
    truth = load_truth(archive)
    truth_rows = [json.loads(line) for line in (archive / "truth.jsonl").read_text().splitlines() if line.strip()]

    t = time.perf_counter()
    if (index_dir / "manifest.json").exists():
        idx = ArchiveIndex.open(index_dir)
    else:
        idx = ArchiveIndex.create(index_dir, model=cg.load(model))
    report = idx.ingest(archive, progress=progress)
    seconds["ingest"] = time.perf_counter() - t

    t = time.perf_counter()
    searches = []
    for q in queries:
        parsed = parse_query(q.question)
        res = idx.search(parsed.text, k=k, organ=parsed.organ, where=parsed.where or None)
        hits = _judge_hits(res, q.finding, truth)
        n_true = sum(1 for s, fs in truth.items() if any(f == q.finding for _, f in fs))
        # Every organ that passes the question's filters, judged too: how many right answers exist at all (a
        # precision@5 of 0.2 is perfect when only one woman over 60 has a fatty liver) and where they rank.
        pool = _judge_hits(idx.search(parsed.text, k=max(len(idx), 1), organ=parsed.organ,
                                      where=parsed.where or None), q.finding, truth)
        ranks = [i for i, h in enumerate(pool, 1) if h["correct"]]
        found = sum(h["correct"] for h in hits)
        searches.append({"question": q.question, "parsed": parsed.to_dict(), "finding": q.finding, "hits": hits,
                         "precision": (found / len(hits)) if hits else None,
                         "relevant": len(ranks), "candidates": len(pool), "relevant_ranks": ranks,
                         "recall": (found / min(len(hits), len(ranks))) if hits and ranks else None,
                         "studies_with_finding": n_true, "ranking": res.ranking, "_results": res})
    seconds["search"] = time.perf_counter() - t

    t = time.perf_counter()
    scoring = idx.score()
    cohort_res = idx.cohort(**DEFAULT_COHORT, level="study")
    found = set(cohort_res.ids)
    expected = _patients_with(truth_rows, DEFAULT_COHORT["all_of"][0]) - set().union(
        *(_patients_with(truth_rows, f) for f in DEFAULT_COHORT["none_of"]))
    cohort = {**DEFAULT_COHORT, "found": len(found), "expected": len(expected),
              "true_positives": len(found & expected),
              "precision": len(found & expected) / len(found) if found else None,
              "recall": len(found & expected) / len(expected) if expected else None}
    seconds["score_and_cohort"] = time.perf_counter() - t

    montage_path = None
    if montage and searches and len(searches[0]["_results"]):
        try:
            from .montage import save_montage  # noqa: PLC0415

            montage_path = save_montage(idx, searches[0]["_results"], out / "montage.png")
        except cg.CTGlipError as exc:  # matplotlib missing: the demo still reports its answers
            log.warning("montage skipped: %s", exc)
    for s in searches:
        s.pop("_results")
    result = DemoResult(out_dir=out, archive=archive, index_dir=index_dir, model=idx.model.name,
                        ingest=report.to_dict(), searches=searches,
                        scoring={k: v for k, v in scoring.items() if not isinstance(v, (list, dict))},
                        cohort=cohort, montage=montage_path, seconds={k: round(v, 2) for k, v in seconds.items()})
    result.report = _write_markdown(result)
    idx.close()
    return result


def _write_markdown(res: DemoResult) -> Path:
    lines = ["# ctglip demo report", "",
             f"Synthetic archive `{res.archive}` (phantoms, not patients), model `{res.model}`, index "
             f"`{res.index_dir}`.", "",
             f"Ingest: {res.ingest.get('n_ok', res.ingest.get('ok', '?'))} series embedded, "
             f"{res.ingest.get('n_errors', 0)} errors. Timings (s): {res.seconds}.", ""]
    for s in res.searches:
        p, r, n = s["precision"], s["recall"], len(s["hits"])
        lines += [f"## \"{s['question']}\"", "",
                  f"Parsed as text `{s['parsed']['text']}`, organ {s['parsed']['organ']}, filters "
                  f"{s['parsed']['where'] or 'none'}; judged against `{s['finding']}` "
                  f"({s['studies_with_finding']} studies have it; {s['relevant']} of the {s['candidates']} organs "
                  f"that pass the filters, at ranks {s['relevant_ranks'] or '-'}). Precision@{n}: "
                  f"{'n/a' if p is None else f'{p:.2f}'}; recall@{n} (of what {n} hits could hold): "
                  f"{'n/a' if r is None else f'{r:.2f}'}; ranked by {s['ranking']}.", "",
                  "| rank | organ | score | patient | age | sex | truth |", "|---|---|---|---|---|---|---|"]
        for i, h in enumerate(s["hits"], 1):
            lines.append(f"| {i} | {organs.display_name(h['organ'])} | {h['score']:.3f} | {h['patient'][:8]} | "
                         f"{h['age']} | {h['sex']} | {'correct' if h['correct'] else 'wrong'} |")
        lines.append("")
    c = res.cohort
    lines += ["## Cohort", "", f"all_of={c['all_of']} none_of={c['none_of']}: {c['found']} studies found, "
              f"{c['expected']} expected by the truth, {c['true_positives']} in both.", ""]
    if res.montage:
        lines += [f"![top hits]({res.montage.name})", ""]
    path = res.out_dir / "demo-report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
