"""A series whose files were only touched is not re-embedded; one re-embedded with the same pixels keeps its scores,
insert_scores' included; a series whose pixels changed does not."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest

from ctglip_sdk.index import ArchiveIndex
from test_index_common import (db_params, drop_prefixed_tables, index_url, make_archive, random_prefix, read_manifest,
                               tiny_model)


def _scores(idx, series_uid):
    """{(organ, finding): (probability, model_hash)} of one series, whatever its crop ids."""
    t = idx.store.t
    from sqlalchemy import select

    with idx.store.connect() as conn:
        rows = conn.execute(select(t.organs.c.organ, t.scores.c.finding, t.scores.c.probability, t.scores.c.model_hash,
                                   t.organs.c.id)
                            .join(t.organs, t.organs.c.id == t.scores.c.organ_id)
                            .join(t.series, t.series.c.id == t.organs.c.series_id)
                            .where(t.series.c.series_uid == series_uid)).all()
    return {(r[0], r[1]): (round(r[2], 6), r[3]) for r in rows}, {r[4] for r in rows}


@pytest.mark.parametrize("kind", db_params())
def test_touched_files_keep_their_scores_changed_pixels_do_not(tmp_path, kind):
    root = make_archive(tmp_path / "arch", n=3)
    rows = read_manifest(root)
    kw = {"table_prefix": random_prefix()} if kind == "postgres" else {}
    idx = ArchiveIndex.create(tmp_path / "idx", model=tiny_model(), database_url=index_url(kind, tmp_path), **kw)
    try:
        idx.ingest(root, progress=False)
        target, other = rows[0]["series_uid"], rows[1]["series_uid"]
        crops = {h.crop_id: h.organ for h in idx.search("liver", k=50, where={"series_uid": [target, other]},
                                                        rank="cosine")}
        external = [(cid, "my_finding", 0.25 + 0.01 * i) for i, cid in enumerate(sorted(crops))]
        idx.insert_scores(external, model_hash="my-classifier-v2")
        before, old_ids = _scores(idx, target)
        other_before, _ = _scores(idx, other)
        assert before and other_before

        # 1. touched: new mtimes, the same bytes -> not embedded again (index/content.py): ids and scores stay
        for rel in (rows[0]["image"], rows[0]["mask"]):
            st = os.stat(root / rel)
            os.utime(root / rel, (st.st_atime + 100, st.st_mtime + 100))
        report = idx.ingest(root, progress=False)
        assert report.ok == 0 and report.skipped == 3
        assert _scores(idx, target) == (before, old_ids)

        # 1b. new bytes, the same pixels (a header field rewritten) -> re-embedded with new ids, scores kept
        img = nib.load(root / rows[0]["image"])
        img = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header)
        img.header["descrip"] = b"re-exported"
        nib.save(img, root / rows[0]["image"])
        report = idx.ingest(root, progress=False)
        assert report.ok == 1 and report.skipped == 2  # the rewritten series only
        after, new_ids = _scores(idx, target)
        assert after == before and not (new_ids & old_ids)  # were deleted with the old ids
        assert _scores(idx, other)[0] == other_before

        # 2. changed pixels: the organs are other organs, and their old scores go
        img = nib.load(root / rows[0]["image"])
        data = np.asarray(img.dataobj).astype(np.int16)
        data[data > -500] += 80  # every organ brighter
        nib.save(nib.Nifti1Image(data, img.affine), root / rows[0]["image"])
        idx.ingest(root, progress=False)
        assert _scores(idx, target)[0] == {}
        assert _scores(idx, other)[0] == other_before
        assert idx.verify()["ok"]
    finally:
        idx.close()
        if kind == "postgres":
            drop_prefixed_tables(idx.store.engine, kw["table_prefix"])
