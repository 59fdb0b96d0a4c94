"""The abnormality dictionary: default coverage, load/save/merge, validation errors, prompts and hard negatives."""

from __future__ import annotations

import json

import pytest

import ctglip_sdk as cg
from ctglip_sdk import organs
from ctglip_sdk.errors import ConfigError, QueryError
from ctglip_sdk.reports import AbnormalityDictionary, FindingEntry, parse_report

# The shared finding vocabulary of COMMON.md (synth truth.jsonl, reports, zero-shot and index use these keys).
SHARED = {
    "liver": ["liver_cyst", "hepatic_steatosis", "hepatomegaly", "liver_calcification", "liver_mass"],
    "gallbladder": ["gallstones", "gallbladder_wall_thickening"],
    "kidney": ["renal_cyst", "renal_stone", "hydronephrosis", "renal_atrophy"],
    "pancreas": ["pancreatic_atrophy", "pancreatic_cyst", "pancreatic_duct_dilation"],
    "spleen": ["splenomegaly", "splenic_calcification"],
    "lung": ["lung_nodule", "emphysema", "pleural_effusion"],
    "adrenal_gland": ["adrenal_nodule"],
    "aorta": ["aortic_calcification", "aortic_aneurysm"],
    "urinary_bladder": ["bladder_wall_thickening"],
}


def _minimal(**overrides):
    entry = {"organ": "spleen", "name": "splenic cyst", "synonyms": ["splenic cyst"], "descriptors": ["cyst"],
             "positives": ["2 cm simple cyst in the spleen"], "negatives": ["No splenic cyst."]}
    entry.update(overrides)
    return {"version": "test-1", "findings": {"splenic_cyst": entry}}


def test_default_covers_shared_keys_with_rich_descriptions():
    d = AbnormalityDictionary.default()
    assert cg.AbnormalityDictionary is AbnormalityDictionary and d is AbnormalityDictionary.default()
    assert isinstance(d.version, str) and d.version
    for organ, keys in SHARED.items():
        for key in keys:
            e = d[key]
            assert isinstance(e, FindingEntry) and e.key == key and e.organ == organ
            assert e.name and e.synonyms
            assert len(e.positives) >= 5 and len(set(e.positives)) == len(e.positives)
            assert len(e.negatives) >= 3
            assert any(e.modifiers.values())
    for e in d.findings():  # the extra findings meet the same bar
        assert organs.is_known(e.organ) and len(e.positives) >= 5 and len(e.negatives) >= 3
    assert len(d) >= 30 and set(d.keys()) >= {k for ks in SHARED.values() for k in ks}


def test_positive_descriptions_are_read_back_as_their_finding():
    """The dictionary's own positive phrasings parse to their key (vocabulary and descriptions agree)."""
    d = AbnormalityDictionary.default()
    missed = []
    for e in d.findings():
        for text in e.positives:
            found = {f.finding for f in parse_report(text, d) if f.status is not cg.reports.Status.ABSENT}
            if e.key not in found:
                missed.append((e.key, text))
    total = sum(len(e.positives) for e in d.findings())
    assert len(missed) <= 0.05 * total, missed


def test_for_organ_resolves_classes_to_their_group():
    d = AbnormalityDictionary.default()
    kidney = [e.key for e in d.for_organ("kidney")]
    assert kidney == [e.key for e in d.for_organ("kidney_left")] == [e.key for e in d.for_organ("kidney_right")]
    assert set(SHARED["kidney"]) <= set(kidney)
    assert "pleural_effusion" in [e.key for e in d.for_organ("lung_lower_lobe_right")]
    assert [e.key for e in d.for_organ("adrenal_gland_left")] == ["adrenal_nodule"]
    assert d.for_organ("femur_left") == []
    with pytest.raises(QueryError):
        d.for_organ("kidneyy")
    with pytest.raises(QueryError, match="did you mean"):
        d["renal_cysts"]
    assert "renal_cyst" in d and "nonsense" not in d


