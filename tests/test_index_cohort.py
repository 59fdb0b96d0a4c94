"""Scores and cohorts on the synthetic archive: set logic against truth.jsonl, incremental zero-shot scoring."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest

from ctglip_sdk.errors import QueryError
from ctglip_sdk.index import ArchiveIndex

from test_index_common import tiny_model

FINDINGS = {"liver_cyst": ("liver",), "gallstones": ("gallbladder",),
            "renal_cyst": ("kidney_left", "kidney_right"), "hydronephrosis": ("kidney_left", "kidney_right")}


def _has_dictionary() -> bool:
    try:
        from ctglip_sdk.reports import AbnormalityDictionary  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    import ctglip_sdk as cg

    root = tmp_path_factory.mktemp("syn") / "archive"
    cg.synth.generate_archive(root, 8, seed=3, fmt="nifti", preset="small", progress=False,
                              prevalence={"liver_cyst": 0.5, "renal_cyst": 0.5, "gallstones": 0.4,
                                          "hydronephrosis": 0.3})
    idx = ArchiveIndex.create(tmp_path_factory.mktemp("idx") / "i", model=tiny_model())
    idx.ingest(root, workers=2)
    truth = [json.loads(line) for line in (root / "truth.jsonl").read_text().splitlines() if line.strip()]
    manifest = pd.read_csv(root / "manifest.csv", dtype=str)
    organs = pd.read_csv(idx.export(root.parent / "organs.csv", what="organs"), dtype={"study_uid": str})
    # Scores that follow the truth exactly: 0.9 where the study has the finding on that organ, else 0.1.
    present = {(t["study_uid"], f["organ"], f["finding"]) for t in truth for f in t["findings"]}
    rows = [(int(r.crop_id), key, 0.9 if (r.study_uid, r.organ, key) in present else 0.1)
            for r in organs.itertuples() for key, on in FINDINGS.items() if r.organ in on]
    assert idx.insert_scores(rows, model_hash="truth") == len(rows)
    return idx, root, truth, manifest, organs, present


def _expected(synth, level, all_of=(), any_of=(), none_of=(), age_min=None):
    idx, root, truth, manifest, organs, present = synth
    ages = dict(zip(manifest.study_uid, manifest.age.astype(float)))
    patient_of = dict(zip(organs.study_uid, organs.patient))
    has = defaultdict(set)  # unit -> findings present on an organ that has a crop in the index
    units = set()
    for r in organs.itertuples():
        if age_min is not None and ages[r.study_uid] < age_min:
            continue
        unit = patient_of[r.study_uid] if level == "patient" else r.study_uid
        units.add(unit)
        for key, on in FINDINGS.items():
            if r.organ in on and (r.study_uid, r.organ, key) in present:
                has[unit].add(key)
    out = {u for u in units if all(k in has[u] for k in all_of) and not any(k in has[u] for k in none_of)
           and (not any_of or any(k in has[u] for k in any_of))}
    return out


def test_cohort_set_logic_matches_truth(synth):
    idx = synth[0]
    cases = [dict(all_of=["renal_cyst"]), dict(all_of=["renal_cyst"], none_of=["liver_cyst"]),
             dict(any_of=["liver_cyst", "gallstones"]), dict(none_of=["hydronephrosis", "gallstones"]),
             dict(all_of=["liver_cyst"], any_of=["renal_cyst", "hydronephrosis"])]
    non_trivial = 0
    for case in cases:
        for level in ("patient", "study"):
            got = idx.cohort(level=level, **case)
            key = "patient" if level == "patient" else "study_uid"
            expect = _expected(synth, level, **case)
            assert {m[key] for m in got} == expect, (case, level)
            non_trivial += 0 < len(expect) < 8
            for m in got:
                assert set(m["evidence"]) == set(case.get("all_of", [])) | (set(case.get("any_of", [])) & set(m["evidence"]))
                assert all(v == pytest.approx(0.9) for v in m["evidence"].values())
    assert non_trivial >= 4  # the archive's prevalence makes most cases split the population


def test_cohort_where_threshold_and_frames(synth):
    idx = synth[0]
    got = idx.cohort(all_of=["renal_cyst"], where={"age": (50, None)}, level="study")
    assert set(got.ids) == _expected(synth, "study", all_of=["renal_cyst"], age_min=50)
    assert len(idx.cohort(all_of=["renal_cyst"], threshold=0.95)) == 0
    everyone = idx.cohort(none_of=["renal_cyst"], threshold=0.95)
    assert len(everyone) == 8
    df = idx.cohort(any_of=["liver_cyst", "renal_cyst"]).to_pandas()
    assert {"patient", "studies"} <= set(df.columns) and any(c.startswith("p:") for c in df.columns)
    for bad in (dict(), dict(all_of=["x"], level="series"), dict(all_of=["x"], threshold=2.0), dict(all_of=[""])):
        with pytest.raises(QueryError):
            idx.cohort(**bad)


def test_conditions_are_read_like_search_texts_and_key_typos_are_refused(synth):
    """A typo read as free text matched nearly every organ: in none_of it emptied the cohort, in all_of it kept
    everyone, and nothing said so."""
    idx = synth[0]
    plain = idx.cohort(all_of=["hydronephrosis"], level="study")
    assert plain.notes == []
    for text in ("HYDRONEPHROSIS", "suspected hydronephrosis"):
        assert idx.cohort(all_of=[text], level="study").ids == plain.ids
    typo = idx.cohort(all_of=["hydronephrosiss"], level="study")
    assert typo.ids == plain.ids and typo.notes == ["read 'hydronephrosiss' as 'hydronephrosis' (hydronephrosis)"]
    with pytest.raises(QueryError, match="unknown finding key 'renal_cysts'; did you mean renal_cyst"):
        idx.cohort(none_of=["renal_cysts"])
    free = idx.cohort(all_of=["a weird purple thing"])
    assert "names no dictionary finding" in free.notes[0] and "of the organs in scope" in free.notes[0]


def test_text_conditions_split_findings_move_denials_and_carry_their_own_filters(synth):
    """Cohort texts used to keep everyone ("no hydronephrosis" in all_of), ignore "in women over 60", and read
    "gallstones and renal cyst" as free text matching nearly every organ."""
    idx = synth[0]
    denied = idx.cohort(all_of=["no hydronephrosis"], level="study")
    assert set(denied.ids) == _expected(synth, "study", none_of=["hydronephrosis"])
    assert denied.notes == ["read 'no hydronephrosis' in all_of as none_of hydronephrosis"]
    assert set(idx.cohort(none_of=["no hydronephrosis"], level="study").ids) == \
        _expected(synth, "study", all_of=["hydronephrosis"])
    both = idx.cohort(all_of=["gallstones and renal cyst"], level="study")
    assert set(both.ids) == _expected(synth, "study", all_of=["gallstones", "renal_cyst"])
    assert all(set(m["evidence"]) == {"gallstones", "renal_cyst"} for m in both)
    assert [c for c in both.to_pandas().columns if c.startswith("p:")] == ["p:gallstones", "p:renal_cyst"]
    mixed = idx.cohort(all_of=["renal cyst, no liver cyst"], level="study")
    assert set(mixed.ids) == _expected(synth, "study", all_of=["renal_cyst"], none_of=["liver_cyst"])
    # the condition's own age words filter that condition, as where= does for all of them
    aged = idx.cohort(all_of=["renal cyst in patients over 50"], level="study")
    assert set(aged.ids) == _expected(synth, "study", all_of=["renal_cyst"], age_min=50) != \
        _expected(synth, "study", all_of=["renal_cyst"])
    assert aged.notes == ["read 'renal cyst in patients over 50' as 'renal cyst' within age>=50"]
    with pytest.raises(QueryError, match="names only filters"):
        idx.cohort(all_of=["women over 60"])
    with pytest.raises(QueryError, match="put 'hydronephrosis' in none_of"):
        idx.cohort(any_of=["no hydronephrosis"])


def test_insert_scores_validates(synth):
    idx = synth[0]
    with pytest.raises(QueryError):
        idx.insert_scores([(1, "liver_cyst", 1.5)])
    with pytest.raises(QueryError, match="not in this index"):
        idx.insert_scores([(10 ** 9, "liver_cyst", 0.5)])


def test_free_text_condition_equals_stored_prompt_scores(synth):
    idx = synth[0]
    text = "a large hypodense cyst"
    out = idx.score(findings=[], prompts={"cyst_text": text})
    assert out["scored"] == len(idx)
    assert idx.score(findings=[], prompts={"cyst_text": text})["scored"] == 0  # incremental
    for thr in (0.3, 0.5, 0.7):
        stored = idx.cohort(all_of=["prompt:cyst_text"], threshold=thr)
        on_the_fly = idx.cohort(all_of=[text], threshold=thr)
        assert stored.ids == on_the_fly.ids
    assert set(idx.cohort(all_of=[text], threshold=0.0).ids) == set(idx.cohort(none_of=["hydronephrosis"], threshold=1.0).ids)


@pytest.mark.skipif(not _has_dictionary(), reason="ctglip_sdk.reports.AbnormalityDictionary not available yet")
def test_zero_shot_scoring_is_incremental(tmp_path):
    import ctglip_sdk as cg

    root = tmp_path / "archive"
    cg.synth.generate_archive(root, 3, seed=7, fmt="nifti", preset="small", progress=False)
    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    manifest = pd.read_csv(root / "manifest.csv", dtype=str)
    manifest.iloc[:2].to_csv(root / "manifest.csv", index=False)
    idx.ingest(root, workers=0)
    first = idx.score(findings=["liver_cyst", "renal_cyst"])
    organs = pd.read_csv(idx.export(tmp_path / "o.csv", what="organs"))
    n_pairs = int((organs.organ == "liver").sum() + organs.organ.isin(["kidney_left", "kidney_right"]).sum())
    assert first["scored"] == n_pairs
    assert idx.score(findings=["liver_cyst", "renal_cyst"])["scored"] == 0
    manifest.to_csv(root / "manifest.csv", index=False)
    idx.ingest(root, workers=0)
    # The new study is not scored yet: it is unknown, not "without" the finding (threshold 1: no scored organ
    # has it), so none_of leaves it out and says why.
    n_studies = len(manifest)
    pending = idx.cohort(none_of=["liver_cyst"], threshold=1.0, level="study")
    assert len(pending) == n_studies - 1 and "1 organ(s) that liver_cyst applies to" in pending.notes[0]
    third = idx.score(findings=["liver_cyst", "renal_cyst"])
    assert len(idx.cohort(none_of=["liver_cyst"], threshold=1.0, level="study")) == n_studies
    assert 0 < third["scored"] < n_pairs
    scores = pd.read_csv(idx.export(tmp_path / "scores.csv"))
    assert len(scores) == first["scored"] + third["scored"]
    assert scores.probability.between(0, 1).all() and set(scores.finding) == {"liver_cyst", "renal_cyst"}
    everything = idx.score()
    assert everything["scored"] > 0 and idx.score()["scored"] == 0
    with pytest.raises(QueryError):
        idx.score(findings=["not_a_finding"])
    members = idx.cohort(any_of=["liver_cyst"], threshold=0.0)
    assert len(members) == 3 and np.all([0 <= v <= 1 for m in members for v in m["evidence"].values()])
