"""parse_report on phrasings from real reports that a review found misparsed: negation scope over commas, stable
lesions, vessel calcification, denial words, missing organs, trailing hedges, hedged causes and vessels, a side after
a comma ("Pleural effusion, left.") and arterial calcification under an organ's heading."""

from __future__ import annotations

import pytest

from ctglip_sdk.reports import parse_report


def triples(text):
    return {(f.organ, f.finding, f.status.value) for f in parse_report(text)}


@pytest.mark.parametrize("text, negated, stated", [
    ("No calculi identified, mild right hydronephrosis noted.",
     ("kidney", "renal_stone", "absent"), ("kidney_right", "hydronephrosis", "present")),
    ("No pleural effusion or pneumothorax, moderate centrilobular emphysema.",
     ("lung", "pleural_effusion", "absent"), ("lung", "emphysema", "present")),
    ("No pulmonary nodules, emphysema present.", ("lung", "lung_nodule", "absent"), ("lung", "emphysema", "present")),
    ("No hydronephrosis, small left renal stone.",
     ("kidney", "hydronephrosis", "absent"), ("kidney_left", "renal_stone", "present")),
    ("Lungs: No consolidation or effusion, scattered pulmonary nodules up to 4 mm.",
     ("lung", "lung_consolidation", "absent"), ("lung", "lung_nodule", "present")),
])
def test_negation_ends_at_a_comma_before_a_described_or_stated_finding(text, negated, stated):
    got = triples(text)
    assert negated in got and stated in got, got


@pytest.mark.parametrize("text, expected", [
    ("No gallstones, hydronephrosis or renal cysts.", {("gallbladder", "gallstones", "absent"),
                                                        ("kidney", "hydronephrosis", "absent"),
                                                        ("kidney", "renal_cyst", "absent")}),
    ("No gallstones, hydronephrosis, renal cysts seen.", {("gallbladder", "gallstones", "absent"),
                                                          ("kidney", "hydronephrosis", "absent"),
                                                          ("kidney", "renal_cyst", "absent")}),
    ("No ascites, small bowel obstruction or free air.", set()),
])
def test_a_negated_list_after_a_comma_stays_negated(text, expected):
    assert triples(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("No interval growth of the hepatic metastases.", {("liver", "liver_mass", "present")}),
    ("No interval enlargement of the hepatic metastases.", {("liver", "liver_mass", "present")}),
    ("No significant interval enlargement of the right renal cyst.", {("kidney_right", "renal_cyst", "present")}),
    ("No interval progression of the pulmonary nodules.", {("lung", "lung_nodule", "present")}),
    ("Left adrenal nodule without interval growth.", {("adrenal_gland_left", "adrenal_nodule", "present")}),
    ("There has been no interval growth of the left adrenal nodule.",
     {("adrenal_gland_left", "adrenal_nodule", "present")}),
    # a plain denial of enlargement still denies it
    ("No enlargement of the liver.", {("liver", "hepatomegaly", "absent")}),
])
def test_no_interval_growth_means_a_stable_lesion(text, expected):
    assert triples(text) == expected


@pytest.mark.parametrize("text", [
    "Kidneys: Vascular calcifications.", "Renal arterial calcifications.",
    "Punctate vascular calcification at the left renal hilum.", "Kidneys: Atherosclerotic calcification.",
])
def test_vascular_calcification_is_not_a_renal_stone(text):
    assert triples(text) == set()


def test_vascular_calcification_still_counts_for_the_aorta():
    assert triples("Vascular: Atherosclerotic calcification.") == {("aorta", "aortic_calcification", "present")}
    assert triples("Coronary arterial calcification.") == {("heart", "coronary_calcification", "present")}
    # a normal kidney said in the same sentence stays normal
    assert triples("The kidneys are normal apart from vascular calcification.") == {("kidney", None, "absent")}


@pytest.mark.parametrize("text, expected", [
    ("Both kidneys are clear of calculi.", {("kidney_left", "renal_stone", "absent"),
                                            ("kidney_right", "renal_stone", "absent")}),
    ("The pleural spaces are clear of effusion.", {("lung", "pleural_effusion", "absent")}),
    ("None of the previously described pulmonary nodules are seen.", {("lung", "lung_nodule", "absent")}),
    ("The lungs are devoid of nodules.", {("lung", "lung_nodule", "absent")}),
    ("The kidneys are stone-free.", {("kidney", "renal_stone", "absent")}),
    ("The right pleural effusion has cleared.", {("lung_lower_lobe_right", "pleural_effusion", "absent")}),
    ("Interval clearing of the left lower lobe consolidation.",
     {("lung_lower_lobe_left", "lung_consolidation", "absent")}),
    ("The previously noted hepatic lesion has disappeared.", {("liver", "liver_cyst", "absent"),
                                                              ("liver", "liver_mass", "absent")}),
    # partial clearing leaves the finding; "clear" alone is still a normal organ
    ("Partial clearing of the left lower lobe consolidation.",
     {("lung_lower_lobe_left", "lung_consolidation", "present")}),
    ("The lungs are clear.", {("lung", None, "absent")}),
])
def test_denial_words_clear_of_devoid_of_none_of_free_cleared_disappeared(text, expected):
    assert triples(text) == expected


