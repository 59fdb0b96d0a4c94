"""parse_report units: sections and headings, lists, measurements, laterality, negation scope, organ texts, labels."""

from __future__ import annotations

import pytest

import ctglip_sdk as cg
from ctglip_sdk.errors import ConfigError, InputError
from ctglip_sdk.reports import OrganFinding, Status, analyse, labels, organ_texts, parse_report


def triples(text):
    return {(f.organ, f.finding, f.status.value) for f in parse_report(text)}


REPORT = """CT ABDOMEN AND PELVIS WITH CONTRAST
Indication: right flank pain, ? renal stone.
Technique: Axial images after IV contrast. Comparison: none.

FINDINGS:
Lower chest: Small right pleural effusion. No suspicious pulmonary nodules.
Liver and biliary tree: The liver is normal in size. There is a 1.8 cm simple cyst in segment VII
which is unchanged. Multiple gallstones, the largest 1.2 cm. No gallbladder wall thickening.
Spleen: Normal.
Pancreas: Normal without ductal dilatation or mass.
Adrenals: 1.6 cm left adrenal nodule, likely adenoma.
KIDNEYS:
- No hydronephrosis.
- Nonobstructing 4 mm right lower pole calculus.
- Approx. 2.3 x 1.9 cm cyst in the left kidney (Bosniak I).
Vascular: Atherosclerotic calcification of the abdominal aorta. No AAA.
Bladder: Unremarkable.

IMPRESSION:
1. Cholelithiasis.
2. Right nephrolithiasis without hydronephrosis.
"""


def test_full_report_sections_headings_and_lists():
    got = parse_report(REPORT)
    assert all(isinstance(f, OrganFinding) and isinstance(f.status, Status) for f in got)
    found = {(f.organ, f.finding, str(f.status)) for f in got}
    assert found == {
        ("lung_lower_lobe_right", "pleural_effusion", "present"), ("lung", "lung_nodule", "absent"),
        ("liver", None, "absent"), ("liver", "liver_cyst", "present"), ("gallbladder", "gallstones", "present"),
        ("gallbladder", "gallbladder_wall_thickening", "absent"), ("spleen", None, "absent"),
        ("pancreas", None, "absent"), ("pancreas", "pancreatic_duct_dilation", "absent"),
        ("pancreas", "pancreatic_mass", "absent"), ("adrenal_gland_left", "adrenal_nodule", "present"),
        ("kidney", "hydronephrosis", "absent"), ("kidney_right", "renal_stone", "present"),
        ("kidney_left", "renal_cyst", "present"), ("aorta", "aortic_calcification", "present"),
        ("aorta", "aortic_aneurysm", "absent"), ("urinary_bladder", None, "absent")}
    # the indication's "? renal stone" is not a finding; the impression repeats with its own sentences
    stones = [f for f in got if f.finding == "renal_stone"]
    assert [f.sentence for f in stones] == ["Nonobstructing 4 mm right lower pole calculus.",
                                            "Right nephrolithiasis without hydronephrosis."]
    # spans point at the evidence in the original text; a wrapped sentence is one sentence
    cyst = next(f for f in got if f.finding == "liver_cyst")
    assert REPORT[cyst.span[0]:cyst.span[1]] == "simple cyst"
    assert cyst.sentence == "There is a 1.8 cm simple cyst in segment VII which is unchanged."
    assert got == sorted(got, key=lambda f: f.span[0])
    assert cg.parse_report is parse_report


@pytest.mark.parametrize("text,expected", [
    ("SPLEEN:\nNormal.", {("spleen", None, "absent")}),
    ("Kidneys: No hydronephrosis.", {("kidney", "hydronephrosis", "absent")}),
    ("KIDNEYS AND URETERS\nNo hydronephrosis.", {("kidney", "hydronephrosis", "absent")}),
    ("Lungs/pleura: No effusion.", {("lung", "pleural_effusion", "absent")}),
    ("Liver and biliary tree: Normal.", {("liver", None, "absent"), ("gallbladder", None, "absent")}),
    ("Right adrenal: 1 cm nodule.", {("adrenal_gland_right", "adrenal_nodule", "present")}),
    ("Adrenal glands:\n- Right: 1.2 cm nodule.\n- Left: normal.",
     {("adrenal_gland_right", "adrenal_nodule", "present"), ("adrenal_gland_left", None, "absent")}),
    ("Spleen: normal.\nHistory: splenomegaly.\nPancreas: atrophic.",
     {("spleen", None, "absent"), ("pancreas", "pancreatic_atrophy", "present")}),
    ("IMPRESSION: 1. Cholelithiasis. 2. Left renal cyst.",
     {("gallbladder", "gallstones", "present"), ("kidney_left", "renal_cyst", "present")}),
    ("1) Splenomegaly\n2) Hepatic steatosis",
     {("spleen", "splenomegaly", "present"), ("liver", "hepatic_steatosis", "present")}),
])
def test_headings_sections_and_lists(text, expected):
    assert triples(text) == expected


def test_heading_organ_applies_until_the_next_heading():
    text = "Liver:\nSmall cyst in segment VI.\nCalcified granuloma.\nKidneys:\nSimple cyst."
    assert triples(text) == {("liver", "liver_cyst", "present"), ("liver", "liver_calcification", "present"),
                             ("kidney", "renal_cyst", "present")}


