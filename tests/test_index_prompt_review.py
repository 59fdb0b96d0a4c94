"""Prompt findings, cohort evidence and score inputs a review found wrong (2026-12-07), on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import pytest
from sqlalchemy import delete, select

from ctglip_sdk.errors import ConfigError, QueryError
from ctglip_sdk.index import ArchiveIndex, SeriesEmbeddings
from ctglip_sdk.index.filters import parse_where_expr

from test_index_common import db_params, pg_url, random_prefix, tiny_model

ORGANS = ("liver", "spleen", "kidney_left", "kidney_right", "gallbladder")


def _add(idx: ArchiveIndex, n: int, organs: Sequence[str] = ORGANS) -> None:
    """Study S<n> of patient P<n> (age 30 + 10 n) with random vectors for ``organs``."""
    model = idx.model
    vec = np.random.default_rng(n).normal(size=(len(organs), model.embed_dim)).astype(np.float32)
    rec = SeriesEmbeddings(f"S{n}.1", list(organs), vec, study_uid=f"S{n}", patient_id=f"P{n}", sex="MF"[n % 2],
                           age=30 + 10 * n, study_date="2021-01-01")
    idx.add_embeddings([rec], config_hash=model.config_hash)


def _index(tmp_path, db: str, n: int = 3) -> ArchiveIndex:
    kw = {"database_url": pg_url(), "table_prefix": random_prefix()} if db == "postgres" else {}
    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model(), **kw)
    for i in range(1, n + 1):
        _add(idx, i)
    return idx


def _rows(idx: ArchiveIndex, finding: str) -> List[Tuple[str, str, str]]:
    """(study uid, organ, model_hash) of the stored scores of one finding."""
    t = idx.store.t
    q = (select(t.studies.c.study_uid, t.organs.c.organ, t.scores.c.model_hash)
         .select_from(t.scores.join(t.organs, t.organs.c.id == t.scores.c.organ_id)
                      .join(t.studies, t.studies.c.id == t.organs.c.study_id))
         .where(t.scores.c.finding == finding))
    return sorted(tuple(r) for r in idx.store.read(lambda c: c.execute(q).all()))


def _crop_ids(idx: ArchiveIndex) -> Dict[Tuple[str, str], int]:
    """{(study uid, organ): crop id}."""
    t = idx.store.t
    q = select(t.studies.c.study_uid, t.organs.c.organ, t.organs.c.id).select_from(
        t.organs.join(t.studies, t.studies.c.id == t.organs.c.study_id))
    return {(r.study_uid, r.organ): int(r.id) for r in idx.store.read(lambda c: c.execute(q).all())}


def _drop(idx: ArchiveIndex, db: str) -> None:
    if db == "postgres":
        idx.store.drop_all()


@pytest.mark.parametrize("db", db_params())
def test_none_of_a_prompt_treats_organs_ingested_after_its_scoring_as_unknown(tmp_path, db):
    """Organs ingested after score(prompts=...) counted as "without" the prompt finding, with no note."""
    idx = _index(tmp_path, db)
    prompts = {"calc": "calcified granuloma", "lp": {"positive": ["liver lesion"], "organ": "liver"}}
    idx.score(findings=[], prompts=prompts)
    before = idx.cohort(none_of=["prompt:calc"], threshold=1.0, level="study")
    assert sorted(before.ids) == ["S1", "S2", "S3"] and before.notes == []
    _add(idx, 4)                       # every organ: unknown for both prompts
    _add(idx, 5, organs=("spleen",))   # no liver: unknown for the all-organ prompt only
    calc = idx.cohort(none_of=["prompt:calc"], threshold=1.0, level="study")
    assert sorted(calc.ids) == ["S1", "S2", "S3"]
    assert len(calc.notes) == 1 and "6 organ(s) that prompt:calc applies to have no score" in calc.notes[0]
    liver = idx.cohort(none_of=["prompt:lp"], threshold=1.0, level="study")
    assert sorted(liver.ids) == ["S1", "S2", "S3", "S5"]
    assert len(liver.notes) == 1 and "1 organ(s) that prompt:lp applies to" in liver.notes[0]
    # An index scored before prompt scopes were recorded: the scope is read from the stored rows' organs.
    meta = idx.store.t.meta
    idx.store.write(lambda c: c.execute(delete(meta).where(meta.c.key.like("prompt_spec:%"))))
    assert sorted(idx.cohort(none_of=["prompt:lp"], threshold=1.0, level="study").ids) == ["S1", "S2", "S3", "S5"]
    idx.score(findings=[], prompts=prompts)  # scores the new organs (and records the scopes again)
    after = idx.cohort(none_of=["prompt:calc"], threshold=1.0, level="study")
    assert sorted(after.ids) == ["S1", "S2", "S3", "S4", "S5"] and after.notes == []
    _drop(idx, db)


@pytest.mark.parametrize("db", db_params())
def test_redefining_a_prompt_drops_the_old_definitions_rows(tmp_path, db):
    """A prompt key scored again with other texts or organs kept the old definition's rows under the same key."""
    idx = _index(tmp_path, db, n=2)
    idx.score(findings=[], prompts={"kp": {"positive": ["kidney lesion"], "organ": "kidney"}})
    assert {organ for _, organ, _ in _rows(idx, "prompt:kp")} == {"kidney_left", "kidney_right"}
    idx.score(findings=[], prompts={"kp": {"positive": ["hepatic mass"], "organ": "liver"}})
    rows = _rows(idx, "prompt:kp")
    assert [(s, o) for s, o, _ in rows] == [("S1", "liver"), ("S2", "liver")] and len({h for *_, h in rows}) == 1
    idx.score(findings=[], prompts={"kp": "another text"})  # other text, every organ
    rows = _rows(idx, "prompt:kp")
    assert len(rows) == 2 * len(ORGANS) and len({h for *_, h in rows}) == 1
    # a definition that matches no organ of the index leaves no row of the old one either
    idx.score(findings=[], prompts={"kp": {"positive": ["x"], "organ": "prostate"}})
    assert _rows(idx, "prompt:kp") == []
    _drop(idx, db)