@pytest.mark.parametrize("text", [
    "The gallbladder is absent.", "The spleen is absent.", "The gallbladder and spleen are absent.",
    "Kidneys: The left kidney is absent.",
])
def test_an_organ_said_absent_is_missing_not_normal(text):
    assert triples(text) == set()


def test_a_missing_organ_is_removed_from_the_whole_report():
    assert triples("The gallbladder is absent. Liver and biliary tree: Normal.") == {("liver", None, "absent")}
    got = triples("Kidneys: The left kidney is absent. The right kidney is normal. IMPRESSION: Normal kidneys.")
    assert got == {("kidney_right", None, "absent")}
    # "Left kidney: Surgically absent." inside a line (not a heading of its own) removes the left kidney too
    assert triples("Kidneys: Normal. Left kidney: Surgically absent.") == {("kidney_right", None, "absent")}
    # a finding said absent is still a denied finding
    assert triples("Hydronephrosis is absent.") == {("kidney", "hydronephrosis", "absent")}


@pytest.mark.parametrize("text, expected", [
    ("Mild splenomegaly may be present.", {("spleen", "splenomegaly", "uncertain")}),
    ("A small left pleural effusion may be present.", {("lung_lower_lobe_left", "pleural_effusion", "uncertain")}),
    ("Suggestion of mild splenomegaly.", {("spleen", "splenomegaly", "uncertain")}),
    ("Hepatic steatosis would be a consideration.", {("liver", "hepatic_steatosis", "uncertain")}),
    ("No suggestion of splenomegaly.", {("spleen", "splenomegaly", "absent")}),
])
def test_hedges_after_the_finding(text, expected):
    assert triples(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Subtle hypodensity in the pancreatic head which could be due to a small mass.",
     {("pancreas", "pancreatic_mass", "uncertain")}),
    ("Liver lesions possibly due to metastatic disease.", {("liver", "liver_mass", "uncertain")}),
    # a firm finding with a cause keeps its status; "likely due to" hedges the cause only
    ("Hydronephrosis due to a renal stone.", {("kidney", "hydronephrosis", "present"),
                                              ("kidney", "renal_stone", "present")}),
])
def test_a_hedge_before_due_to_reaches_the_cause(text, expected):
    assert triples(text) == expected


@pytest.mark.parametrize("text", [
    "Left renal vein is patent.", "Accessory left renal artery.", "Right renal artery stenosis.",
])
def test_sided_renal_vessels_are_not_the_kidney(text):
    assert triples(text) == set()


def test_a_renal_vessel_does_not_make_a_normal_kidney_sided():
    assert triples("Kidneys: Normal. Left renal vein is patent.") == {("kidney", None, "absent")}
    assert triples("Left renal cyst.") == {("kidney_left", "renal_cyst", "present")}


@pytest.mark.parametrize("text", ["Aortic valve calcifications.", "Calcification of the aortic valve."])
def test_valve_calcification_is_not_aortic_calcification(text):
    assert triples(text) == set()


@pytest.mark.parametrize("text", [
    "S/p lap chole. Gallbladder: Normal.", "Post-chole. Gallbladder: Normal.",
    "Surgical clips in the gallbladder fossa. Gallbladder: Normal.",
    "Surgical clips in the gallbladder fossa.",
])
def test_cholecystectomy_shorthand_and_clips_remove_the_gallbladder(text):
    assert triples(text) == set()


def test_a_planned_cholecystectomy_removes_nothing():
    assert triples("Gallstones. Recommend lap chole.") == {("gallbladder", "gallstones", "present")}


@pytest.mark.parametrize("text, expected", [
    ("Without contrast, evaluation of the liver is limited.", set()),
    ("Evaluation of the liver is limited.", set()),
    ("Without contrast, the liver is unremarkable.", {("liver", None, "absent")}),
    ("Without contrast, no hydronephrosis.", {("kidney", "hydronephrosis", "absent")}),
])
def test_without_contrast_and_a_limited_evaluation_say_nothing_of_the_organ(text, expected):
    assert triples(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Pleural effusion: small, left.", {("lung_lower_lobe_left", "pleural_effusion", "present")}),
    ("Pleural effusion, left.", {("lung_lower_lobe_left", "pleural_effusion", "present")}),
    ("Small pleural effusion, right.", {("lung_lower_lobe_right", "pleural_effusion", "present")}),
    ("Hydronephrosis, right.", {("kidney_right", "hydronephrosis", "present")}),
    ("Hydronephrosis, mild, right.", {("kidney_right", "hydronephrosis", "present")}),
    ("Renal cyst, left.", {("kidney_left", "renal_cyst", "present")}),
    ("Adrenal nodule, left.", {("adrenal_gland_left", "adrenal_nodule", "present")}),
    ("Lung nodule, right.", {("lung_right", "lung_nodule", "present")}),
    ("Kidneys: Nonobstructing stone, left.", {("kidney_left", "renal_stone", "present")}),
    ("Renal cyst and hydronephrosis, left.", {("kidney_left", "renal_cyst", "present"),
                                              ("kidney_left", "hydronephrosis", "present")}),
    ("Pleural effusion, left, with adjacent atelectasis.", {("lung_lower_lobe_left", "pleural_effusion", "present"),
                                                           ("lung", "atelectasis", "present")}),
])
def test_a_side_after_a_comma_sides_the_finding(text, expected):
    assert triples(text) == expected