def test_normal_phrases_and_organ_prompts_cover_all_classes():
    d = AbnormalityDictionary.default()
    for organ in organs.ORGANS:
        prompts = d.organ_prompts(organ)
        assert len(prompts) >= 5 and all(organs.display_name(organ) in p for p in prompts)
        normal = d.normal_phrases(organ)
        assert normal and all("{" not in p for p in normal)
    assert "a CT image of the left kidney" in d.organ_prompts("kidney_left")
    assert d.normal_phrases("kidney_left")[0] == "The left kidney is unremarkable."
    assert "The liver is normal in size and attenuation." in d.normal_phrases("liver")


def test_prompts_positives_and_hard_negatives():
    d = AbnormalityDictionary.default()
    pos, neg = d.prompts("renal_cyst")
    assert "renal cyst" in pos and "CT shows renal cyst" in pos
    assert set(d["renal_cyst"].positives) <= set(pos)
    assert "no renal cyst" in neg and "No renal cysts." in neg and not set(pos) & set(neg)
    assert d.positives("hydronephrosis")[-1] == "hydronephrosis"
    hard = d.hard_negatives("renal_cyst")
    assert "No renal cysts." in hard  # negated forms of itself
    assert "bilateral nephrolithiasis" in hard and "mild right hydronephrosis" in hard  # same organ, other findings
    assert not set(d["renal_cyst"].positives) & set(hard)
    assert not any("steatosis" in h for h in hard)  # other organs are not hard negatives


def test_save_load_round_trip(tmp_path):
    d = AbnormalityDictionary.default()
    path = tmp_path / "dict.json"
    d.save(path)
    back = AbnormalityDictionary.load(path)
    assert back.to_dict() == d.to_dict() and back.version == d.version
    assert back["pleural_effusion"].sites == {"left": "lung_lower_lobe_left", "right": "lung_lower_lobe_right"}
    assert json.loads(path.read_text())["findings"]["renal_cyst"]["organ"] == "kidney"


def test_merge_adds_and_extends_findings(tmp_path):
    base = AbnormalityDictionary.default()
    mine = _minimal()
    mine["findings"]["renal_cyst"] = {"organ": "kidney", "name": "renal cyst", "synonyms": ["cystic thingy"],
                                      "positives": ["a cystic thing in the kidney"], "negatives": ["no cystic thing"]}
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(mine))
    merged = base.merge(AbnormalityDictionary.load(path))
    assert merged.version == f"{base.version}+test-1" and len(merged) == len(base) + 1
    assert merged["renal_cyst"].positives[: len(base["renal_cyst"].positives)] == base["renal_cyst"].positives
    assert "a cystic thing in the kidney" in merged["renal_cyst"].positives
    assert "splenic_cyst" not in base  # the base is untouched
    # the merged vocabulary drives the parser: no code change needed for a new finding or synonym
    assert [(f.organ, f.finding) for f in parse_report("Small cyst in the spleen.", merged)] == [
        ("spleen", "splenic_cyst")]
    assert [f.finding for f in parse_report("Left kidney: cystic thingy.", merged)] == ["renal_cyst"]
    assert [f.finding for f in parse_report("Small cyst in the spleen.", base)] == [None]
    conflict = _minimal()
    conflict["findings"]["renal_cyst"] = dict(conflict["findings"]["splenic_cyst"], organ="liver")
    with pytest.raises(ConfigError, match=r"findings\.renal_cyst\.organ"):
        base.merge(AbnormalityDictionary.from_dict(conflict))