def test_sentence_splitting_keeps_decimals_measurements_and_abbreviations():
    text = ("Approx. 3.4cm hypodense mass in the left lobe of the liver, e.g. as before. Findings discussed with "
            "Dr. Smith vs. Dr. Jones. Lesion measures 1.2 x 0.8 cm. No hydronephrosis; small renal cyst.")
    sentences = [s.text for s in analyse(text)]
    assert sentences == ["Approx. 3.4cm hypodense mass in the left lobe of the liver, e.g. as before.",
                         "Findings discussed with Dr. Smith vs. Dr. Jones.", "Lesion measures 1.2 x 0.8 cm.",
                         "No hydronephrosis;", "small renal cyst."]
    assert triples(text) >= {("liver", "liver_mass", "present"), ("kidney", "hydronephrosis", "absent"),
                             ("kidney", "renal_cyst", "present")}


def test_wrapped_lines_join_and_crlf():
    text = "There is a 2.5 cm hypodense lesion in the\r\nright hepatic lobe, consistent with a simple cyst.\r\n"
    assert triples(text) == {("liver", "liver_cyst", "present")}


@pytest.mark.parametrize("text,expected", [
    ("Left renal cyst.", {("kidney_left", "renal_cyst", "present")}),
    ("Cyst in the lower pole of the right kidney.", {("kidney_right", "renal_cyst", "present")}),
    ("Bilateral nephrolithiasis.", {("kidney_left", "renal_stone", "present"),
                                    ("kidney_right", "renal_stone", "present")}),
    ("Renal cysts bilaterally.", {("kidney_left", "renal_cyst", "present"),
                                  ("kidney_right", "renal_cyst", "present")}),
    ("Right lower lobe nodule.", {("lung_lower_lobe_right", "lung_nodule", "present")}),
    ("Nodule in the left lung.", {("lung_left", "lung_nodule", "present")}),
    ("Small left pleural effusion.", {("lung_lower_lobe_left", "pleural_effusion", "present")}),
    ("Bilateral pleural effusions.", {("lung_lower_lobe_left", "pleural_effusion", "present"),
                                      ("lung_lower_lobe_right", "pleural_effusion", "present")}),
    ("Hydronephrosis on the right.", {("kidney_right", "hydronephrosis", "present")}),
    ("Mild compression fracture of L1.", {("vertebrae_L1", "vertebral_fracture", "present")}),
    ("Renal cyst.", {("kidney", "renal_cyst", "present")}),
])
def test_laterality(text, expected):
    assert triples(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("Hepatic and renal cysts.", {("liver", "liver_cyst", "present"), ("kidney", "renal_cyst", "present")}),
    ("Cysts in the liver and both kidneys.", {("liver", "liver_cyst", "present"),
                                              ("kidney_left", "renal_cyst", "present"),
                                              ("kidney_right", "renal_cyst", "present")}),
    ("The liver, spleen and pancreas are unremarkable.", {("liver", None, "absent"), ("spleen", None, "absent"),
                                                          ("pancreas", None, "absent")}),
    ("Hepatosplenomegaly.", {("liver", "hepatomegaly", "present"), ("spleen", "splenomegaly", "present")}),
    ("Left adrenal nodule and right renal cyst.", {("adrenal_gland_left", "adrenal_nodule", "present"),
                                                   ("kidney_right", "renal_cyst", "present")}),
    ("Atrophic left kidney containing a 7 mm stone.", {("kidney_left", "renal_atrophy", "present"),
                                                       ("kidney_left", "renal_stone", "present")}),
    ("Normal kidneys apart from a small cyst in the left kidney.", {("kidney_right", None, "absent"),
                                                                    ("kidney_left", "renal_cyst", "present")}),
])
def test_several_organs_and_findings_in_one_sentence(text, expected):
    assert triples(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("No focal hepatic lesion.", {("liver", "liver_cyst", "absent"), ("liver", "liver_mass", "absent")}),
    ("Kidneys without hydronephrosis.", {("kidney", "hydronephrosis", "absent")}),
    ("No evidence of hepatic metastases.", {("liver", "liver_mass", "absent")}),
    ("Negative for hydronephrosis.", {("kidney", "hydronephrosis", "absent")}),
    ("The gallbladder is free of stones.", {("gallbladder", "gallstones", "absent")}),
    ("The right pleural effusion has resolved.", {("lung_lower_lobe_right", "pleural_effusion", "absent")}),
    ("Gallstones are not seen.", {("gallbladder", "gallstones", "absent")}),
    ("No renal or ureteral calculi.", {("kidney", "renal_stone", "absent")}),
    ("No hydronephrosis, nephrolithiasis or renal mass.", {("kidney", "hydronephrosis", "absent"),
                                                           ("kidney", "renal_stone", "absent"),
                                                           ("kidney", "renal_mass", "absent")}),
    # scope ends at conjunctions, terminators, measurements and pseudo-negations
    ("No gallstones but the gallbladder wall is thickened.", {("gallbladder", "gallstones", "absent"),
                                                              ("gallbladder", "gallbladder_wall_thickening",
                                                               "present")}),
    ("No hydronephrosis; however, there is a left renal stone.", {("kidney", "hydronephrosis", "absent"),
                                                                  ("kidney_left", "renal_stone", "present")}),
    ("No hepatic mass, which was suspected on ultrasound.", {("liver", "liver_mass", "absent")}),
    ("No hydronephrosis, 4 mm stone in the left kidney.", {("kidney", "hydronephrosis", "absent"),
                                                           ("kidney_left", "renal_stone", "present")}),
    ("No hydronephrosis, stable left renal cyst.", {("kidney", "hydronephrosis", "absent"),
                                                    ("kidney_left", "renal_cyst", "present")}),
])
def test_negation_and_scope(text, expected):
    assert triples(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("No change in the size of the left renal cyst.", {("kidney_left", "renal_cyst", "present")}),
    ("No significant change in the 5 mm right lower lobe nodule.",
     {("lung_lower_lobe_right", "lung_nodule", "present")}),
    ("Unchanged right adrenal adenoma.", {("adrenal_gland_right", "adrenal_nodule", "present")}),
    ("There is not only hepatic steatosis but also splenomegaly.",
     {("liver", "hepatic_steatosis", "present"), ("spleen", "splenomegaly", "present")}),
    ("Non-enhancing hypodense lesion in the liver, consistent with a cyst.", {("liver", "liver_cyst", "present")}),
])
def test_pseudo_negations_do_not_negate(text, expected):
    assert triples(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("Cannot exclude a small left renal calculus.", {("kidney_left", "renal_stone", "uncertain")}),
    ("A small right pleural effusion cannot be excluded.",
     {("lung_lower_lobe_right", "pleural_effusion", "uncertain")}),
    ("Possibly early splenomegaly.", {("spleen", "splenomegaly", "uncertain")}),
    ("Questionable 3 mm nodule in the lingula.", {("lung_upper_lobe_left", "lung_nodule", "uncertain")}),
    ("Probable small hiatal hernia.", {("stomach", "hiatal_hernia", "uncertain")}),
    ("Likely hepatic steatosis.", {("liver", "hepatic_steatosis", "uncertain")}),
    ("Hepatic hemangioma vs. cyst.", {("liver", "liver_mass", "uncertain"), ("liver", "liver_cyst", "uncertain")}),
    ("Hypoattenuating lesion in the pancreatic head, suspicious for adenocarcinoma.",
     {("pancreas", "pancreatic_mass", "uncertain")}),
    ("Subcentimeter hypodensity in the liver, too small to characterize.", {("liver", "liver_cyst", "uncertain")}),
    ("Ectasia of the infrarenal aorta to 2.8 cm.", {("aorta", "aortic_aneurysm", "uncertain")}),
    ("Small pleural effusion?", {("lung", "pleural_effusion", "uncertain")}),
    # a stated lesion characterised as "likely" stays present; a hedged characterisation stays uncertain
    ("1.6 cm left adrenal nodule, likely adenoma.", {("adrenal_gland_left", "adrenal_nodule", "present")}),
    ("Hypodense liver lesion, likely a cyst.", {("liver", "liver_cyst", "present")}),
    ("Hypodense liver lesion, possibly a cyst.", {("liver", "liver_cyst", "uncertain")}),
    ("Hypodense liver lesion.", {("liver", None, "present")}),
])
def test_uncertainty(text, expected):
    assert triples(text) == expected


