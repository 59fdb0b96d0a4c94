"""kill -9 a real ingest process at chosen points: the index opens, verifies, and resumes to the same state."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest

from ctglip_sdk.index import ArchiveIndex

from test_index_common import db_params, make_archive, pg_url, random_prefix, tiny_model

# The child ingests with one series per batch and writes FAISS after every batch, so that each point below is
# reached; the patch kills the process with SIGKILL (no cleanup, no atexit, no flush) at that point.
CHILD = textwrap.dedent('''
    import os, signal, sys
    from pathlib import Path
    from ctglip_sdk.index import ArchiveIndex, ann, store, vectors
    folder, archive, point, nth = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    calls = {"n": 0}

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def hook(owner, name, when):
        orig = getattr(owner, name)
        def wrapper(*a, **kw):
            calls["n"] += 1
            if calls["n"] == nth and when == "before":
                die()
            out = orig(*a, **kw)
            if calls["n"] == nth and when == "after":
                die()
            return out
        setattr(owner, name, wrapper)

    if point == "after-vectors":          # vectors fsynced, SQL batch not committed
        hook(vectors.VectorStore, "append", "after")
    elif point == "after-sql":            # SQL batch committed, FAISS not written
        hook(store.Store, "insert_organs", "after")
    elif point == "torn-vectors":         # half a record written
        def torn(self, ids, vecs):
            calls["n"] += 1
            if calls["n"] == nth:  # the first half of the batch's bytes reach the disk, then power goes
                import numpy as np
                rec = np.empty(len(ids), dtype=self.dtype)
                rec["id"], rec["v"] = ids, vecs
                data = rec.tobytes()
                with open(self.path, "ab") as fh:
                    fh.write(data[: len(data) // 2] + b"\\0" * 64); fh.flush(); os.fsync(fh.fileno())
                die()
            return orig_append(self, ids, vecs)
        orig_append = vectors.VectorStore.append
        vectors.VectorStore.append = torn
    elif point == "faiss-before-replace":  # temp FAISS file written, not yet renamed
        orig_atomic = ann.atomic_write
        def atomic(path, write):
            calls["n"] += 1
            if calls["n"] == nth:
                write(Path(path).with_name(".vectors.faiss.tmp-dead"))
                die()
            return orig_atomic(path, write)
        ann.atomic_write = atomic
    elif point == "faiss-before-record":  # FAISS file replaced, its SQL record not written
        hook(store.Store, "record_index_state", "before")
    idx = ArchiveIndex.open(folder)
    idx.ingest(archive, workers=1, batch_size=1, faiss_flush_seconds=0.0)
''')


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return make_archive(tmp_path_factory.mktemp("crash") / "a", n=5, seed=4)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, archive):
    idx = ArchiveIndex.create(tmp_path_factory.mktemp("ref") / "i", model=tiny_model())
    idx.ingest(archive, workers=0)
    return _state(idx)


class _State:
    """What must survive a crash and a resume: organs with their metadata and vectors, a search, the FAISS count.

    Vectors are compared with a tolerance, not bit for bit: a resumed run encodes the remaining studies in
    other batches than a run from scratch, and batched convolutions differ in the last float bits (by how much
    depends on the CPU's kernels), which an exact or rounded comparison turns into a flaky failure. The vectors
    are stored as float16, so such a difference can become one float16 step (2^-13 for values of 0.125–0.25).
    """

    def __init__(self, idx) -> None:
        df = pd.read_csv(idx.export(idx.folder.parent / f"{idx.folder.name}_state.csv", what="organs"))
        view = idx.mirror.view()
        vecs = view.vecs[view.rows_of(df.crop_id.to_numpy())]
        order = sorted(range(len(df)), key=lambda i: (df.series_uid[i], df.organ[i]))
        self.organs = [(df.series_uid[i], df.organ[i], df.age[i], df.sex[i]) for i in order]
        self.vecs = np.asarray(vecs[order], np.float64)
        self.top = [(h.series_uid, h.organ) for h in idx.search("hypodense liver lesion", k=10)]
        self.ntotal = int(idx.ann.ntotal)

    def __eq__(self, other) -> bool:
        return (self.organs == other.organs and self.vecs.shape == other.vecs.shape
                and bool(np.allclose(self.vecs, other.vecs, rtol=2e-3, atol=1e-4)) and self.top == other.top
                and self.ntotal == other.ntotal)

    def __repr__(self) -> str:
        return f"_State({len(self.organs)} organs, ntotal={self.ntotal}, top={self.top[:3]}...)"


def _state(idx) -> _State:
    return _State(idx)


def _kill_and_resume(tmp_path, archive, reference, point, nth, delay=None, db="sqlite"):
    folder = tmp_path / "idx"
    url = pg_url() if db == "postgres" else None
    ArchiveIndex.create(folder, model=tiny_model(), database_url=url,
                        table_prefix=random_prefix() if url else "ctglip_").close()
    try:
        _run_child_and_check(folder, tmp_path, archive, reference, point, nth, delay)
    finally:
        if url:
            cleanup = ArchiveIndex.open(folder)
            cleanup.store.drop_all()
            cleanup.close()


def _run_child_and_check(folder, tmp_path, archive, reference, point, nth, delay):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(folder), str(archive), point, str(nth)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if delay is not None:
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
    _out, err = proc.communicate(timeout=120)
    if delay is None:
        assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    idx = ArchiveIndex.open(folder)  # opens after any crash
    report = idx.verify()
    assert report["ok"], report
    assert not report["problems"]
    idx.ingest(archive, workers=0)  # resumes
    assert idx.verify()["ok"]
    assert _state(idx) == reference
    again = idx.ingest(archive)
    assert again.ok == 0 and again.organs_added == 0
    idx.close()
    # A fresh process sees the same state (nothing lives only in the memory of the resuming object).
    assert _state(ArchiveIndex.open(folder)) == reference


@pytest.mark.parametrize("db", db_params())
def test_kill9_after_vectors_before_sql_commit(tmp_path, archive, reference, db):
    _kill_and_resume(tmp_path, archive, reference, "after-vectors", nth=3, db=db)


@pytest.mark.slow
@pytest.mark.parametrize("point,nth", [("after-sql", 2), ("torn-vectors", 2), ("faiss-before-replace", 2),
                                       ("faiss-before-record", 3), ("after-vectors", 1)])
def test_kill9_at_other_points(tmp_path, archive, reference, point, nth):
    _kill_and_resume(tmp_path, archive, reference, point, nth)


@pytest.mark.slow
def test_kill9_at_a_random_moment(tmp_path, archive, reference):
    # Start-up (imports, model load) takes seconds; kill somewhere between start-up and the end of the run.
    _kill_and_resume(tmp_path, archive, reference, "none", 0, delay=random.uniform(6.0, 12.0))