@pytest.mark.parametrize("mutate,where", [
    (lambda raw: raw["findings"]["splenic_cyst"].update(positives=[]), "findings.splenic_cyst.positives"),
    (lambda raw: raw["findings"]["splenic_cyst"].update(positives="a cyst"), "findings.splenic_cyst.positives"),
    (lambda raw: raw["findings"]["splenic_cyst"].update(negatives=[3]), "findings.splenic_cyst.negatives"),
    (lambda raw: raw["findings"]["splenic_cyst"].update(organ="spleen_left"), "findings.splenic_cyst.organ"),
    (lambda raw: raw["findings"]["splenic_cyst"].pop("name"), "findings.splenic_cyst.name"),
    (lambda raw: raw["findings"]["splenic_cyst"].update(colour="red"), "findings.splenic_cyst.colour"),
    (lambda raw: raw["findings"]["splenic_cyst"].update(extent="patchy"), "findings.splenic_cyst.extent"),
    (lambda raw: raw["findings"]["splenic_cyst"].update(sites={"up": "spleen"}), "findings.splenic_cyst.sites"),
    (lambda raw: raw["findings"].update({"Bad Key": {}}), "findings.Bad Key"),
    (lambda raw: raw.pop("version"), "version"),
    (lambda raw: raw.update(findings={}), "findings"),
    (lambda raw: raw.update(extra=1), "extra"),
    (lambda raw: raw.update(organs={"spleen": {"normal": []}}), "organs.spleen.normal"),
])
def test_bad_files_name_the_entry(tmp_path, mutate, where):
    raw = _minimal()
    mutate(raw)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError) as info:
        AbnormalityDictionary.load(path)
    assert f"{where}:" in str(info.value) and str(path) in str(info.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        AbnormalityDictionary.load(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"version": "1", "findings": {')
    with pytest.raises(ConfigError, match="invalid JSON at line 1"):
        AbnormalityDictionary.load(broken)
    with pytest.raises(ConfigError, match="expects an AbnormalityDictionary"):
        AbnormalityDictionary.default().merge({"findings": {}})


# ---------------------------------------------------------------- the query-only lay copy (reports.lay)
def test_the_lay_copy_adds_lay_words_only_where_the_clinical_term_is():
    from ctglip_sdk.reports.lay import lay_dictionary
    base = AbnormalityDictionary.default()
    lay = lay_dictionary(base)
    assert lay is lay_dictionary(base) and lay_dictionary(lay) is lay  # built once, cached
    assert lay.keys() == base.keys()
    for key in base:
        a, b = base[key], lay[key]
        assert (a.organ, a.name, a.positives, a.negatives, a.extent) == (b.organ, b.name, b.positives, b.negatives,
                                                                          b.extent)
        assert set(a.descriptors) <= set(b.descriptors) and set(a.hedged) <= set(b.hedged)
        assert lay.prompts(key) == base.prompts(key)  # zero-shot prompts are the dictionary's own
    assert "swollen" in lay["splenomegaly"].descriptors and "swollen" not in base["splenomegaly"].descriptors
    assert "lump" in lay["liver_mass"].descriptors and "lump" not in lay["liver_cyst"].descriptors  # a lump is solid
    assert "spot" in lay["liver_mass"].descriptors and "spot" in lay["liver_cyst"].descriptors
    assert "widened" in lay["aortic_aneurysm"].hedged  # "dilated" is hedged there
    assert "smoker's lung" in lay["emphysema"].synonyms
    assert "swollen" not in lay["renal_stone"].descriptors
    # the report vocabulary is untouched
    assert base._vocab is None or "swollen" not in base._vocab.table


def test_each_lay_word_belongs_to_one_idea():
    from ctglip_sdk.reports.lay import LAY_TERMS, lay_organs
    seen = {}
    for name, term in LAY_TERMS.items():
        for w in term.words:
            assert seen.setdefault(w, name) == name, f"{w!r} is listed under {seen[w]} and {name}"
    organs_ = lay_organs()
    assert organs_["windpipe"] == "trachea" and organs_["gullet"] == "esophagus" and organs_["livers"] == "liver"
    assert "voice box" not in organs_  # TotalSegmentator v1 has no larynx
    assert all(organs.is_known(o) for o in organs_.values())


def test_lay_words_map_onto_a_custom_dictionary_s_own_findings():
    from ctglip_sdk.reports.query import read_query
    d = AbnormalityDictionary.from_dict(_minimal(descriptors=["cyst", "lesion"]))
    q = read_query("spot on the spleen", dictionary=d)
    assert q is not None and q.finding == "splenic_cyst" and q.lay
    assert read_query("big spleen", dictionary=d) is None  # this dictionary has no splenomegaly