def test_an_unknown_prompt_condition_is_refused_with_suggestions(tmp_path):
    """'prompt:calcs' (a typo) or a prompt not scored yet was run as free text matching nearly every organ."""
    idx = _index(tmp_path, "sqlite", n=2)
    with pytest.raises(QueryError, match="no prompt finding is stored"):
        idx.cohort(all_of=["prompt:calc"])
    idx.score(findings=[], prompts={"calc": "calcified granuloma"})
    for group in ("all_of", "none_of", "any_of"):
        with pytest.raises(QueryError, match=r"unknown finding key 'prompt:calcs'; did you mean prompt:calc\?"):
            idx.cohort(**{group: ["prompt:calcs"]})
    with pytest.raises(QueryError, match="stored prompt findings: prompt:calc"):
        idx.cohort(all_of=["prompt:zzzz"])
    assert len(idx.cohort(all_of=["prompt:calc"], threshold=0.0)) == 2


def test_cohort_evidence_is_named_after_the_finding_it_holds(tmp_path):
    """none_of=["no hydronephrosis"] gave a column 'p:no hydronephrosis' holding P(hydronephrosis)."""
    idx = _index(tmp_path, "sqlite")
    crop = _crop_ids(idx)
    rows = [(crop[f"S{n}", o], "hydronephrosis", 0.9 if n == 1 and o == "kidney_left" else 0.1)
            for n in (1, 2, 3) for o in ("kidney_left", "kidney_right")]
    rows += [(crop[f"S{n}", "liver"], "hepatic_steatosis", p) for n, p in ((1, 0.8), (2, 0.7), (3, 0.2))]
    rows += [(crop[f"S{n}", "gallbladder"], "gallstones", p) for n, p in ((1, 0.1), (2, 0.9), (3, 0.1))]
    idx.insert_scores(rows, model_hash="truth")
    flipped = idx.cohort(none_of=["no hydronephrosis"], level="study")
    assert flipped.ids == ["S1"] and flipped.scored == ["hydronephrosis"]
    assert flipped[0]["evidence"] == {"hydronephrosis": 0.9}
    assert [c for c in flipped.to_pandas().columns if c.startswith("p:")] == ["p:hydronephrosis"]
    mixed = idx.cohort(all_of=["fatty liver, no gallstones"], level="study")
    assert mixed.ids == ["S1"] and mixed.scored == ["hepatic_steatosis"]
    assert mixed[0]["evidence"] == {"hepatic_steatosis": 0.8}
    # a condition with its own filters says so: its probability is the best within them
    aged = idx.cohort(all_of=["fatty liver in patients over 45"], level="study")
    assert aged.ids == ["S2"] and aged.scored == ["hepatic_steatosis (age>=45)"]
    assert aged[0]["evidence"] == {"hepatic_steatosis (age>=45)": 0.7}


def test_insert_scores_refuses_a_pair_given_twice(tmp_path):
    """The same (crop_id, finding) twice in one call raised a raw IntegrityError."""
    idx = _index(tmp_path, "sqlite", n=1)
    crop = _crop_ids(idx)[("S1", "liver")]
    with pytest.raises(QueryError, match=rf"\({crop}, 'my_finding'\) is given 2 times"):
        idx.insert_scores([(crop, "my_finding", 0.9), (crop, "other", 0.5), (crop, " my_finding", 0.1)])
    assert _rows(idx, "my_finding") == [] and _rows(idx, "other") == []
    assert idx.insert_scores([(crop, "my_finding", 0.9), (crop, "other", 0.5)]) == 2


def test_prompt_specs_and_batch_size_are_validated(tmp_path):
    """A misspelled spec key ('organs') was ignored and scored every organ; batch_size=1.5 raised TypeError."""
    idx = _index(tmp_path, "sqlite", n=1)
    with pytest.raises(QueryError, match=r"prompt 'u': unknown key 'organs'; did you mean 'organ'\?"):
        idx.score(findings=[], prompts={"u": {"positive": ["a"], "organs": "liver"}})
    with pytest.raises(QueryError, match="unknown key 'colour'"):
        idx.score(findings=[], prompts={"u": {"positive": ["a"], "colour": "red"}})
    with pytest.raises(QueryError, match="unknown key 'positve'; did you mean 'positive'"):
        idx.score(findings=[], prompts={"u": {"positve": ["a"]}})
    assert _rows(idx, "prompt:u") == []
    for bad in (1.5, True, 0, "8", None):
        with pytest.raises(ConfigError, match="batch_size must be an integer >= 1"):
            idx.score(findings=[], prompts={"u": "a"}, batch_size=bad)
    assert idx.score(findings=[], prompts={"u": {"positive": ["a"], "organ": "liver"}},
                     batch_size=np.int64(2))["scored"] == 1


def test_an_unknown_filter_with_a_comparison_is_named_as_unknown():
    """--where "foo>=3" said "foo only takes '='" instead of naming an unknown filter."""
    with pytest.raises(QueryError, match=r"unknown filter 'foo'; allowed: age, "):
        parse_where_expr(["foo>=3"])
    with pytest.raises(QueryError, match=r"unknown filter 'ages'; did you mean age\?"):
        parse_where_expr(["ages>=3"])
    with pytest.raises(QueryError, match="sex only takes '='"):
        parse_where_expr(["sex>=3"])
    assert parse_where_expr(["hu>=3"]) == {"mean_hu": (3.0, None)}
