"""Dictionary text banks, their targets and the objectives' forward/backward on a real tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ctglip_sdk as cg
from ctglip_sdk.reports.dictionary import AbnormalityDictionary
from ctglip_sdk.training.config import TrainConfig
from ctglip_sdk.training.objectives import (ClipObjective, CTGlipObjective, TextBank, finding_phrasings,
                                            split_sentences, stable_id)


@pytest.fixture(scope="module")
def dictionary():
    return AbnormalityDictionary.default()


def test_phrasings_keep_negations_specific(dictionary):
    pos, neg = finding_phrasings(dictionary, "renal_cyst")
    assert "renal cyst" in pos and "No renal cysts." in neg
    normals = set(dictionary.normal_phrases("kidney"))
    assert not normals & set(neg)          # "The kidney is unremarkable." is false for a kidney with a stone


def test_bank_is_seeded_and_targets_follow_the_labels(dictionary):
    a = TextBank.draw(dictionary, np.random.default_rng(3), 2)
    b = TextBank.draw(dictionary, np.random.default_rng(3), 2)
    c = TextBank.draw(dictionary, np.random.default_rng(4), 2)
    assert a.texts == b.texts and a.texts != c.texts
    assert set(a.pos_cols) == set(dictionary.keys()) and all(len(v) == 2 for v in a.pos_cols.values())
    liver_keys = [e.key for e in dictionary.for_organ("liver")]
    t = dict(zip(range(len(a.texts)), a.targets(liver_keys, ["liver"], ["liver_cyst"], [])))
    assert all(t[j] == 1 for j in a.pos_cols["liver_cyst"])
    assert all(t[j] == 0 for j in a.neg_cols["liver_cyst"])                    # incl. the liver's normal phrase
    assert all(t[j] == 0 for j in a.pos_cols["hepatomegaly"])
    assert all(t[j] == 1 for j in a.neg_cols["hepatomegaly"][:-1])             # "no hepatomegaly" is true
    assert all(t[j] == -1 for j in a.pos_cols["renal_cyst"] + a.neg_cols["renal_cyst"])
    normal = a.neg_cols["liver_cyst"][-1]
    assert a.kinds[normal] == "normal" and a.keys[normal] == "liver"
    healthy = a.targets(liver_keys, ["liver"], [], [])
    assert healthy[normal] == 1 and all(healthy[j] == 0 for j in a.pos_cols["liver_mass"])
    unsure = a.targets(liver_keys, ["liver"], [], ["liver_mass"])
    assert unsure[normal] == -1 and all(unsure[j] == -1 for j in a.pos_cols["liver_mass"])
    emb = torch.nn.functional.normalize(torch.randn(len(a.texts), 8), dim=-1)
    p, n = a.ensembles(emb, ["liver_cyst", "renal_stone"])
    assert p.shape == n.shape == (2, 8) and torch.allclose(p.norm(dim=1), torch.ones(2))


def test_stable_ids_and_sentences():
    assert stable_id(("liver", ("liver_cyst",))) == stable_id(("liver", ("liver_cyst",)))
    assert stable_id("a") != stable_id("b") and 0 <= stable_id("a") < 2**62
    assert split_sentences("LIVER: Simple cyst. No mass.\nKIDNEYS: Normal.") == ["Simple cyst.", "No mass.", "Normal."]


def _batch(model):
    studies, images = [], []
    for seed, finding in ((2, "liver_cyst"), (3, "splenomegaly")):
        p = cg.synth.generate_patient(seed, "small", findings=[finding])
        prep = model.prepare(p.volume, p.segmentation, organs=["liver", "spleen", "kidney_left", "aorta"])
        present = [(finding,) if (o == "liver") == (finding == "liver_cyst") and o in ("liver", "spleen") else ()
                   for o in prep.names]
        studies.append({"grid": prep.grid, "organs": prep.names, "rows": prep.rows, "cols": prep.cols,
                        "vals": prep.vals, "stats": prep.stats, "texts": [f"the {o} is normal" for o in prep.names], "present": present,
                        "uncertain": [()] * len(prep.names), "report": p.report})
        images.append(prep.image)
    shape = [max(i.shape[d] for i in images) for d in range(4)]
    padded = [torch.nn.functional.pad(i, [0, shape[3] - i.shape[3], 0, shape[2] - i.shape[2], 0,
                                          shape[1] - i.shape[1]]) for i in images]
    return {"image": torch.stack(padded), "studies": studies}


@pytest.mark.parametrize("objective", ["ctglip", "clip"])
def test_objectives_backpropagate_into_both_towers(dictionary, objective):
    model = cg.create("ctglip-tiny", seed=0)
    model.train()
    cfg = TrainConfig(objective=objective, phrasings_per_finding=1)
    obj = (CTGlipObjective if objective == "ctglip" else ClipObjective)(model, cfg, dictionary)
    loss, logs = obj(_batch(model), step=0)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    vision = [p.grad for n, p in model.named_parameters() if n.startswith("vision.")]
    text = [p.grad for n, p in model.named_parameters() if n.startswith("text.")]
    assert any(g is not None and g.abs().sum() > 0 for g in vision)
    assert any(g is not None and g.abs().sum() > 0 for g in text)
    if objective == "ctglip":
        assert {"organ_text", "abnormality", "decision", "identity"} <= set(logs) and logs["organs"] == 8
    else:
        assert "clip" in logs
