"""Where a skipped section (indication, technique, comparison) ends: at a section title inside a line ("COMPARISON:
None. FINDINGS: ..."; reports exported as one paragraph) and at the blank line after its text."""

from __future__ import annotations

import pytest

from ctglip_sdk.reports import parse_report

P, A, U = "present", "absent", "uncertain"


def findings(text):
    return {(f.organ, f.finding, f.status.value) for f in parse_report(text) if f.finding is not None}


ONE_PARAGRAPH = ("EXAM: CT abdomen and pelvis with contrast. INDICATION: Flank pain, ? renal stone. TECHNIQUE: Axial "
                 "images. COMPARISON: None. FINDINGS: The liver contains a 2 cm simple cyst. No hydronephrosis. "
                 "IMPRESSION: Hepatic cyst.")


def test_a_report_in_one_paragraph_keeps_its_findings_and_skips_its_indication():
    got = parse_report(ONE_PARAGRAPH)
    assert {(f.organ, f.finding, f.status.value) for f in got} == {
        ("liver", "liver_cyst", P), ("kidney", "hydronephrosis", A)}
    # the indication's "? renal stone" stays out; spans still point into the original text
    assert all(f.finding != "renal_stone" for f in got)
    cyst = next(f for f in got if f.finding == "liver_cyst")
    assert ONE_PARAGRAPH[cyst.span[0]:cyst.span[1]] == "simple cyst"
    assert cyst.sentence == "The liver contains a 2 cm simple cyst."


@pytest.mark.parametrize("text, expected", [
    ("Comparison: prior CT. Findings: A 5 mm right lower lobe nodule.", {("lung_lower_lobe_right", "lung_nodule", P)}),
    ("Technique: CT. Comparison: None. Impression: Splenomegaly.", {("spleen", "splenomegaly", P)}),
    ("Clinical history: pain; Findings: small left renal cyst.", {("kidney_left", "renal_cyst", P)}),
    ("The liver is normal. Impression: splenomegaly.", {("spleen", "splenomegaly", P)}),
    # a title opens a section only after a sentence, and only a section's title does
    ("Indication: ? renal stone. Evaluate for hydronephrosis.", set()),
    ("Indication: rule out findings: renal stone.", set()),
])
def test_a_section_title_inside_a_line(text, expected):
    assert findings(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Comparison: prior CT.\n\nA 5 mm right lower lobe nodule is stable.", {("lung_lower_lobe_right", "lung_nodule", P)}),
    ("Technique: CT abdomen.\r\n\r\nThe liver contains a cyst.", {("liver", "liver_cyst", P)}),
    ("INDICATION:\n\n? renal stone\n\nNo renal stone. Small left renal cyst.",
     {("kidney", "renal_stone", A), ("kidney_left", "renal_cyst", P)}),
    ("CLINICAL HISTORY\nRight flank pain, ? stone.\n\nNo hydronephrosis.", {("kidney", "hydronephrosis", A)}),
])
def test_a_blank_line_after_a_skipped_section_ends_it(text, expected):
    assert findings(text) == expected


@pytest.mark.parametrize("text", [
    "Indication: ? renal stone.\nEvaluate for hydronephrosis and gallstones.",  # no blank line: still the request
    "INDICATION:\n\n? renal stone",  # the blank line before the section's text does not end it
    "History:\nsplenomegaly\n\nComparison:\n\nprior CT with a liver cyst",
])
def test_a_skipped_section_without_a_blank_line_after_its_text_goes_on(text):
    assert findings(text) == set()


def test_a_blank_line_does_not_end_an_organ_heading():
    assert findings("Kidneys:\n\nSmall cyst on the left.") == {("kidney_left", "renal_cyst", P)}


# Found by the review of the day's diff: the rules above must not skip findings or read a history as findings.
def test_a_skipped_name_inside_a_findings_line_skips_nothing():
    text = ("FINDINGS: Small hepatic cyst. Comparison: the hepatic cyst is larger than in 2020. Small left renal "
            "stone. Mild splenomegaly.")
    assert findings(text) == {("liver", "liver_cyst", P), ("kidney_left", "renal_stone", P),
                              ("spleen", "splenomegaly", P)}


def test_a_second_paragraph_of_a_history_before_the_findings_title_stays_skipped():
    text = ("CLINICAL HISTORY:\n65M, right flank pain.\n\nKnown left renal cyst, query renal stone.\n\nFINDINGS:\n"
            "The liver is normal.")
    assert findings(text) == set()
    # without a findings title further on, the blank line still ends the history
    assert findings("Comparison: prior CT.\n\nThe liver contains a cyst.\n\nIMPRESSION: Hepatic cyst.") == {
        ("liver", "liver_cyst", P)}


@pytest.mark.parametrize("text, expected", [
    # a denying title with its text on its line denies that line only; the heading before it comes back
    ("Negative: hydronephrosis.\nThe spleen is enlarged.",
     {("kidney", "hydronephrosis", A), ("spleen", "splenomegaly", P)}),
    ("KIDNEYS:\nNegative: hydronephrosis.\nSmall cyst on the left.",
     {("kidney", "hydronephrosis", A), ("kidney_left", "renal_cyst", P)}),
    # ... and one over its own lines denies them up to a blank line
    ("FINDINGS:\nNegative:\nhydronephrosis\n\nSmall left renal cyst.",
     {("kidney", "hydronephrosis", A), ("kidney_left", "renal_cyst", P)}),
    ("Negative:\n- hydronephrosis\n- renal calculi", {("kidney", "hydronephrosis", A), ("kidney", "renal_stone", A)}),
])
def test_a_denying_title_denies_its_own_text_only(text, expected):
    assert findings(text) == expected
