"""parse_report on misreads a review of 176 hand-written snippets found (round 27): negation over a comma into a new
clause, checklist answers other than the bare word, a bilateral finding whose largest one is placed, a finding of the
patient's history, a side that opens the sentence, a sided effusion without an organ, and "findings suggest"."""

from __future__ import annotations

import pytest

from ctglip_sdk.reports import parse_report

P, A, U = "present", "absent", "uncertain"


def triples(text):
    return {(f.organ, f.finding, f.status.value) for f in parse_report(text)}


def findings(text):
    """Statements about a dictionary finding (whole-organ statements left out)."""
    return {t for t in triples(text) if t[1] is not None}


# 1. A comma before a clause with its own subject and verb ends the negation; a negated list does not.
@pytest.mark.parametrize("text, expected", [
    ("No splenomegaly or adrenal nodules, the pancreas is atrophic.",
     {("spleen", "splenomegaly", A), ("adrenal_gland", "adrenal_nodule", A), ("pancreas", "pancreatic_atrophy", P)}),
    ("No gallstones or hydronephrosis, the spleen is enlarged.",
     {("gallbladder", "gallstones", A), ("kidney", "hydronephrosis", A), ("spleen", "splenomegaly", P)}),
    ("No focal liver lesion, the gallbladder contains multiple stones.",
     {("liver", "liver_cyst", A), ("liver", "liver_mass", A), ("gallbladder", "gallstones", P)}),
    ("No adrenal nodule, left kidney contains a small cyst.",
     {("adrenal_gland", "adrenal_nodule", A), ("kidney_left", "renal_cyst", P)}),
    ("No pleural effusion, right lower lobe nodule measures 5 mm.",
     {("lung", "pleural_effusion", A), ("lung_lower_lobe_right", "lung_nodule", P)}),
    ("No hydronephrosis, left renal cyst unchanged.",
     {("kidney", "hydronephrosis", A), ("kidney_left", "renal_cyst", P)}),
    ("Possible gallstones, the spleen is enlarged.",
     {("gallbladder", "gallstones", U), ("spleen", "splenomegaly", P)}),
])
def test_a_comma_before_a_new_subject_and_verb_ends_the_negation(text, expected):
    assert findings(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("No hepatic, splenic or renal lesions.",
     {("liver", "liver_cyst", A), ("liver", "liver_mass", A), ("kidney", "renal_cyst", A),
      ("kidney", "renal_mass", A)}),
    ("No gallstones, hydronephrosis or renal cysts are present.",
     {("gallbladder", "gallstones", A), ("kidney", "hydronephrosis", A), ("kidney", "renal_cyst", A)}),
    ("No gallstones, gallbladder wall thickening, or pericholecystic fluid is identified.",
     {("gallbladder", "gallstones", A), ("gallbladder", "gallbladder_wall_thickening", A)}),
    ("Lungs: No nodules, masses have been identified.", {("lung", "lung_nodule", A)}),
])
def test_a_negated_list_over_commas_stays_negated(text, expected):
    assert findings(text) == expected


# 2. Checklist answers that deny with more words, a title that denies, and sides answered one by one.
@pytest.mark.parametrize("text, expected", [
    ("Gallstones: None visible.", {("gallbladder", "gallstones", A)}),
    ("Gallstones: none noted.", {("gallbladder", "gallstones", A)}),
    ("Hydronephrosis: None bilaterally.",
     {("kidney_left", "hydronephrosis", A), ("kidney_right", "hydronephrosis", A)}),
    ("Renal calculi: None identified bilaterally.",
     {("kidney_left", "renal_stone", A), ("kidney_right", "renal_stone", A)}),
    ("Renal stones: none on CT.", {("kidney", "renal_stone", A)}),
    ("Pulmonary nodules: None suspicious.", {("lung", "lung_nodule", A)}),
    ("Renal cysts: none on the right.", {("kidney_right", "renal_cyst", A)}),
    ("Negative: hydronephrosis, renal calculi.", {("kidney", "hydronephrosis", A), ("kidney", "renal_stone", A)}),
    ("Negative:\n- hydronephrosis\n- renal calculi\nPositive:\n- renal cyst",
     {("kidney", "hydronephrosis", A), ("kidney", "renal_stone", A), ("kidney", "renal_cyst", P)}),
    ("Hydronephrosis none.", {("kidney", "hydronephrosis", A)}),
    ("Pleural effusions: none on the left, small on the right.",
     {("lung_lower_lobe_left", "pleural_effusion", A), ("lung_lower_lobe_right", "pleural_effusion", P)}),
    ("Hydronephrosis: none on the right, mild on the left.",
     {("kidney_right", "hydronephrosis", A), ("kidney_left", "hydronephrosis", P)}),
    ("Pleural effusions: none on the left, possible on the right.",
     {("lung_lower_lobe_left", "pleural_effusion", A), ("lung_lower_lobe_right", "pleural_effusion", U)}),
])
def test_checklist_answers_beyond_the_bare_word(text, expected):
    assert findings(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Gallstones: none.", {("gallbladder", "gallstones", A)}),
    ("Hydronephrosis: mild on the right", {("kidney_right", "hydronephrosis", P)}),
    ("Hydronephrosis: no change.", {("kidney", "hydronephrosis", P)}),
    # the bare denial is said of the side the rest does not name (2026-12-07; it was `kidney` present)
    ("Hydronephrosis: none, but mild on the left.", {("kidney_left", "hydronephrosis", P),
                                                     ("kidney_right", "hydronephrosis", A)}),
])
def test_checklist_answers_that_are_not_a_plain_denial(text, expected):
    assert findings(text) == expected


