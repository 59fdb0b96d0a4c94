"""Label-extraction quality: hand-written sentences (micro F1) and synthetic reports against truth.jsonl."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from ctglip_sdk import organs
from ctglip_sdk.reports import AbnormalityDictionary, Status, parse_report

DATA = Path(__file__).parent / "data" / "report_sentences.txt"

# Shared finding keys of synth truth.jsonl (COMMON.md); the dictionary's extra findings are not in the truth.
SHARED_KEYS = {
    "liver_cyst", "hepatic_steatosis", "hepatomegaly", "liver_calcification", "liver_mass", "gallstones",
    "gallbladder_wall_thickening", "renal_cyst", "renal_stone", "hydronephrosis", "renal_atrophy",
    "pancreatic_atrophy", "pancreatic_cyst", "pancreatic_duct_dilation", "splenomegaly", "splenic_calcification",
    "lung_nodule", "emphysema", "pleural_effusion", "adrenal_nodule", "aortic_calcification", "aortic_aneurysm",
    "bladder_wall_thickening",
}


def _load_cases():
    cases = []
    for n, line in enumerate(DATA.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        text, sep, expected = line.partition("||")
        assert sep, f"line {n}: missing '||'"
        want = set()
        for part in filter(None, (p.strip() for p in expected.split(";"))):
            organ, finding, status = part.split(":")
            assert organs.is_known(organ) and status in ("present", "absent", "uncertain"), f"line {n}: {part}"
            want.add((organ, None if finding == "-" else finding, status))
        cases.append((text.strip().replace("\\n", "\n"), want))
    return cases


CASES = _load_cases()


def test_hand_written_set_is_broad():
    """At least 150 cases, every default finding and every negation/uncertainty form appears."""
    assert len(CASES) >= 150
    keys = {f for _, want in CASES for _, f, _ in want if f}
    assert keys >= set(AbnormalityDictionary.default().keys())
    text = " ".join(t.lower() for t, _ in CASES)
    for cue in ("no ", "without", "no evidence of", "negative for", "free of", "resolved", "absence of",
                "not seen", "excluded", "unlikely", "no longer", "cannot exclude", "cannot be excluded", "possibly",
                "possible", "likely", "probable", "too small to characterise", "too small to characterize",
                "questionable", "suspicious for", "concerning for", "may represent", "vs.", "borderline",
                "no change", "not only", "no significant change", "unchanged", "stable", "oesophagus",
                "haemangioma", "tumour", "calcific", "calcified", "?"):
        assert cue in text, cue
    statuses = Counter(s for _, want in CASES for _, _, s in want)
    assert min(statuses.values()) >= 25, statuses


def test_hand_written_sentences_micro_f1():
    tp = fp = fn = 0
    misses = []
    for text, want in CASES:
        got = {(f.organ, f.finding, f.status.value) for f in parse_report(text)}
        tp, fp, fn = tp + len(got & want), fp + len(got - want), fn + len(want - got)
        if got != want:
            misses.append((text, sorted(want - got, key=str), sorted(got - want, key=str)))
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    f1 = 2 * precision * recall / (precision + recall)
    print(f"hand-written: {len(CASES)} cases, P={precision:.3f} R={recall:.3f} F1={f1:.3f}, {len(misses)} differ")
    assert f1 >= 0.9, misses


def _finding_scores(root: Path):
    """Per finding key: tp/fp/fn over studies, and the same with organs (a predicted group covers its members)."""
    truth = {}
    for line in (root / "truth.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            truth[rec["study_uid"]] = rec
    by_key = {k: Counter() for k in SHARED_KEYS}
    organ_level = Counter()
    with open(root / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        text = (root / row["report"]).read_text(encoding="utf-8")
        found = [f for f in parse_report(text) if f.finding in SHARED_KEYS and f.status is not Status.ABSENT]
        want = {f["finding"] for f in truth[row["study_uid"]]["findings"]} & SHARED_KEYS
        got = {f.finding for f in found}
        for key in want | got:
            by_key[key]["tp" if key in want and key in got else "fn" if key in want else "fp"] += 1
        want_organs = {(f["finding"], f["organ"]) for f in truth[row["study_uid"]]["findings"]
                       if f["finding"] in SHARED_KEYS}
        covered = {(f.finding, m) for f in found for m in organs.expand(f.organ)}
        organ_level["tp"] += len(want_organs & covered)
        organ_level["fn"] += len(want_organs - covered)
        organ_level["fp"] += sum(1 for f in found
                                 if not any((f.finding, m) in want_organs for m in organs.expand(f.organ)))
    return len(rows), by_key, organ_level


def _f1(c: Counter) -> float:
    return 2 * c["tp"] / max(1, 2 * c["tp"] + c["fp"] + c["fn"])


@pytest.mark.slow
def test_synthetic_reports_against_truth(tmp_path):
    """Label extraction on a synthetic archive: micro F1 >= 0.98 over the shared finding keys."""
    synth = pytest.importorskip("ctglip_sdk.synth")
    root = tmp_path / "archive"
    synth.generate_archive(root, n_patients=16, seed=11, preset="small", fmt="nifti", progress=False)
    n, by_key, organ_level = _finding_scores(root)
    total = sum(by_key.values(), Counter())
    assert n == 16 and total["tp"] + total["fn"] > 0
    for key, c in sorted(by_key.items()):
        if c:
            print(f"{key:28s} F1={_f1(c):.3f} {dict(c)}")
    print(f"micro F1={_f1(total):.4f}; with organs F1={_f1(organ_level):.4f}")
    assert _f1(total) >= 0.98, {k: dict(c) for k, c in by_key.items() if c["fp"] or c["fn"]}
    assert all(_f1(c) >= 0.9 for c in by_key.values() if c["tp"] + c["fn"] >= 5)
    assert _f1(organ_level) >= 0.95  # laterality and lobes as well, not only the finding


def test_shared_keys_match_dictionary():
    assert SHARED_KEYS <= set(AbnormalityDictionary.default().keys())
    assert all(re.fullmatch(r"[a-z_]+", k) for k in SHARED_KEYS)