@pytest.mark.parametrize("text, same_as", [
    ("Small pleural effusion, right greater than left.", "Bilateral pleural effusions."),
    ("Pleural effusions, bilateral.", "Bilateral pleural effusions."),
    ("Pleural effusions, left > right.", "Bilateral pleural effusions."),
    ("Hydronephrosis, bilateral.", "Bilateral hydronephrosis."),
    ("Atelectasis, left.", "Left atelectasis."),
    ("Adrenal nodule, right.", "Right adrenal nodule."),
])
def test_a_side_after_a_comma_reads_as_the_side_before_the_finding(text, same_as):
    assert triples(text) == triples(same_as) and len({f[0] for f in triples(text)} - {"lung", "kidney"}) >= 1


@pytest.mark.parametrize("text, expected", [
    # the comma opens a statement about a sided organ or another finding: the side is not this finding's
    ("Renal cyst, left kidney normal.", {("kidney", "renal_cyst", "present")}),
    ("Renal cyst, left kidney is normal.", {("kidney", "renal_cyst", "present")}),
    ("Small pleural effusion, left lower lobe atelectasis.", {("lung", "pleural_effusion", "present"),
                                                             ("lung_lower_lobe_left", "atelectasis", "present")}),
    ("Pleural effusion, left lung clear.", {("lung", "pleural_effusion", "present")}),
    # (and the side opens a described finding, which ends the negation: present since 2026-12-07)
    ("No pleural effusion, left renal cyst.", {("lung", "pleural_effusion", "absent"),
                                               ("kidney_left", "renal_cyst", "present")}),
    ("Hydronephrosis, right renal cyst.", {("kidney", "hydronephrosis", "present"),
                                           ("kidney_right", "renal_cyst", "present")}),
    ("Hydronephrosis, left renal vein patent.", {("kidney", "hydronephrosis", "present")}),
    # more than a side after the comma: "larger on the left" says the effusions are bilateral
    ("Pleural effusions, larger on the left.", {("lung", "pleural_effusion", "present")}),
])
def test_a_comma_before_a_sided_organ_or_finding_does_not_side_the_finding(text, expected):
    assert triples(text) == expected


def test_a_side_paired_with_a_sided_organ_after_a_comma_does_not_side_the_finding():
    # "right, left lower lobe": the left lower lobe is the next statement's, so the effusion gets no side
    got = triples("Pleural effusion, right, left lower lobe atelectasis.")
    assert ("lung", "pleural_effusion", "present") in got and not {o for o, k, _ in got if k == "pleural_effusion"} - {
        "lung"}


def test_sides_after_commas_in_consecutive_sentences_under_a_heading():
    assert triples("Kidneys: Cyst, left. Stone, right.") == {("kidney_left", "renal_cyst", "present"),
                                                             ("kidney_right", "renal_stone", "present")}
    assert triples("Renal cysts, bilateral, largest 2 cm on the left.") == {("kidney_left", "renal_cyst", "present"),
                                                                             ("kidney_right", "renal_cyst", "present")}


@pytest.mark.parametrize("text, expected", [
    ("Kidneys: Arterial calcifications.", set()),
    ("Kidneys: Arterial calcification.", set()),
    ("Kidneys: Punctate arterial calcifications.", set()),
    ("Kidneys: Arterial calcific plaque.", set()),
    ("Kidneys: Calcified arterial plaque.", set()),
    ("KIDNEYS: Arterial calcifications. No hydronephrosis.", {("kidney", "hydronephrosis", "absent")}),
    ("Arterial calcifications in the left kidney.", set()),
    ("Liver: Arterial calcifications.", set()),
    # still a vessel's calcification where one is named
    ("Vascular: Arterial calcifications.", {("aorta", "aortic_calcification", "present")}),
    ("Coronary arterial calcifications.", {("heart", "coronary_calcification", "present")}),
])
def test_arterial_calcification_is_a_vessel_wall_not_an_organ_finding(text, expected):
    assert triples(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Kidneys: Calcifications.", {("kidney", "renal_stone", "present")}),
    ("Punctate calcification in the left kidney.", {("kidney_left", "renal_stone", "present")}),
    ("Kidneys: Nonobstructing calculi.", {("kidney", "renal_stone", "present")}),
    ("Kidneys: Punctate calcifications, no hydronephrosis.", {("kidney", "renal_stone", "present"),
                                                              ("kidney", "hydronephrosis", "absent")}),
])
def test_kidney_calcifications_without_a_vessel_word_stay_stones(text, expected):
    assert triples(text) == expected
