"""Review of 2026-12-07 (CLI side): ``parse-report -`` reads stdin as a file is read, a very long sentence or query
text is read in about linear time (it was cubic: minutes for 30 kB), and search caps the length of its text."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ctglip_sdk.cli.main import cli
from ctglip_sdk.reports import decode_report_bytes, parse_report


def test_parse_report_from_stdin_gets_the_checks_of_a_file(tmp_path):
    # cp1252 on stdin: read as cp1252 (sys.stdin's own decoding put lone surrogates into the JSON)
    res = CliRunner().invoke(cli, ["parse-report", "-", "--json"], input=b"Liver: \xe9l\xe9gant cyst.\n")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["findings"][0]["sentence"] == "\u00e9l\u00e9gant cyst." and doc["findings"][0]["finding"] == "liver_cyst"
    # a binary stream (a DICOM slice piped in) is refused as a file is, not read as a report with no findings
    res = CliRunner().invoke(cli, ["parse-report", "-", "--json"], input=b"DICM" + bytes(4000))
    assert res.exit_code == 1 and json.loads(res.stdout)["type"] == "InputError"
    assert "not a text report" in json.loads(res.stdout)["error"]
    assert decode_report_bytes(b"No hydronephrosis.\r\n") == "No hydronephrosis.\n"


def test_a_sentence_with_hundreds_of_organ_mentions_still_places_each_finding():
    # 400 clauses in one sentence (commas, no periods): each finding still goes to its own nearby organ
    clause = "the spleen is normal, the liver is normal, the left kidney has a small cyst"
    text = ", ".join([clause] * 400) + ", and there is a 4 mm stone in the right kidney."
    got = {(f.organ, f.finding) for f in parse_report(text) if f.finding is not None}
    assert got == {("kidney_left", "renal_cyst"), ("kidney_right", "renal_stone")}


def test_search_caps_the_length_of_its_text():
    from ctglip_sdk.errors import QueryError
    from ctglip_sdk.index.query_text import MAX_QUERY_CHARS, _query_vector

    class _Index:  # the cap is checked before the index or the model is touched
        pass

    with pytest.raises(QueryError, match="characters: search takes at most 10,000"):
        _query_vector(_Index(), "liver lesion " * (MAX_QUERY_CHARS // 12 + 1), "auto")


def test_a_cohort_question_is_capped_before_it_is_read():
    from ctglip_sdk.errors import QueryError
    from ctglip_sdk.index.nlq import MAX_QUERY_CHARS, parse_query

    with pytest.raises(QueryError, match="at most 10,000"):
        parse_query("liver cysts in women " * (MAX_QUERY_CHARS // 20 + 1))


def _triples(text):
    return {(f.organ, f.finding, f.status.value) for f in parse_report(text)}


@pytest.mark.parametrize("text,expected", [
    # a denial whose comma goes on about another finding denies the title's (gallstones were read as present)
    ("Gallstones: none, gallbladder wall thickened.",
     {("gallbladder", "gallstones", "absent"), ("gallbladder", "gallbladder_wall_thickening", "present")}),
    ("Gallstones: none visible, but the gallbladder wall is thickened.",
     {("gallbladder", "gallstones", "absent"), ("gallbladder", "gallbladder_wall_thickening", "present")}),
    ("Renal calculi: not identified, simple cyst in the left kidney.",
     {("kidney", "renal_stone", "absent"), ("kidney_left", "renal_cyst", "present")}),
    ("Pleural effusion: none, small pericardial effusion.",
     {("lung", "pleural_effusion", "absent"), ("heart", "pericardial_effusion", "present")}),
    # words about the title's own finding after the comma: not a denial of it (the side answers, review27)
    ("Hydronephrosis: none, but mild on the left.",
     {("kidney_left", "hydronephrosis", "present"), ("kidney_right", "hydronephrosis", "absent")}),
    ("Pleural effusions: none, but small on the right.",
     {("lung_lower_lobe_left", "pleural_effusion", "absent"), ("lung_lower_lobe_right", "pleural_effusion", "present")}),
    ("Hydronephrosis: none, but mild left hydronephrosis.", {("kidney_left", "hydronephrosis", "present")}),
])
def test_a_checklist_denial_that_goes_on_about_another_finding(text, expected):
    assert _triples(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("A small loculated left-sided effusion.", {("lung_lower_lobe_left", "pleural_effusion", "present")}),
    ("Right sided effusion.", {("lung_lower_lobe_right", "pleural_effusion", "present")}),
    ("No left-sided effusion.", {("lung_lower_lobe_left", "pleural_effusion", "absent")}),
    ("Small left effusion.", {("lung_lower_lobe_left", "pleural_effusion", "present")}),  # as before
    ("Pericardial effusion.", {("heart", "pericardial_effusion", "present")}),            # no side: as before
    ("Small effusion on the right.", {("lung_lower_lobe_right", "pleural_effusion", "present")}),
    ("Effusions on both sides.",
     {("lung_lower_lobe_left", "pleural_effusion", "present"), ("lung_lower_lobe_right", "pleural_effusion", "present")}),
    ("No effusion on the left.", {("lung_lower_lobe_left", "pleural_effusion", "absent")}),
    ("Pericardial effusion on the left.", {("heart", "pericardial_effusion", "present")}),
    ("Small effusion.", set()),                                                            # no side: nothing
])
def test_a_sided_effusion_without_organ_is_pleural(text, expected):
    assert _triples(text) == expected


@pytest.mark.parametrize("text,expected", [
    # a location set off by a comma places the finding (it was left on the synonym's own organ)
    ("Pulmonary nodule, right upper lobe.", {("lung_upper_lobe_right", "lung_nodule", "present")}),
    ("Pulmonary nodule, right upper lobe, 6 mm.", {("lung_upper_lobe_right", "lung_nodule", "present")}),
    ("Renal cyst, left kidney.", {("kidney_left", "renal_cyst", "present")}),
    # an organ that starts a new clause after the comma does not
    ("Renal cyst, left kidney is atrophic.",
     {("kidney", "renal_cyst", "present"), ("kidney_left", "renal_atrophy", "present")}),
    ("Renal cyst, and the left kidney is atrophic.",
     {("kidney", "renal_cyst", "present"), ("kidney_left", "renal_atrophy", "present")}),
])
def test_a_location_after_a_comma_places_the_finding(text, expected):
    assert _triples(text) == expected


@pytest.mark.parametrize("text,expected", [
    # two findings, each with its own side in its own clause (the sides were swapped or shared)
    ("KIDNEYS: On the right there is a simple cyst and on the left there is a stone.",
     {("kidney_right", "renal_cyst", "present"), ("kidney_left", "renal_stone", "present")}),
    ("KIDNEYS: On the right there is a simple cyst and on the left a stone.",
     {("kidney_right", "renal_cyst", "present"), ("kidney_left", "renal_stone", "present")}),
    ("KIDNEYS: Simple cyst on the right and a stone on the left.",
     {("kidney_right", "renal_cyst", "present"), ("kidney_left", "renal_stone", "present")}),
    ("KIDNEYS: There is a simple cyst on the right and on the left there is a stone.",
     {("kidney_right", "renal_cyst", "present"), ("kidney_left", "renal_stone", "present")}),
    ("Pleural effusion on the left and atelectasis on the right.",
     {("lung_lower_lobe_left", "pleural_effusion", "present"), ("lung_right", "atelectasis", "present")}),
])
def test_each_finding_takes_the_side_of_its_own_clause(text, expected):
    assert _triples(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("Rt. kidney normal.", {("kidney_right", None, "absent")}),  # was `kidney`: both kidneys said normal
    ("Lt. kidney: normal. Rt. kidney: 2 cm cyst.",
     {("kidney_left", None, "absent"), ("kidney_right", "renal_cyst", "present")}),
    ("Stone on the rt. No hydronephrosis.", {("kidney", "hydronephrosis", "absent")}),  # still ends the sentence
])
def test_rt_and_lt_with_a_period_side_whole_organ_statements(text, expected):
    assert _triples(text) == expected


@pytest.mark.parametrize("text,expected", [
    # an upper-case finding line answered on the next line (it read as the finding stated)
    ("PLEURAL EFFUSION\nNone.", {("lung", "pleural_effusion", "absent")}),
    ("FINDINGS:\nGALLSTONES\nNo.\n\nLIVER\nHepatic steatosis.",
     {("gallbladder", "gallstones", "absent"), ("liver", "hepatic_steatosis", "present")}),
    ("GALLSTONES\nNot seen.", {("gallbladder", "gallstones", "absent")}),
    ("GALLSTONES\nNegative.", {("gallbladder", "gallstones", "absent")}),
    ("Hydronephrosis negative.", {("kidney", "hydronephrosis", "absent")}),
    # an answer that states is read as before
    ("GALLSTONES\nPresent.", {("gallbladder", "gallstones", "present")}),
    ("CHOLELITHIASIS\n2 CM CYST IN THE LIVER.",
     {("gallbladder", "gallstones", "present"), ("liver", "liver_cyst", "present")}),
])
def test_a_finding_line_answered_on_the_next_line(text, expected):
    assert _triples(text) == expected


@pytest.mark.parametrize("text,expected", [
    # a side after the comma opens a described finding: the negation ends (the cysts were read as absent)
    ("No hydronephrosis, left renal cyst.", {("kidney", "hydronephrosis", "absent"), ("kidney_left", "renal_cyst", "present")}),
    ("No hydronephrosis, bilateral renal cysts.", {("kidney", "hydronephrosis", "absent"),
                                                   ("kidney_left", "renal_cyst", "present"),
                                                   ("kidney_right", "renal_cyst", "present")}),
    # a list of sides goes on denying
    ("No hydronephrosis, right or left.",
     {("kidney_left", "hydronephrosis", "absent"), ("kidney_right", "hydronephrosis", "absent")}),
    ("No gallstones, hydronephrosis or renal cysts.", {("gallbladder", "gallstones", "absent"),
                                                       ("kidney", "hydronephrosis", "absent"),
                                                       ("kidney", "renal_cyst", "absent")}),
])
def test_a_side_after_a_negation_and_comma_opens_a_finding(text, expected):
    assert _triples(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("Post cholecystectomy for gallstones.", {("gallbladder", "gallstones", "uncertain")}),
    ("Status post left nephrectomy for a renal mass. Right kidney: simple cyst.",
     {("kidney_left", "renal_mass", "uncertain"), ("kidney_right", "renal_cyst", "present")}),
    ("Status post right nephrectomy. Left renal cyst.", {("kidney_left", "renal_cyst", "present")}),
])
def test_the_reason_for_an_operation_is_the_past(text, expected):
    assert _triples(text) == expected