def test_a_denying_title_does_not_leak_through_the_sentence_cache():
    assert findings("Negative:\n- hydronephrosis") == {("kidney", "hydronephrosis", A)}
    assert findings("hydronephrosis") == {("kidney", "hydronephrosis", P)}
    assert findings("Negative:\nhydronephrosis") == {("kidney", "hydronephrosis", A)}


# 3. "Bilateral X, the largest in the left kidney": both sides; the organ places the largest one only.
@pytest.mark.parametrize("text, expected", [
    ("Bilateral nonobstructing calculi, the largest in the left kidney.",
     {("kidney_left", "renal_stone", P), ("kidney_right", "renal_stone", P)}),
    ("Kidneys: Multiple bilateral simple cortical cysts, the largest 2.1 cm in the upper pole of the right kidney.",
     {("kidney_left", "renal_cyst", P), ("kidney_right", "renal_cyst", P)}),
])
def test_a_bilateral_finding_with_its_largest_one_placed(text, expected):
    assert findings(text) == expected


def test_a_largest_one_without_bilateral_is_read_as_before():
    assert findings("Multiple renal cysts, the largest in the left kidney.") == {("kidney", "renal_cyst", P)}


# 4. A finding of the patient's history says nothing certain about this scan.
@pytest.mark.parametrize("text, expected", [
    ("History of cholelithiasis.", {("gallbladder", "gallstones", U)}),
    ("Hx of left nephrolithiasis.", {("kidney_left", "renal_stone", U)}),
    ("Remote history of right nephrolithiasis.", {("kidney_right", "renal_stone", U)}),
    ("Previous pneumonia in the RLL.", {("lung_lower_lobe_right", "lung_consolidation", U)}),
    ("History of RCC status post left partial nephrectomy.", {("kidney_left", "renal_mass", U)}),
])
def test_a_finding_of_the_history_is_not_present(text, expected):
    assert findings(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("No history of nephrolithiasis.", {("kidney", "renal_stone", A)}),
    ("Previous right pleural effusion has resolved.", {("lung_lower_lobe_right", "pleural_effusion", A)}),
    # the reason for an operation is the past, as after "history of" (it was present until 2026-12-07)
    ("Status post right nephrectomy for RCC.", {("kidney_right", "renal_mass", U)}),
])
def test_history_keeps_denials_and_status_post(text, expected):
    assert findings(text) == expected


@pytest.mark.parametrize("text, expected", [
    # organ words between "previous"/"prior" and the finding belong to the finding
    ("Previous left pleural effusion.", {("lung_lower_lobe_left", "pleural_effusion", U)}),
    ("Prior right renal cyst.", {("kidney_right", "renal_cyst", U)}),
    ("Previous hepatic cyst.", {("liver", "liver_cyst", U)}),
    # ... and a past finding said to be still there, or changed, is this scan's
    ("The prior liver cyst is unchanged.", {("liver", "liver_cyst", P)}),
    ("Previous left pleural effusion has decreased in size.", {("lung_lower_lobe_left", "pleural_effusion", P)}),
    ("Previous renal cyst now measures 3 cm.", {("kidney", "renal_cyst", P)}),
    ("Previous left renal cyst, not seen today.", {("kidney_left", "renal_cyst", A)}),
])
def test_a_previous_finding_with_its_organ_words(text, expected):
    assert findings(text) == expected


def test_an_operation_in_the_history_still_removes_the_organ():
    assert triples("History of cholecystectomy. Gallbladder: normal.") == set()


# 5. A side that opens the sentence is said of its findings.
@pytest.mark.parametrize("text, expected", [
    ("On the right there is moderate hydronephrosis.", {("kidney_right", "hydronephrosis", P)}),
    ("On the left, there is a 2 cm simple renal cyst.", {("kidney_left", "renal_cyst", P)}),
    ("No hydronephrosis on the left. On the right there is moderate hydronephrosis.",
     {("kidney_left", "hydronephrosis", A), ("kidney_right", "hydronephrosis", P)}),
])
def test_a_side_that_opens_the_sentence(text, expected):
    assert findings(text) == expected


# 6. An effusion with a side and no organ is a pleural effusion (the only effusion with sides).
@pytest.mark.parametrize("text, expected", [
    ("Small bilateral effusions.",
     {("lung_lower_lobe_left", "pleural_effusion", P), ("lung_lower_lobe_right", "pleural_effusion", P)}),
    ("Small left effusion.", {("lung_lower_lobe_left", "pleural_effusion", P)}),
    ("Pulmonary embolism excluded. Small right effusion.", {("lung_lower_lobe_right", "pleural_effusion", P)}),
])
def test_a_sided_effusion_without_an_organ_is_pleural(text, expected):
    assert findings(text) == expected


@pytest.mark.parametrize("text", [
    "Fluid in the left paracolic gutter.",
    "Small effusion.",
])
def test_other_effusions_without_an_organ_give_nothing(text):
    assert triples(text) == set()


# 7. "Findings suggest" hedges; a suggested follow-up does not.
@pytest.mark.parametrize("text, expected", [
    ("Findings suggest hepatic steatosis.", {("liver", "hepatic_steatosis", U)}),
    ("Suggest follow-up of the left renal cyst.", {("kidney_left", "renal_cyst", P)}),
    ("Suggest biopsy of the left renal mass.", {("kidney_left", "renal_mass", P)}),  # a work-up, not a hedge
    ("Appearances suggest a liver cyst.", {("liver", "liver_cyst", U)}),
])
def test_suggest(text, expected):
    assert findings(text) == expected