def test_normal_statements_and_free_text():
    assert triples("The liver is normal.") == {("liver", None, "absent")}
    assert triples("Unremarkable kidneys.") == {("kidney", None, "absent")}
    assert triples("The portal vein is patent.") == {("portal_vein_and_splenic_vein", None, "absent")}
    assert triples("No pericardial effusion.") == {("heart", "pericardial_effusion", "absent")}
    assert triples("Dilated loops of small bowel.") == {("small_bowel", None, "present")}
    assert triples("No free fluid. Technique: CT with contrast.") == set()
    assert triples("Recommend follow-up in 6 months.") == set()


def test_british_and_american_spellings():
    assert triples("Hepatic haemangioma.") == triples("Hepatic hemangioma.") == {("liver", "liver_mass", "present")}
    assert triples("Renal tumour.") == triples("Renal tumor.") == {("kidney", "renal_mass", "present")}
    assert triples("Oesophagus: small hiatus hernia.") == {("stomach", "hiatal_hernia", "present")}
    assert triples("Small calcific focus in the spleen.") == {("spleen", "splenic_calcification", "present")}
    assert triples("Calcified granulomata in the spleen.") == {("spleen", "splenic_calcification", "present")}


def test_organ_texts_policies():
    report = "Spleen: Normal.\nKidneys: Left renal cyst. No hydronephrosis.\nLungs: Small right pleural effusion."
    texts = organ_texts(report, organs=["spleen", "kidney", "liver", "lung_lower_lobe_right", "lung_upper_lobe_left"])
    assert texts["spleen"] == "Spleen: Normal."
    assert texts["kidney_left"] == "Left renal cyst. No hydronephrosis."
    assert texts["kidney_right"] == "No hydronephrosis."  # a group statement goes to every member
    assert organ_texts("Kidneys: Normal.", organs=["kidney_right"]) == {"kidney_right": "Kidneys: Normal."}
    assert texts["liver"] == "The liver is normal in size and attenuation."
    assert texts["lung_lower_lobe_right"] == "Small right pleural effusion."
    assert texts["lung_upper_lobe_left"] == "The left upper lobe of the lung is clear."
    skipped = organ_texts(report, policy="skip")
    assert "liver" not in skipped and set(skipped) == {"spleen", "kidney_left", "kidney_right",
                                                       "lung_lower_lobe_right"}
    full = organ_texts(report)
    assert len(full) == 104
    import random
    one = organ_texts("", organs=["liver"], rng=random.Random(0))["liver"]
    assert one in cg.AbnormalityDictionary.default().normal_phrases("liver")
    with pytest.raises(ConfigError, match="policy"):
        organ_texts(report, policy="ignore")


