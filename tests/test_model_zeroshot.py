"""Zero-shot organ identification and finding detection: probabilities, applicability, caching, speed."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pytest

import ctglip_sdk as cg
from ctglip_sdk.errors import QueryError
from ctglip_sdk.model import Detection
from ctglip_sdk.organs import GROUPS, ORGANS
from test_model_encode import TINY, make_phantom


@dataclass(frozen=True)
class _Entry:
    key: str
    organ: str
    name: str
    synonyms: tuple
    positives: tuple
    negatives: tuple
    modifiers: dict = field(default_factory=dict)


class _ContractDictionary:
    """A few entries shaped like the AbnormalityDictionary contract (COMMON.md), used until the real one ships."""

    version = "test"

    def __init__(self) -> None:
        rows = [
            ("liver_cyst", "liver", "liver cyst", ("simple hepatic cyst", "hypodense liver lesion"),
             ("no focal hepatic lesion",)),
            ("hepatic_steatosis", "liver", "hepatic steatosis", ("diffuse hepatic steatosis",),
             ("normal liver attenuation",)),
            ("renal_cyst", "kidney", "renal cyst", ("simple renal cyst",), ("no suspicious renal mass",)),
            ("splenomegaly", "spleen", "splenomegaly", ("enlarged spleen",), ("spleen is normal in size",)),
            ("aortic_aneurysm", "aorta", "aortic aneurysm", ("abdominal aortic aneurysm",), ()),
            ("lung_nodule", "lung", "lung nodule", ("solid pulmonary nodule",), ("no pulmonary nodules",)),
        ]
        self._entries = {k: _Entry(k, o, n, (), pos, neg) for k, o, n, pos, neg in rows}

    def findings(self):
        return list(self._entries.values())

    def for_organ(self, organ):
        groups = {g for g, members in GROUPS.items() if organ in members} | {organ}
        return [e for e in self._entries.values() if e.organ in groups]

    def __getitem__(self, key):
        return self._entries[key]

    def __contains__(self, key):
        return key in self._entries

    def keys(self):
        return self._entries.keys()

    def normal_phrases(self, organ):
        return [f"the {organ} is unremarkable"]


def _dictionary():
    """The real AbnormalityDictionary when ctglip_sdk.reports provides it, else a contract-shaped stand-in."""
    import ctglip_sdk.reports as reports

    if hasattr(reports, "AbnormalityDictionary"):
        return reports.AbnormalityDictionary.default()
    return _ContractDictionary()


@pytest.fixture(scope="module")
def model():
    return cg.create("ctglip-tiny", overrides=TINY, seed=0)


@pytest.fixture(scope="module")
def study():
    return make_phantom()


def test_identify_organs_gives_a_distribution_over_104_names(model, study):
    vol, seg = study
    zs = cg.ZeroShotClassifier(model)
    ids = zs.identify_organs(vol, seg)
    assert sorted(r.region for r in ids) == sorted(seg.present())
    for r in ids:
        assert r.probabilities.shape == (len(ORGANS),)
        assert np.all((r.probabilities >= 0) & (r.probabilities <= 1))
        assert r.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
        assert r.organ in ORGANS and r.probability == pytest.approx(r.probabilities.max())
        top = r.top(3)
        assert top[0] == (r.organ, pytest.approx(r.probability)) and top[0][1] >= top[1][1] >= top[2][1]
        assert r.to_dict()["region"] == r.region


def test_identify_uses_the_learned_temperature(model, study):
    zs = cg.ZeroShotClassifier(model)
    emb = model.encode_organs(*study, organs=["liver"])
    text = zs.prompt_ensembles([zs.organ_prompts(o) for o in ORGANS])
    scale = float(model.temperature_scale().detach())
    logits = scale * emb.vectors @ text.T
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(zs.identify_vectors(emb.vectors), expected, atol=1e-6)


def test_detect_vectors_scores_applicable_findings(model, study):
    d = _dictionary()
    zs = cg.ZeroShotClassifier(model, dictionary=d)
    emb = model.encode_organs(*study, organs=["liver", "kidney_left", "aorta", "spleen"])
    dets = zs.detect_vectors(emb.names, emb.vectors)
    assert dets and all(isinstance(x, Detection) and 0.0 <= x.probability <= 1.0 for x in dets)
    by_organ = {}
    for x in dets:
        by_organ.setdefault(x.organ, set()).add(x.finding)
    for organ in emb.names:
        assert by_organ.get(organ, set()) == {e.key for e in d.for_organ(organ)}
    assert {"liver_cyst", "hepatic_steatosis"} <= by_organ["liver"] and "renal_cyst" in by_organ["kidney_left"]
    # the probability is the 2-way softmax of the vector against averaged positive/negative prompts
    x = next(x for x in dets if x.organ == "liver" and x.finding == "liver_cyst")
    pos, neg = zs.finding_prompts("liver_cyst")
    p = model.encode_text(pos).mean(0)
    n = model.encode_text(neg).mean(0)
    p, n = p / np.linalg.norm(p), n / np.linalg.norm(n)
    s = float(model.temperature_scale().detach())
    v = emb.vector("liver")
    assert x.probability == pytest.approx(np.exp(s * v @ p) / (np.exp(s * v @ p) + np.exp(s * v @ n)), abs=1e-5)
    only = zs.detect_vectors(emb.names, emb.vectors, findings=["renal_cyst"])
    assert [(o.organ, o.finding) for o in only] == [("kidney_left", "renal_cyst")]
    assert only[0].to_dict() == {"organ": "kidney_left", "finding": "renal_cyst", "probability": only[0].probability}
    with pytest.raises(QueryError, match="not_a_finding"):
        zs.detect_vectors(emb.names, emb.vectors, findings=["not_a_finding"])


def test_names_vectors_and_studies_are_checked_like_the_index_checks_them(model, study):
    """Unknown names gave no row, NaN vectors scored NaN, a wrong width or None failed inside numpy or as an
    AttributeError (review, 2026-12-06)."""
    zs = cg.ZeroShotClassifier(model, dictionary=_dictionary())
    emb = model.encode_organs(*study, organs=["liver"])
    ref = zs.detect_vectors(["liver"], emb.vectors)
    for name in ("Liver", "liver"):  # a synonym reads as its class
        assert zs.detect_vectors([name], emb.vectors) == ref
    with pytest.raises(QueryError, match="did you mean 'liver'"):
        zs.detect_vectors(["livr"], emb.vectors)
    with pytest.raises(QueryError, match="NaN or infinite"):
        zs.detect_vectors(["liver"], np.full_like(emb.vectors, np.nan))
    with pytest.raises(QueryError, match="NaN or infinite"):
        zs.identify_vectors(np.full_like(emb.vectors, np.nan))
    with pytest.raises(QueryError, match="columns, the model's embeddings"):
        zs.identify_vectors(np.ones((1, emb.vectors.shape[1] + 1), np.float32))
    for call in (lambda: zs.detect(None, None), lambda: zs.identify_organs(study[0], None)):
        with pytest.raises(QueryError, match="expected a Volume and a Segmentation"):
            call()
    with pytest.raises(cg.InputError, match="expected a Volume and a Segmentation"):
        model.encode_organs(None, study[1])
    with pytest.raises(cg.InputError, match=r"Segmentation\(array, labels, affine, meta\)"):
        cg.Segmentation(study[1].array, study[1].affine, study[1].labels)  # arguments in Volume's order


def test_detect_on_a_study(model, study):
    zs = cg.ZeroShotClassifier(model, dictionary=_dictionary())
    dets = zs.detect(*study, findings=["splenomegaly", "renal_cyst", "aortic_aneurysm"])
    assert sorted((x.organ, x.finding) for x in dets) == [
        ("aorta", "aortic_aneurysm"), ("kidney_left", "renal_cyst"), ("kidney_right", "renal_cyst"),
        ("spleen", "splenomegaly")]


def test_prompt_cache_follows_weight_changes(study):
    m = cg.create("ctglip-tiny", overrides=TINY, seed=2)
    zs = cg.ZeroShotClassifier(m, dictionary=_dictionary())
    emb = m.encode_organs(*study, organs=["liver"])
    first = zs.detect_vectors(emb.names, emb.vectors)
    assert zs._cache and zs.detect_vectors(emb.names, emb.vectors) == first
    import torch

    with torch.no_grad():
        m.text_proj.weight.mul_(-1.0)  # in-place updates, like an optimizer step: text vectors flip sign
        m.text_proj.bias.mul_(-1.0)
    flipped = zs.detect_vectors(emb.names, emb.vectors)
    assert [round(a.probability + b.probability, 5) for a, b in zip(first, flipped)] == [1.0] * len(first)


def test_scoring_precomputed_vectors_is_fast(model):
    d = _dictionary()
    zs = cg.ZeroShotClassifier(model, dictionary=d)
    organs = ["liver", "kidney_left", "kidney_right", "spleen", "lung_lower_lobe_left"] * 2000
    vecs = np.random.default_rng(0).normal(size=(len(organs), model.embed_dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    zs.detect_arrays(organs[:5], vecs[:5])  # warm the prompt cache
    t = time.perf_counter()
    rows, keys, prob = zs.detect_arrays(organs, vecs)
    rate = len(prob) / (time.perf_counter() - t)
    assert len(prob) == sum(len(d.for_organ(o)) for o in organs) >= len(organs) and rate > 1e4
    assert np.all((prob >= 0) & (prob <= 1))


def test_a_fresh_classifier_identifies_organs_with_the_dictionary_prompts(model, study):
    vol, seg = study
    fresh = cg.ZeroShotClassifier(model).identify_organs(vol, seg)
    zs = cg.ZeroShotClassifier(model)
    zs.detect(vol, seg)  # loads the dictionary; the organ prompts used to switch to its organ_prompts only now
    after = zs.identify_organs(vol, seg)
    assert [(i.organ, i.probability) for i in fresh] == [(i.organ, i.probability) for i in after]
    assert zs.organ_prompts("liver") == list(zs.dictionary.organ_prompts("liver"))


@pytest.mark.parametrize("templates", [(), "the {}", ("the {name}",), ("no placeholder",), (3,),
                                       ("the {} and the {}",), ("the {} }",)])
def test_organ_templates_are_checked(model, templates):
    from ctglip_sdk.errors import ConfigError

    with pytest.raises(ConfigError, match="organ_templates"):
        cg.ZeroShotClassifier(model, organ_templates=templates)


def test_escaped_braces_and_numbered_fields_are_valid_templates(model):
    zs = cg.ZeroShotClassifier(model, organ_templates=("the {} {{arterial phase}}", "{0} on CT"))
    assert zs.organ_templates == ("the {} {{arterial phase}}", "{0} on CT")


def test_an_empty_prompt_list_is_an_error_not_nan(model):
    zs = cg.ZeroShotClassifier(model)
    with pytest.raises(QueryError, match="not non-empty lists"):
        zs.prompt_ensembles([["a liver"], []])
