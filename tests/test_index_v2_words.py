"""Search text naming TotalSegmentator 2 classes ("thyroid nodule", "SVC"), and words that end in "and"/"or"."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from ctglip_sdk.index import ArchiveIndex
from ctglip_sdk.index.nlq import parse_query
from ctglip_sdk.organs_v2_words import V2_PHRASES, v2_named_in
from ctglip_sdk.reports import parse_report
from test_index_common import AFFINE, phantom, tiny_model, write_manifest


@pytest.mark.parametrize("text, classes", [
    ("nodule in the thyroid gland", ("thyroid_gland",)),
    ("SVC thrombus", ("superior_vena_cava",)),
    ("superior vena cava obstruction", ("superior_vena_cava",)),
    ("left carotid stenosis", ("common_carotid_artery_left",)),
    ("calcified carotid arteries", ("common_carotid_artery_left", "common_carotid_artery_right")),
    ("right subclavian artery aneurysm", ("subclavian_artery_right",)),
    ("enlarged prostate", ("prostate",)),
    ("sternocleidomastoid", ()),   # whole words only
    ("enlarged heart", ()),        # v1 words stay with the v1 reader
])
def test_v2_classes_are_found_as_whole_phrases(text, classes):
    assert v2_named_in(text)[0] == classes


def test_every_v2_phrase_names_a_v2_only_class():
    from ctglip_sdk import organs

    v2_only = set(organs.V2.values()) - set(organs.ORGANS)
    assert {c for cs in V2_PHRASES.values() for c in cs} <= v2_only


@pytest.mark.parametrize("question, organ", [
    ("thyroid nodule in women over 60", ["thyroid_gland"]),
    ("superior vena cava thrombus", ["superior_vena_cava"]),   # was v1's inferior vena cava ("vena cava")
    ("SVC and liver in men", ["superior_vena_cava", "liver"]),
    ("fatty liver in women over 60", ["liver"]),                # v1 questions unchanged
])
def test_cohort_questions_name_v2_classes(question, organ):
    assert parse_query(question).organ == organ


@pytest.mark.parametrize("question, text", [
    ("the thyroid gland", "the thyroid gland"),   # was "the thyroid gl": a trailing "and" cut inside a word
    ("liver tumor in women", "liver tumor"),       # was "liver tum"
    ("organ damage in men", "organ damage"),       # was "gan damage"
    ("colon tumor and", "colon tumor"),            # a real dangling "and" still goes
    ("or liver cyst,", "liver cyst"),
])
def test_dangling_conjunctions_are_whole_words(question, text):
    assert parse_query(question).text == text


def test_superior_vena_cava_is_not_read_as_the_inferior_one_in_reports():
    assert parse_report("Thrombus in the superior vena cava.") == []
    assert parse_report("SVC is patent.") == []
    assert [f.organ for f in parse_report("The inferior vena cava is normal.")] == ["inferior_vena_cava"]


def _index(tmp_path, names):
    vol, seg = phantom(np.random.default_rng(41))
    root = tmp_path / "arch"
    (root / "s0" / "seg").mkdir(parents=True)
    nib.save(nib.Nifti1Image(vol, AFFINE), root / "s0" / "ct.nii.gz")
    labels = [v for v in np.unique(seg) if v][:len(names)]
    for name, v in zip(names, labels):  # TotalSegmentator's per-class layout: one file per class
        nib.save(nib.Nifti1Image((seg == v).astype(np.uint8), AFFINE), root / "s0" / "seg" / f"{name}.nii.gz")
    write_manifest(root, [{"patient_id": "P1", "study_uid": "1.2", "series_uid": "1.2.3", "image": "s0/ct.nii.gz",
                           "mask": "s0/seg", "report": "", "split": "test", "age": "50", "sex": "F",
                           "study_date": "2020-01-01", "contrast": "none"}])
    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model())
    assert not idx.ingest(root, workers=0).errors
    return idx


def test_search_text_naming_a_v2_class_stays_on_it(tmp_path):
    idx = _index(tmp_path, ("thyroid_gland", "liver", "superior_vena_cava"))
    try:
        hits = idx.search("thyroid nodule", k=5)
        assert [h.organ for h in hits] == ["thyroid_gland"]  # was every organ, ranked by cosine
        assert hits.ranking == "cosine" and any("TotalSegmentator 2" in n for n in hits.notes)
        assert [h.organ for h in idx.search("SVC thrombus", k=5)] == ["superior_vena_cava"]
        assert {h.organ for h in idx.search("thyroid and liver", k=5)} == {"thyroid_gland", "liver"}
    finally:
        idx.close()


def test_search_text_naming_a_class_the_index_lacks_says_so(tmp_path):
    idx = _index(tmp_path, ("liver", "spleen"))
    try:
        hits = idx.search("thyroid nodule", k=5)
        assert len(hits) == 0
        assert any("no organ of this index is named thyroid_gland" in n for n in hits.notes)
    finally:
        idx.close()