def test_labels_distribute_groups():
    lab = labels("Renal cyst. Emphysema. Left kidney: stone. Spleen normal. Spleen: splenomegaly.")
    assert lab[("kidney_left", "renal_cyst")] is Status.UNCERTAIN  # focal finding, side not said
    assert lab[("kidney_right", "renal_cyst")] is Status.UNCERTAIN
    assert lab[("kidney_left", "renal_stone")] is Status.PRESENT and ("kidney_right", "renal_stone") not in lab
    assert all(lab[(lobe, "emphysema")] is Status.PRESENT for lobe in cg.organs.GROUPS["lung"])  # diffuse
    assert lab[("spleen", "splenomegaly")] is Status.PRESENT
    assert ("spleen", None) not in lab  # "normal" is dropped where a finding is present
    assert labels("Kidneys normal.") == {("kidney_left", None): Status.ABSENT, ("kidney_right", None): Status.ABSENT}


def test_bad_input():
    with pytest.raises(InputError, match="string"):
        parse_report(b"No hydronephrosis.")
    assert parse_report("") == [] and parse_report("   \n\n") == []
    assert str(Status.PRESENT) == "present" and Status("absent") is Status.ABSENT
    f = parse_report("Left renal cyst.")[0]
    assert f.to_dict() == {"organ": "kidney_left", "finding": "renal_cyst", "status": "present",
                           "sentence": "Left renal cyst.", "span": [11, 15]}


# --- findings described against the comparison exam, hedged exclusions, more negation forms, clause scope,
# --- normal statements per clause, partial resolution, history sections (sentences written for these tests)

