"""Synthetic reports read like reports and agree with the truth: every finding, its side and its size."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import numpy as np

import ctglip_sdk as cg
from ctglip_sdk.synth import FINDINGS

# Words that name each finding's organ (checked without the report parser, which is written independently).
ORGAN_WORDS = {
    "liver": ("liver", "hepatic", "hepato"), "gallbladder": ("gallbladder", "gallstone", "cholelithiasis"),
    "kidney": ("kidney", "renal", "nephrolithiasis", "pelvicaliectasis", "collecting system"),
    "pancreas": ("pancrea",), "spleen": ("spleen", "splen"), "lung": ("lobe", "lung", "pleural", "emphysema"),
    "adrenal_gland": ("adrenal",), "aorta": ("aort",), "urinary_bladder": ("bladder",),
}
ALL = {k: 0.35 for k in FINDINGS}


@lru_cache(maxsize=None)
def sample(seed: int, contrast: bool | None = None):
    return cg.synth.generate_patient(seed, "small", prevalence=ALL, contrast=contrast)


def sizes(mm: float) -> tuple:
    """The ways a report may write a measurement: 7 mm, 1.8 cm, or the first of two dimensions (18 x 12 mm)."""
    mm = round(mm)
    return (f"{mm:.0f} mm", f"{mm / 10:.1f} cm", f" {mm:.0f} x ", f" {mm / 10:.1f} x ")


def test_every_true_finding_is_reported_with_side_and_size():
    for seed in range(4):
        p = sample(seed)
        text = p.report.lower()
        findings_part = text.split("impression")[0]
        assert p.findings, "prevalence 0.35 each should give findings"
        for e in p.findings:
            group = FINDINGS[e["finding"]].organ
            assert any(w in findings_part for w in ORGAN_WORDS[group]), (e, p.report)
            if e["size_mm"] is not None:
                assert any(s in p.report for s in sizes(e["size_mm"])), (e, p.report)
            if e["side"] and e["finding"] not in ("emphysema",):
                assert e["side"] in findings_part, (e, p.report)
            if e["finding"].startswith("lung_nodule"):
                lobe = e["organ"].split("_")  # lung_lower_lobe_left -> "left lower lobe"
                assert f"{lobe[-1]} {lobe[1]} lobe" in text


def test_report_structure_header_sections_impression():
    p = sample(7, True)
    text = p.report
    assert re.search(r"(EXAMINATION|Exam): CT", text)
    assert "portal venous" in text and "contrast" in text.lower()
    q = sample(8, False)
    assert "without" in q.report.lower().split("findings")[0]
    for r in (text, q.report):
        assert re.search(r"^(FINDINGS|Findings):$", r, re.M) and re.search(r"^(IMPRESSION|Impression):$", r, re.M)
        assert re.search(r"^1\. ", r, re.M)
        heads = re.findall(r"^([A-Za-z ,/]+):", re.split(r"(?i)findings:", r)[1], re.M)
        assert len(heads) >= 6  # organ-by-organ sections


def test_normal_study_reads_normal():
    p = cg.synth.generate_patient(3, "small", findings=[])
    low = p.report.lower()
    assert re.search(r"no (acute|focal|suspicious|hydronephrosis|pleural)|normal|unremarkable", low)
    imp = low.split("impression")[1]
    assert "no acute" in imp or "unremarkable" in imp or "no acute findings" in imp


def test_phrasing_varies_between_reports_but_not_between_runs():
    from ctglip_sdk.synth.phrasebook import write_report

    p = cg.synth.generate_patient(5, "small", findings=["renal_stone", "liver_cyst"])
    assert p.report == cg.synth.generate_patient(5, "small", findings=["renal_stone", "liver_cyst"]).report
    meta = {"contrast": True, "slice_mm": 10}
    texts = [write_report(p.findings, meta, np.random.default_rng(s)) for s in range(30)]
    assert len(set(texts)) >= 25  # phrasing is drawn per report
    (stone,) = [e for e in p.findings if e["finding"] == "renal_stone"][:1]
    sentences = set()
    for t in texts:
        line = [ln for ln in t.splitlines() if re.search(r"calculus|nephrolithiasis", ln, re.I)][0]
        assert any(sz in line for sz in sizes(stone["size_mm"])) and stone["side"] in line.lower()
        sentences.add(re.sub(r"[\d.]+ (mm|cm)|left|right|upper|lower|interpolar|pole|region", "#",
                             line.split(":")[-1].lower()))
    assert len(sentences) >= 3  # several templates per finding


def test_templates_are_private_to_the_generator():
    # The report parser must be written without access to the generator's phrasing.
    root = Path(cg.__file__).parent / "reports"
    for py in root.rglob("*.py"):
        src = py.read_text(encoding="utf-8")
        assert "phrasebook" not in src and "ctglip_sdk.synth" not in src, py