@pytest.mark.parametrize("text,expected", [
    ("Small right pleural effusion, not seen on the previous CT.",
     {("lung_lower_lobe_right", "pleural_effusion", "present")}),
    ("Right renal cyst, not identified on prior imaging.", {("kidney_right", "renal_cyst", "present")}),
    ("Mild splenomegaly, not present before.", {("spleen", "splenomegaly", "present")}),
    ("Not previously seen right adrenal nodule.", {("adrenal_gland_right", "adrenal_nodule", "present")}),
    ("New left adrenal nodule, not visible on the CT of 3/4/2021.",
     {("adrenal_gland_left", "adrenal_nodule", "present")}),
    ("Pancreatic cyst, absent on the outside study.", {("pancreas", "pancreatic_cyst", "present")}),
    # the current exam, and a resolution compared with the prior, still negate
    ("The left renal stone is not seen on the current examination.", {("kidney_left", "renal_stone", "absent")}),
    ("The hydronephrosis has resolved compared with the prior study.", {("kidney", "hydronephrosis", "absent")}),
    ("Gallstones are not seen today.", {("gallbladder", "gallstones", "absent")}),
])
def test_not_seen_on_the_prior_exam_means_new(text, expected):
    assert triples(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("Splenomegaly cannot be fully excluded.", {("spleen", "splenomegaly", "uncertain")}),
    ("An underlying pancreatic mass cannot be completely excluded.", {("pancreas", "pancreatic_mass", "uncertain")}),
    ("Pneumonia can not be entirely ruled out.", {("lung", "lung_consolidation", "uncertain")}),
    ("A small hiatal hernia could not be excluded.", {("stomach", "hiatal_hernia", "uncertain")}),
    ("Early cholecystitis can\u2019t be excluded.", {("gallbladder", "gallbladder_wall_thickening", "uncertain")}),
    ("Can\u2019t rule out a small right renal calculus.", {("kidney_right", "renal_stone", "uncertain")}),
    ("We cannot definitively exclude a pancreatic mass.", {("pancreas", "pancreatic_mass", "uncertain")}),
    ("It is not possible to exclude a renal stone.", {("kidney", "renal_stone", "uncertain")}),
    ("Unable to rule out right lower lobe pneumonia.", {("lung_lower_lobe_right", "lung_consolidation", "uncertain")}),
    ("Concern for splenomegaly.", {("spleen", "splenomegaly", "uncertain")}),
    ("Suspicion for pancreatic adenocarcinoma.", {("pancreas", "pancreatic_mass", "uncertain")}),
    ("Recommend MRI to evaluate for hepatic metastases.", {("liver", "liver_mass", "uncertain")}),
    ("Ultrasound to assess for gallstones.", {("gallbladder", "gallstones", "uncertain")}),
    # a hedge that characterises a negated noun stays negated; a plain exclusion negates
    ("There is no concern for malignancy in the liver.", {("liver", "liver_mass", "absent")}),
    ("Findings not suggestive of cholecystitis.", {("gallbladder", "gallbladder_wall_thickening", "absent")}),
    ("Renal stone excluded.", {("kidney", "renal_stone", "absent")}),
])
def test_hedged_exclusions_and_concern_are_uncertain(text, expected):
    assert triples(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("Kidneys w/o stones.", {("kidney", "renal_stone", "absent")}),
    ("Pancreas: w/o ductal dilatation.", {("pancreas", "pancreatic_duct_dilation", "absent")}),
    ("Lack of pleural effusion.", {("lung", "pleural_effusion", "absent")}),
    ("The pleural effusion is not visible.", {("lung", "pleural_effusion", "absent")}),
    ("Hydronephrosis is no longer evident.", {("kidney", "hydronephrosis", "absent")}),
    ("The right adrenal nodule is no longer demonstrated.", {("adrenal_gland_right", "adrenal_nodule", "absent")}),
    ("The hepatic cyst is not clearly visualized on this study.", {("liver", "liver_cyst", "absent")}),
    ("No features to suggest cholecystitis.", {("gallbladder", "gallbladder_wall_thickening", "absent")}),
    ("Nothing to indicate a pancreatic mass.", {("pancreas", "pancreatic_mass", "absent")}),
    ("The heart is not increased in size.", {("heart", "cardiomegaly", "absent")}),
    # a lesion "not increased in size" is stable, and a missing enhancement is not a normal organ
    ("The left renal cyst is not increased in size.", {("kidney_left", "renal_cyst", "present")}),
    ("Lack of enhancement of the left kidney.", {("kidney_left", None, "present")}),
])
def test_more_negation_forms(text, expected):
    assert triples(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("No lymph nodes greater than 1 cm or pleural effusion.", {("lung", "pleural_effusion", "absent")}),
    ("No renal stones of 3 mm or more and no hydronephrosis.", {("kidney", "renal_stone", "absent"),
                                                                ("kidney", "hydronephrosis", "absent")}),
    ("No nodules greater than 4 mm, hilar adenopathy or pleural effusion.",
     {("lung", "lung_nodule", "absent"), ("lung", "pleural_effusion", "absent")}),
    ("No hydronephrosis and the right kidney contains a small cyst.",
     {("kidney", "hydronephrosis", "absent"), ("kidney_right", "renal_cyst", "present")}),
    ("No pleural effusion and the heart is enlarged.",
     {("lung", "pleural_effusion", "absent"), ("heart", "cardiomegaly", "present")}),
    ("The spleen is enlarged and the gallstones are not seen.",
     {("spleen", "splenomegaly", "present"), ("gallbladder", "gallstones", "absent")}),
    ("No pancreatic duct dilatation, however the pancreas is atrophic.",
     {("pancreas", "pancreatic_duct_dilation", "absent"), ("pancreas", "pancreatic_atrophy", "present")}),
    # one clause with a list of negated nouns, and an existential verb of the list itself
    ("No gallstones, pleural effusion or hydronephrosis is seen.",
     {("gallbladder", "gallstones", "absent"), ("lung", "pleural_effusion", "absent"),
      ("kidney", "hydronephrosis", "absent")}),
    ("Gallstones and gallbladder wall thickening are not seen.",
     {("gallbladder", "gallstones", "absent"), ("gallbladder", "gallbladder_wall_thickening", "absent")}),
    # lines of a list without periods, and a period without a space, end a statement
    ("Gallbladder: no stones\nmild wall thickening", {("gallbladder", "gallstones", "absent"),
                                                      ("gallbladder", "gallbladder_wall_thickening", "present")}),
    ("No splenomegaly.Small hiatal hernia.", {("spleen", "splenomegaly", "absent"),
                                             ("stomach", "hiatal_hernia", "present")}),
])
def test_negation_scope_ends_at_a_new_clause_not_at_a_qualifier(text, expected):
    assert triples(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("The pancreas is atrophic, but the liver is normal.", {("pancreas", "pancreatic_atrophy", "present"),
                                                            ("liver", None, "absent")}),
    ("The adrenal glands are unremarkable, but the pancreas is lobulated.",
     {("adrenal_gland", None, "absent"), ("pancreas", None, "present")}),
    ("The kidneys are normal, and the bladder is distended.", {("kidney", None, "absent"),
                                                               ("urinary_bladder", None, "present")}),
    ("Normal spleen and kidneys, the stomach is distended.", {("spleen", None, "absent"), ("kidney", None, "absent"),
                                                             ("stomach", None, "present")}),
    ("Unremarkable adrenal glands with adrenal thickening on the left.", {("adrenal_gland", None, "present")}),
    ("No splenic abnormality and the pancreas is lobulated.", {("spleen", None, "absent"),
                                                               ("pancreas", None, "present")}),
    # lists of organs with articles, and normal words after "with", stay one clause
    ("The liver, the spleen and the pancreas are normal.", {("liver", None, "absent"), ("spleen", None, "absent"),
                                                            ("pancreas", None, "absent")}),
    ("Kidneys with normal enhancement and no hydronephrosis.", {("kidney", None, "absent"),
                                                                ("kidney", "hydronephrosis", "absent")}),
    ("No focal liver lesions and the gallbladder and spleen are unremarkable.",
     {("liver", "liver_cyst", "absent"), ("liver", "liver_mass", "absent"), ("gallbladder", None, "absent"),
      ("spleen", None, "absent")}),
])
def test_normal_applies_to_the_organs_of_its_clause(text, expected):
    assert triples(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("The right pleural effusion has partially resolved.", {("lung_lower_lobe_right", "pleural_effusion", "present")}),
    ("Incompletely resolved right lower lobe pneumonia.", {("lung_lower_lobe_right", "lung_consolidation", "present")}),
    ("Pleural effusion has almost completely resolved.", {("lung", "pleural_effusion", "present")}),
    ("Largely resolved hydronephrosis on the right.", {("kidney_right", "hydronephrosis", "present")}),
    ("The pneumonia has not resolved.", {("lung", "lung_consolidation", "present")}),
    ("Interval near complete resolution of the left pleural effusion.",
     {("lung_lower_lobe_left", "pleural_effusion", "present")}),
    ("Repeat CT to confirm resolution of the right lower lobe pneumonia.",
     {("lung_lower_lobe_right", "lung_consolidation", "present")}),
    ("Complete resolution of the left pleural effusion.", {("lung_lower_lobe_left", "pleural_effusion", "absent")}),
])
def test_partial_resolution_is_not_absence(text, expected):
    assert triples(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("PATIENT HX: HCC.\nLiver: Normal.", {("liver", None, "absent")}),
    ("History/Indication: AAA.\nAorta: Normal caliber.", {("aorta", None, "absent")}),
    ("Relevant clinical history: renal colic.\nKidneys: No hydronephrosis.", {("kidney", "hydronephrosis", "absent")}),
    ("Technique and comparison: CT 2019 with hepatic cyst.", set()),
    ("Clinical: ? splenomegaly.", set()),
    ("MRI to exclude adrenal adenoma.", {("adrenal_gland", "adrenal_nodule", "uncertain")}),
    # follow-up of a finding already stated is not a search for it
    ("Follow-up CT to evaluate for stability of the 5 mm right upper lobe nodule.",
     {("lung_upper_lobe_right", "lung_nodule", "present")}),
])
def test_history_sections_and_recommendations_are_not_findings(text, expected):
    assert triples(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("The spleen has been surgically removed.", set()),
    ("The gallbladder and spleen have been removed.", set()),
    ("Absent gallbladder. Normal pancreas.", {("pancreas", None, "absent")}),
    ("Gallbladder: not visualized.", set()),
    ("The left kidney is not visualised, in keeping with previous nephrectomy.", set()),
    ("History of splenectomy. The liver is unremarkable.", {("liver", None, "absent")}),
    # an operation removes its organ from the whole report, on the side it names
    ("Status post splenectomy.\nSpleen: unremarkable.", set()),
    ("Post-cholecystectomy clips in the gallbladder fossa.\nLiver and biliary tree: Normal.",
     {("liver", None, "absent")}),
    ("S/p right nephrectomy.\nKidneys: normal.", {("kidney_left", None, "absent")}),
    ("Status post left adrenalectomy; the right adrenal gland is normal.", {("adrenal_gland_right", None, "absent")}),
    # planned and partial operations, and parts of organs, leave the organ
    ("Cholelithiasis. Recommend cholecystectomy.\nGallbladder: otherwise normal.",
     {("gallbladder", "gallstones", "present"), ("gallbladder", None, "absent")}),
    ("Status post partial nephrectomy on the left. Both kidneys otherwise unremarkable.", {("kidney", None, "absent")}),
    ("Gallbladder: Catheter removed. Normal.", {("gallbladder", None, "absent")}),
])
def test_removed_or_missing_organs_are_not_normal(text, expected):
    assert triples(text) == expected


def test_removed_organ_keeps_its_own_text():
    texts = organ_texts("Status post left nephrectomy.\nKidneys: normal.", organs=["kidney_left", "kidney_right"])
    assert texts == {"kidney_left": "Status post left nephrectomy.", "kidney_right": "Kidneys: normal."}
    assert labels("Status post cholecystectomy.\nHepatobiliary: Normal.") == {("liver", None): Status.ABSENT}


@pytest.mark.parametrize("text,expected", [
    # an upper-case line that states a finding or a normal organ is text, not a heading
    ("FINDINGS:\nSPLENOMEGALY\nNO PLEURAL EFFUSION", {("spleen", "splenomegaly", "present"),
                                                     ("lung", "pleural_effusion", "absent")}),
    ("RIGHT ADRENAL NODULE\nKIDNEYS\nNo hydronephrosis.", {("adrenal_gland_right", "adrenal_nodule", "present"),
                                                          ("kidney", "hydronephrosis", "absent")}),
    ("UNREMARKABLE SPLEEN", {("spleen", None, "absent")}),
    ("CT CHEST WITHOUT CONTRAST\nLungs: clear.", {("lung", None, "absent")}),
    ("BONES/FRACTURES\nNo acute fracture.", {("vertebrae", "vertebral_fracture", "absent")}),
    # a checklist line: the finding before the colon, the answer after it
    ("Splenomegaly: none.", {("spleen", "splenomegaly", "absent")}),
    ("Renal cysts: not seen.", {("kidney", "renal_cyst", "absent")}),
    ("Adrenal nodule: no", {("adrenal_gland", "adrenal_nodule", "absent")}),
    ("Gallstones: equivocal.", {("gallbladder", "gallstones", "uncertain")}),
    ("Hydronephrosis: mild on the right.", {("kidney_right", "hydronephrosis", "present")}),
    ("KIDNEYS:\nCalculi: none. Hydronephrosis: moderate.",
     {("kidney", "renal_stone", "absent"), ("kidney", "hydronephrosis", "present")}),
    ("Spleen: normal\nPancreas: atrophic", {("spleen", None, "absent"), ("pancreas", "pancreatic_atrophy", "present")}),
])
def test_upper_case_statements_and_checklist_lines(text, expected):
    assert triples(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("Left and right renal cysts.", {("kidney_left", "renal_cyst", "present"),
                                     ("kidney_right", "renal_cyst", "present")}),
    ("Bilat renal calculi.", {("kidney_left", "renal_stone", "present"), ("kidney_right", "renal_stone", "present")}),
    ("Left greater than right pleural effusions.", {("lung_lower_lobe_left", "pleural_effusion", "present"),
                                                   ("lung_lower_lobe_right", "pleural_effusion", "present")}),
    ("Small renal cysts on the left and right.", {("kidney_left", "renal_cyst", "present"),
                                                 ("kidney_right", "renal_cyst", "present")}),
    ("Right and left adrenal adenomas.", {("adrenal_gland_left", "adrenal_nodule", "present"),
                                         ("adrenal_gland_right", "adrenal_nodule", "present")}),
    ("Calculi in both kidneys.", {("kidney_left", "renal_stone", "present"),
                                  ("kidney_right", "renal_stone", "present")}),
    # a whole-organ statement keeps the group, as "both kidneys are normal" does
    ("Right and left kidneys are unremarkable.", {("kidney", None, "absent")}),
    ("Right renal cyst and left adrenal nodule.", {("kidney_right", "renal_cyst", "present"),
                                                  ("adrenal_gland_left", "adrenal_nodule", "present")}),
    # lone letters paired, as hospital shorthand writes them
    ("R and L renal cysts.", {("kidney_left", "renal_cyst", "present"), ("kidney_right", "renal_cyst", "present")}),
    ("No R or L hydronephrosis.", {("kidney_left", "hydronephrosis", "absent"),
                                   ("kidney_right", "hydronephrosis", "absent")}),
    ("R/L pleural effusions.", {("lung_lower_lobe_left", "pleural_effusion", "present"),
                                ("lung_lower_lobe_right", "pleural_effusion", "present")}),
])
def test_two_sides_in_one_phrase(text, expected):
    assert triples(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("Diverticulosis at the splenic flexure.", {("colon", "colonic_diverticulosis", "present")}),
    ("Hepatic flexure wall thickening.", {("colon", None, "present")}),
    ("1.5 cm cyst in segment 6.", {("liver", "liver_cyst", "present")}),
    ("Nodule in segment 6 of the left lower lobe.", {("lung_lower_lobe_left", "lung_nodule", "present")}),
    ("Lungs: 4 mm nodule in segment 10.", {("lung", "lung_nodule", "present")}),
    ("Rt renal calculus.", {("kidney_right", "renal_stone", "present")}),
    ("Lt. adrenal adenoma.", {("adrenal_gland_left", "adrenal_nodule", "present")}),
    ("Stone in the R kidney.", {("kidney_right", "renal_stone", "present")}),
    ("L1 compression fracture.", {("vertebrae_L1", "vertebral_fracture", "present")}),
    ("GB wall thickening with gallstones.", {("gallbladder", "gallbladder_wall_thickening", "present"),
                                            ("gallbladder", "gallstones", "present")}),
    ("Scattered hepatic mets.", {("liver", "liver_mass", "present")}),
    ("No evidence of HSM.", {("liver", "hepatomegaly", "absent"), ("spleen", "splenomegaly", "absent")}),
])
def test_flexures_numbered_segments_and_abbreviations(text, expected):
    assert triples(text) == expected


def test_lay_words_are_query_only():
    # Reports use size words of their own ("small right pleural effusion", "effusion (large)"): the lay words that
    # read_query understands (ctglip_sdk.reports.lay) must not become report vocabulary, or training labels change.
    from ctglip_sdk.reports.query import read_query
    text = "Spleen: Swollen. Liver: Big, with a lump. Lungs: Water around the lungs. Small right pleural effusion."
    before = triples(text)
    assert read_query("swollen spleen") is not None  # builds the lay vocabulary
    after = triples(text)
    assert after == before
    assert {f for _, f, _ in after} == {None, "pleural_effusion"}  # no splenomegaly, liver mass or atrophy


@pytest.mark.parametrize("text,expected", [
    # a lone side letter before a finding that names its sided organ (no organ word to carry the side)
    ("R hydronephrosis. No L hydronephrosis.", {("kidney_right", "hydronephrosis", "present"),
                                                ("kidney_left", "hydronephrosis", "absent")}),
    ("Mild L hydroureteronephrosis.", {("kidney_left", "hydronephrosis", "present")}),
    ("Small R hydrothorax.", {("lung_lower_lobe_right", "pleural_effusion", "present")}),
    ("Non-obstructing L nephrolithiasis.", {("kidney_left", "renal_stone", "present")}),
    ("R renal cyst.", {("kidney_right", "renal_cyst", "present")}),      # the organ phrase still carries it
    ("Hepatic steatosis. R hydronephrosis.", {("liver", "hepatic_steatosis", "present"),
                                              ("kidney_right", "hydronephrosis", "present")}),
])
def test_a_side_letter_before_a_finding_that_names_its_organ(text, expected):
    assert triples(text) == expected


def test_a_lone_letter_is_no_side_before_an_unsided_finding():
    """"r" before a finding of an organ without sides is not a phrase: nothing changes about the finding."""
    assert triples("Grade r splenomegaly.") == triples("Grade splenomegaly.")


@pytest.mark.parametrize("text,expected", [
    # "Nil" negates, as British and Australian reports write it
    ("Nil pleural effusion.", {("lung", "pleural_effusion", "absent")}),
    ("Nil evidence of hydronephrosis or renal calculi.", {("kidney", "hydronephrosis", "absent"),
                                                          ("kidney", "renal_stone", "absent")}),
    ("Gallstones: nil.", {("gallbladder", "gallstones", "absent")}),
    # "There is no (significant) change in X" says X is there and unchanged
    ("There is no significant interval change in the known left renal cyst.",
     {("kidney_left", "renal_cyst", "present")}),
    ("There has been no change in the right adrenal adenoma.", {("adrenal_gland_right", "adrenal_nodule", "present")}),
    ("There is no hydronephrosis.", {("kidney", "hydronephrosis", "absent")}),
    # a post-cue with its own subject after a comma denies that subject
    ("Moderate right hydronephrosis, cause not identified.", {("kidney_right", "hydronephrosis", "present")}),
    ("Hepatic steatosis, source of the pain not identified.", {("liver", "hepatic_steatosis", "present")}),
    ("Renal cysts, stones and hydronephrosis are not seen.", {("kidney", "renal_cyst", "absent"),
                                                              ("kidney", "renal_stone", "absent"),
                                                              ("kidney", "hydronephrosis", "absent")}),
    ("Hydronephrosis, not seen.", {("kidney", "hydronephrosis", "absent")}),
    # "previously not seen" is a new finding
    ("Left upper lobe nodule, previously not seen.", {("lung_upper_lobe_left", "lung_nodule", "present")}),
    # growth of a named lesion is not organ enlargement; growth of the organ is
    ("Hepatic metastases have increased in size.", {("liver", "liver_mass", "present")}),
    ("The spleen has increased in size.", {("spleen", "splenomegaly", "present")}),
])
def test_hospital_phrasings_of_negation_and_change(text, expected):
    assert triples(text) == expected


@pytest.mark.parametrize("text,expected", [
    # a denied word the dictionary lacks says nothing of the organ's other findings: no normal-organ statement
    ("No acute pulmonary embolus.", set()),
    ("No splenic infarct.", set()),
    ("Bowel: No obstruction.", set()),                   # was (bowel, None, present): a flipped polarity
    ("The kidneys are not obstructed.", set()),          # was (kidney, None, present)
    # ... but a denial that goes on to words the vocabulary knows is still a normal statement
    ("No splenic abnormality.", {("spleen", None, "absent")}),
    ("Splenic infarct.", {("spleen", None, "present")}),
    # a "?" before a word queries that word only
    ("Dilated pancreatic duct with abrupt cut-off - ?underlying mass.",
     {("pancreas", "pancreatic_duct_dilation", "present"), ("pancreas", "pancreatic_mass", "uncertain")}),
    ("Is there a liver mass?", {("liver", "liver_mass", "uncertain")}),
    # sides said inside a finding's own phrase
    ("Bibasilar atelectasis.", {("lung_left", "atelectasis", "present"), ("lung_right", "atelectasis", "present")}),
    ("Small left kidney measuring 8.5 cm.", {("kidney_left", "renal_atrophy", "present")}),
])
def test_denials_of_unknown_words_queries_and_sides_inside_phrases(text, expected):
    assert triples(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("Hepatic steatosis is likely.", {("liver", "hepatic_steatosis", "uncertain")}),     # "likely" after it
    ("Hydronephrosis is less likely.", {("kidney", "hydronephrosis", "absent")}),
    ("The right renal calculus has passed.", {("kidney_right", "renal_stone", "absent")}),
    ("Splenomegaly is likely due to portal hypertension.", {("spleen", "splenomegaly", "present")}),  # the cause
    ("Mild right and moderate left hydronephrosis.", {("kidney_left", "hydronephrosis", "present"),
                                                      ("kidney_right", "hydronephrosis", "present")}),
    ("Large left and small right pleural effusions.", {("lung_lower_lobe_left", "pleural_effusion", "present"),
                                                       ("lung_lower_lobe_right", "pleural_effusion", "present")}),
])
def test_post_position_hedges_passed_stones_and_severities_between_sides(text, expected):
    assert triples(text) == expected



@pytest.mark.parametrize("text,expected", [
    # bile ducts are not the gallbladder: their dilatation says nothing of its stones or wall
    ("Biliary dilatation.", set()),
    ("No biliary ductal dilatation.", set()),
    ("Biliary: Normal.", {("gallbladder", None, "absent")}),   # as a heading it still names the gallbladder
    ("Gallbladder and biliary tree: cholelithiasis.", {("gallbladder", "gallstones", "present")}),
])
def test_biliary_words_are_bile_ducts_in_a_sentence(text, expected):
    assert triples(text) == expected



@pytest.mark.parametrize("text,expected", [
    # a synonym's leading words serve the organs listed after it (only hepatomegaly was read)
    ("Enlarged liver and spleen.", {("liver", "hepatomegaly", "present"), ("spleen", "splenomegaly", "present")}),
    ("No enlarged liver or spleen.", {("liver", "hepatomegaly", "absent"), ("spleen", "splenomegaly", "absent")}),
    ("Enlarged liver and normal spleen.", {("liver", "hepatomegaly", "present"), ("spleen", None, "absent")}),
    ("Fatty liver and spleen.", {("liver", "hepatic_steatosis", "present")}),  # "fatty" fits no spleen finding
])
def test_a_synonyms_leading_words_serve_the_organs_listed_after_it(text, expected):
    assert triples(text) == expected



@pytest.mark.parametrize("text,expected", [
    # a synonym that names its organ is not taken by an incompatible organ adjective before it (it was lost)
    ("Small esophageal hiatal hernia.", {("stomach", "hiatal_hernia", "present")}),
    ("Oesophageal hiatus hernia.", {("stomach", "hiatal_hernia", "present")}),
    ("Left ureteric calculus.", set()),             # a descriptor still belongs to the organ before it
])
def test_an_organ_adjective_does_not_swallow_a_synonym_of_another_organ(text, expected):
    assert triples(text) == expected
