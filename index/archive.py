"""ArchiveIndex: the index folder (manifest, vectors, FAISS, key), its SQL store, and in-memory state."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ctglip_sdk.errors import ConfigError, IndexStateError
from ctglip_sdk.io.paths import is_within
from ctglip_sdk.privacy import pseudonymize

from .ann import AnnIndex, choose_factory
from .create import DB_FILE, FAISS_FILE, KEY_FILE, MODEL_DIR, VECTOR_FILE, create_files, open_store
from .lock import LOCK_NAME, RWLock, WriterLock
from .manifest import MANIFEST, REPAIR as _REPAIR, check_model, load_model as _load_model
from .manifest import model_identity as _model_identity, read_manifest, write_manifest
from .mirror import Mirror
from .planner import Planner
from .results import CohortResult, IngestReport, SearchResults
from .store import Store
from .vectors import VectorStore

if TYPE_CHECKING:  # pragma: no cover
    from .embeddings import SeriesEmbeddings

__all__ = ["ArchiveIndex"]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


#: What an index create writes before its manifest (a folder of only these is an unfinished create).
_CREATE_FILES = frozenset((KEY_FILE, MODEL_DIR, VECTOR_FILE, FAISS_FILE, LOCK_NAME, DB_FILE, f"{DB_FILE}-wal",
                           f"{DB_FILE}-shm", f"{DB_FILE}-journal"))


def _drop_lock_file(root: Path) -> None:
    """Remove the lock file a failed create made, unless another process holds or waits for the lock now."""
    try:
        with WriterLock(root, timeout=0.0):
            (root / LOCK_NAME).unlink(missing_ok=True)
    except (IndexStateError, OSError):
        pass


class ArchiveIndex:
    """A CT archive embedded organ by organ: SQL metadata (the truth), stored float16 vectors, FAISS (derived).

    Create it once with :meth:`create`, then :meth:`open` it; ``ingest`` adds an archive (resumable,
    idempotent, crash-safe) and ``search``/``similar``/``score``/``cohort``/``export`` query it. Any number of
    threads may query while one writer (ingest, score, rebuild, repair; one process at a time) works.

    Example:
        >>> import ctglip_sdk as cg
        >>> idx = ArchiveIndex.create("idx/", model=cg.create("ctglip-tiny"))     # doctest: +SKIP
        >>> idx.ingest("archive/")                                                 # doctest: +SKIP
        >>> idx.search("hepatic cyst", k=5, organ="liver", where={"age": (60, None)}).to_pandas()  # doctest: +SKIP
    """

    def __init__(self, folder: Path, manifest: Dict[str, Any], store: Store, model: Any = None) -> None:
        self.folder = folder
        self.manifest = manifest
        self.store = store
        self._repairs_on_open: List[str] = []  # what open(repair=True) deleted; verify(repair=True) reports it
        self.dim = int(manifest["dim"])
        self._model = model
        self.vectors = VectorStore.open(folder / VECTOR_FILE, self.dim)
        self.mirror = Mirror(self.dim)
        self.ann: Optional[AnnIndex] = None
        self.planner = Planner()
        self.writer_lock = WriterLock(folder)
        self.refresh_interval = 1.0
        self._ann_lock = RWLock()
        self._state_lock = threading.RLock()
        self._model_lock = threading.Lock()
        self._data_version = -1
        self._last_check = 0.0
        self._next_id = 0
        self._ann_dirty = False
        self._mirror_stale = False  # a study's values changed in SQL during a write run: reload at its end
        self._metadata_version: Any = None  # "metadata_version" in SQL when the mirror was last loaded
        self._text_cache: "OrderedDict[str, np.ndarray]" = OrderedDict()
        self._cache_lock = threading.Lock()
        self._key: Optional[bytes] = None

    # -- construction -----------------------------------------------------------------------------------
    @classmethod
    def create(cls, folder: PathLike, model: Any, database_url: Optional[str] = None, factory: Optional[str] = None,
               include_identifiers: bool = False, table_prefix: str = "ctglip_",
               memory_budget: Optional[int] = None) -> "ArchiveIndex":
        """Create an empty index in ``folder`` for ``model`` (a CTGlipModel, a registered name or a model folder).

        Args:
            folder: the index folder (created; must not hold an index already).
            model: the model whose vectors the index stores; a copy is saved in ``folder/model`` so that the
                index always encodes queries with the weights that encoded the archive.
            database_url: SQLAlchemy URL (``postgresql+psycopg://user@host/db``); None = SQLite in the folder.
            factory: FAISS factory string (``"Flat"``, ``"IVF4096,Flat"``, ``"HNSW32"``); None = chosen by size.
            include_identifiers: also store original patient identifiers (default: keyed pseudonyms only).
            table_prefix: prefix of the SQL tables (several indexes can share one database).
            memory_budget: bytes the FAISS index may use when its type is chosen automatically.

        Example:
            >>> idx = ArchiveIndex.create("idx/", model="ctglip-tiny-synthetic")  # doctest: +SKIP
        """
        if not isinstance(model, (str, os.PathLike)) and not hasattr(model, "encode_organs"):
            # checked before the folder is made: a wrong argument must not leave an empty index folder behind
            raise ConfigError(f"model: expected a CTGlipModel, a registered name or a model folder, got "
                              f"{type(model).__name__}")
        root = Path(folder)
        if (root / MANIFEST).exists():
            raise IndexStateError("an index already exists here; open it with ArchiveIndex.open (or `ctglip ingest "
                                  "... --index` it)", path=root)
        here = {e.name for e in root.iterdir() if not e.name.startswith(".")} if root.is_dir() else set()
        # (".gitkeep" is no file to protect.) Not mixed into a folder of other files (an archive root, a home
        # folder): the index's database and secret pseudonym key need a folder of their own, and `remove`/clean-up
        # must not touch others' files. A folder holding only an index's own files and no manifest is a create
        # that was killed or is still running in another process: create_files redoes it, or waits for it under
        # the writer lock. The key is written before the model copy, so a model/ folder without it (a user's own)
        # is not one.
        if here and not (here <= _CREATE_FILES and (KEY_FILE in here or MODEL_DIR not in here)):
            raise IndexStateError("the folder is not empty and holds no index: name a new or empty folder for the "
                                  "index", path=root)
        # The model and the factory are checked before the folder is made: a wrong argument leaves nothing behind.
        model_obj = _load_model(model) if isinstance(model, (str, os.PathLike)) else model
        ident = _model_identity(model_obj)
        if factory is not None:
            AnnIndex.build(ident["embed_dim"], factory)
        made = next((a for a in reversed([root, *root.parents]) if not a.exists()), None)  # topmost folder made
        lock_was_there = (root / LOCK_NAME).exists()
        root.mkdir(parents=True, exist_ok=True)
        try:
            manifest, store = create_files(root, model_obj, ident, database_url, factory, include_identifiers,
                                           table_prefix, memory_budget)
        except BaseException:
            # create_files removed what it wrote (under the lock); the folders this call made go too once nothing
            # but the lock file is left in them (another process's create may be using the folder).
            if not (root / MANIFEST).exists():
                if made is not None and not ({e.name for e in root.iterdir()} - {LOCK_NAME}):
                    shutil.rmtree(made, ignore_errors=True)
                elif not lock_was_there:
                    _drop_lock_file(root)  # the folder was given (a user's): leave it as it was found
            raise
        log.info("created index %s for model %s (%s)", root, ident["name"], ident["config_hash"][:12])
        idx = cls(root, manifest, store, model_obj)
        idx._load_state()
        return idx

    @classmethod
    def open(cls, folder: PathLike, model: Any = None, database_url: Optional[str] = None,
             repair: bool = False) -> "ArchiveIndex":
        """Open an index; refuses another model than the recorded one and checks manifest, SQL and FAISS agree.

        FAISS is derived: vectors that SQL holds but the FAISS file lacks (a crash before its periodic write)
        are added back from the stored vectors. Anything that cannot be derived raises IndexStateError naming
        the fix (``ctglip verify --repair``). ``repair=True`` applies that fix before loading: series whose
        stored vectors were lost are removed from SQL (the next ingest re-embeds them).

        Example:
            >>> idx = ArchiveIndex.open("idx/")  # doctest: +SKIP
        """
        if not isinstance(folder, (str, os.PathLike)):
            raise ConfigError(f"open: expected an index folder path, got {type(folder).__name__}")
        root = Path(folder)
        manifest = cls._read_manifest(root)
        model_obj = _load_model(model) if isinstance(model, (str, os.PathLike)) else model
        if model_obj is not None:
            cls._check_model(manifest, model_obj, root)
        store = open_store(root, manifest, database_url)
        idx = cls(root, manifest, store, model_obj)
        if repair:
            from .maintenance import drop_lost_vectors  # noqa: PLC0415

            with idx.writer_lock:
                # kept so that verify(repair=True) reports them: they delete series, which must never go unsaid
                idx._repairs_on_open = drop_lost_vectors(idx)
        idx._load_state()
        return idx

    # manifest.json and the model identity it records live in .manifest; kept as names for callers.
    _read_manifest = staticmethod(read_manifest)
    _write_manifest = staticmethod(write_manifest)
    _check_model = staticmethod(check_model)

    def close(self) -> None:
        """Release database connections (the object must not be used afterwards)."""
        self.store.dispose()

    def __enter__(self) -> "ArchiveIndex":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- properties -------------------------------------------------------------------------------------
    @property
    def model(self) -> Any:
        """The index's model, loaded on first use from the copy in ``folder/model`` when none was given."""
        if self._model is None:
            with self._model_lock:
                if self._model is None:
                    model = _load_model(self.folder / MODEL_DIR)
                    self._check_model(self.manifest, model, self.folder)
                    self._model = model
        return self._model

    @property
    def model_hash(self) -> str:
        """Short identity of the weights; stored with every score."""
        rec = self.manifest["model"]
        return str(rec.get("weights_hash") or rec["config_hash"])[:16]

    def __len__(self) -> int:
        return self.mirror.view().n

    def __repr__(self) -> str:
        ann = self.ann.describe() if self.ann is not None else {}
        return (f"ArchiveIndex({str(self.folder)!r}, organs={len(self)}, model={self.manifest['model']['name']!r}, "
                f"faiss={ann.get('factory')!r}, db={self.store.dialect})")

    def pseudonym(self, identifier: Optional[str]) -> Optional[str]:
        """The index's keyed pseudonym of a patient identifier (HMAC-SHA256 with the index's own key)."""
        if self._key is None:
            self._key = (self.folder / KEY_FILE).read_text().strip().encode()
        return pseudonymize(identifier, key=self._key, length=20)

    def find_patient(self, patient_id: str) -> Optional[str]:
        """The stored pseudonym of a patient known by their raw PatientID, or None when the index has no such patient.

        Why not ``pseudonym(patient_id)`` alone: ingest keys a patient by what it reads, which is the manifest's
        ``patient_id``, or for DICOM without one the library pseudonym of the header's PatientID
        (``ctglip_sdk.privacy.pseudonymize``, under ``$CTGLIP_PSEUDONYM_KEY``, as ``ctglip manifest`` writes it), so
        the raw id, its library pseudonym and both ingest paths are tried. The id is never stored or logged.

        Example:
            >>> idx.search("liver", where={"patient": idx.find_patient("PAT-0001")})  # doctest: +SKIP
        """
        from sqlalchemy import select  # noqa: PLC0415

        p = self.store.t.patients
        candidates = [self.pseudonym(patient_id), self.pseudonym(pseudonymize(patient_id))]
        stored = set(self.store.read(lambda c: c.execute(
            select(p.c.pseudonym).where(p.c.pseudonym.in_(candidates))).scalars().all()))
        return next((c for c in candidates if c in stored), None)

    # -- in-memory state --------------------------------------------------------------------------------
    def _load_state(self) -> None:
        """Rebuild the mirror from SQL + stored vectors and bring FAISS in step with SQL (it is derived)."""
        with self._state_lock:
            for attempt in range(3):
                # The version is read first: a write landing in between is picked up again by the next refresh.
                version = self.store.data_version()
                self._metadata_version = self.store.get_meta("metadata_version")
                rows = self.store.mirror_rows()
                ids = np.asarray([r[0] for r in rows], dtype=np.int64)
                vids, v16 = self.vectors.read(live=ids)
                if vids.size == ids.size:
                    break
                # A remove in another process commits, then compacts the vector file: read between the two, rows
                # of this SQL snapshot are already gone from the file. Nothing is lost when the version moved.
                if attempt < 2 and self.store.data_version() != version:
                    log.debug("the index changed while it was read; reading it again")
                    continue
                missing = ids.size - vids.size
                raise IndexStateError(f"{missing} organ row(s) in SQL have no stored vector; {_REPAIR} (their "
                                      "series are then re-ingested by the next ingest)", path=self.folder)
            vecs = np.asarray(v16, dtype=np.float32)
            self.mirror.load(rows, vecs)
            self._load_ann(ids, vecs)
            self._data_version = version
            self._last_check = time.monotonic()

    def _load_ann(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        from .maintenance import reconciled_ann  # noqa: PLC0415

        ann, changed = reconciled_ann(self, ids, vecs)
        self._ann_dirty = self._ann_dirty or changed
        self._ann_lock.acquire_write()
        try:
            self.ann = ann
        finally:
            self._ann_lock.release_write()

    def _build_ann(self, factory: str, ids: np.ndarray, vecs: np.ndarray, target_recall: float = 0.95) -> AnnIndex:
        ann = AnnIndex.build(self.dim, factory)
        if not ann.is_trained:
            ann.train(vecs)
        for start in range(0, ids.size, 65536):
            ann.add(ids[start:start + 65536], vecs[start:start + 65536])
        if ann.kind in ("ivf", "hnsw"):
            from .maintenance import tuning_queries  # noqa: PLC0415

            ann.tune(ids, vecs, target_recall=target_recall, queries=tuning_queries(self))
        return ann

    def _build_ann_safe(self, factory: str, ids: np.ndarray, vecs: np.ndarray) -> AnnIndex:
        """``_build_ann``, falling back to Flat while there are too few vectors to train an IVF index."""
        try:
            return self._build_ann(factory, ids, vecs)
        except ConfigError:
            return self._build_ann("Flat", ids, vecs)

    def _maybe_refresh(self, force: bool = False) -> None:
        """Pick up organs another process committed (polled at most every ``refresh_interval`` seconds)."""
        if self.writer_lock.held:
            return  # this object is the writer: its state is current
        now = time.monotonic()
        if not force and now - self._last_check < self.refresh_interval:
            return
        self._last_check = now
        version = self.store.data_version()
        if version == self._data_version:
            return
        with self._state_lock:
            view = self.mirror.view()
            top = int(view.ids[-1]) if view.n else 0
            o = self.store.t.organs
            from sqlalchemy import func, select  # noqa: PLC0415

            kept = self.store.read(lambda c: c.execute(select(func.count()).select_from(o).where(o.c.id <= top))
                                   .scalar())
            if int(kept or 0) != view.n or self.store.get_meta("metadata_version") != self._metadata_version:
                # removed organs, or stored ones whose age/date/patient another process rewrote
                log.info("another process removed organs or rewrote their metadata; reloading the index state")
                self._load_state()
                return
            rows = [r for r in self.store.mirror_rows() if r[0] > top]
            if rows:
                new_ids = np.asarray([r[0] for r in rows], np.int64)
                try:
                    vecs = self.vectors.gather(new_ids)
                except IndexStateError:  # removed and compacted by another process since the rows were read
                    self._load_state()
                    return
                self.mirror.append(rows, vecs)
                self._ann_lock.acquire_write()
                try:
                    if self.ann is not None:
                        self.ann.add(new_ids, vecs)
                finally:
                    self._ann_lock.release_write()
            self._data_version = version

    def refresh(self) -> None:
        """Pick up what another process committed now (queries also do it, at most once a second)."""
        self._maybe_refresh(force=True)

    def _persist_ann(self) -> None:
        """Write the FAISS index atomically, then record generation, count and checksum in SQL (writer only)."""
        if self.ann is None:
            return
        self._ann_lock.acquire_read()  # writing the file reads the index; adds are excluded meanwhile
        try:
            checksum = self.ann.save(self.folder / FAISS_FILE)
            count, factory, params = self.ann.ntotal, self.ann.factory, self.ann.params
        finally:
            self._ann_lock.release_read()
        self.store.record_index_state(count, factory, checksum, params)
        self._ann_dirty = False
        if self.manifest.get("current_factory") != factory:
            self.manifest["current_factory"] = factory
            self._write_manifest(self.folder, self.manifest)

    def _sync_ann(self, removed: np.ndarray, ids: Optional[np.ndarray] = None,
                  vecs: Optional[np.ndarray] = None) -> None:
        """Take ``removed`` out of FAISS and add ``ids``/``vecs``, after the mirror was updated; an index that
        cannot remove (HNSW) or is not trained is rebuilt from the mirror instead."""
        self._ann_lock.acquire_write()
        try:
            ann = self.ann
            if ann is None or not ann.is_trained or (removed.size and not ann.remove(removed)):
                view = self.mirror.view()
                self.ann = self._build_ann_safe(ann.factory if ann is not None else "Flat", view.ids, view.vecs)
            elif ids is not None and ids.size:
                ann.add(ids, vecs)
        finally:
            self._ann_lock.release_write()
        self._ann_dirty = True

    def _swap_ann(self, ann: AnnIndex) -> None:
        self._ann_lock.acquire_write()
        try:
            self.ann = ann
        finally:
            self._ann_lock.release_write()

    def _wanted_factory(self) -> str:
        """The factory asked for at create/rebuild time, or the one the size rules want now ("auto")."""
        wanted = str(self.manifest.get("factory") or "auto")
        if wanted != "auto":
            return wanted
        return choose_factory(len(self), self.dim, self.manifest.get("memory_budget"))

    # -- public API (implemented in ingest.py, embeddings.py, queries.py and maintenance.py) -------------
    def ingest(self, archive: PathLike, workers: int = 2, batch_size: int = 8, retry_errors: bool = False,
               progress: Optional[bool] = None, faiss_flush_seconds: float = 60.0) -> IngestReport:
        """Embed every series of ``archive`` not yet in the index; see :func:`ctglip_sdk.index.ingest.ingest`."""
        from .ingest import ingest  # noqa: PLC0415

        if isinstance(archive, (str, os.PathLike)) and Path(archive).is_dir() and is_within(
                Path(archive).resolve(), Path(self.folder).resolve()):
            # The index holds the pseudonym key and the patient table: inside the archive they would be copied
            # and shared with it (and its files would be walked as part of the archive).
            raise ConfigError(f"the index folder lies inside the archive {os.fspath(archive)!r}: put the index "
                              "elsewhere (it holds the secret pseudonym key)", path=self.folder)

        return ingest(self, archive, workers=workers, batch_size=batch_size, retry_errors=retry_errors,
                      progress=progress, faiss_flush_seconds=faiss_flush_seconds)

    def add_embeddings(self, series: Union["SeriesEmbeddings", Iterable["SeriesEmbeddings"]], *, config_hash: str,
                       weights_hash: Optional[str] = None, batch_size: int = 256,
                       source: str = "embeddings") -> IngestReport:
        """Store organ vectors computed elsewhere, with study metadata; see :func:`embeddings.add_embeddings`."""
        from .embeddings import add_embeddings  # noqa: PLC0415

        return add_embeddings(self, series, config_hash=config_hash, weights_hash=weights_hash,
                              batch_size=batch_size, source=source)

    def search(self, query: Union[str, np.ndarray], k: int = 20, organ: Union[str, Sequence[str], None] = None,
               where: Optional[Mapping[str, Any]] = None, rank: str = "auto") -> SearchResults:
        """Organs most similar to a text or a vector; see :func:`ctglip_sdk.index.queries.search`."""
        from .queries import search  # noqa: PLC0415

        return search(self, query, k=k, organ=organ, where=where, rank=rank)

    def similar(self, crop_id: int, k: int = 10, same_organ: bool = True,
                where: Optional[Mapping[str, Any]] = None) -> SearchResults:
        """Organs most like a stored one; see :func:`ctglip_sdk.index.queries.similar`."""
        from .queries import similar  # noqa: PLC0415

        return similar(self, crop_id, k=k, same_organ=same_organ, where=where)

    def score(self, findings: Optional[Sequence[str]] = None, prompts: Optional[Mapping[str, Any]] = None,
              batch_size: int = 4096) -> Dict[str, Any]:
        """Zero-shot probabilities for stored organs (incremental); see :func:`ctglip_sdk.index.scoring.score`."""
        from .scoring import score  # noqa: PLC0415

        return score(self, findings=findings, prompts=prompts, batch_size=batch_size)

    def cohort(self, all_of: Sequence[str] = (), any_of: Sequence[str] = (), none_of: Sequence[str] = (),
               where: Optional[Mapping[str, Any]] = None, threshold: float = 0.5,
               level: str = "patient") -> CohortResult:
        """Patients or studies meeting finding conditions; see :func:`ctglip_sdk.index.cohort.cohort`."""
        from .cohort import cohort  # noqa: PLC0415

        return cohort(self, all_of=all_of, any_of=any_of, none_of=none_of, where=where, threshold=threshold,
                      level=level)

    def insert_scores(self, rows: Sequence[Tuple[int, str, float]], model_hash: Optional[str] = None) -> int:
        """Store ``(crop_id, finding, probability)`` rows (replacing earlier values); returns the count."""
        from .scoring import insert_scores  # noqa: PLC0415

        return insert_scores(self, rows, model_hash=model_hash)

    def remove(self, series: Iterable[str] = (), studies: Iterable[str] = (),
               patients: Iterable[str] = ()) -> Dict[str, Any]:
        """Delete series (by UID, study UID or patient) with their organs, scores and vectors; see remove.remove."""
        from .remove import remove  # noqa: PLC0415

        return remove(self, series=series, studies=studies, patients=patients)

    def export(self, path: PathLike, what: str = "scores", escape_formulas: bool = True) -> Path:
        """Write ``scores``, ``organs``, ``studies`` or ``ingest`` as CSV/Parquet/JSONL; see export.export."""
        from .export import export  # noqa: PLC0415

        return export(self, path, what=what, escape_formulas=escape_formulas)

    def verify(self, repair: bool = False) -> Dict[str, Any]:
        """Check SQL ids == FAISS ids ⊆ stored vectors (and more); see :func:`maintenance.verify`."""
        from .maintenance import verify  # noqa: PLC0415

        report = verify(self, repair=repair)
        done_on_open, self._repairs_on_open = self._repairs_on_open, []
        report["repaired"] = [*done_on_open, *report.get("repaired", [])]
        return report

    def rebuild(self, factory: Optional[str] = None, target_recall: float = 0.95) -> Dict[str, Any]:
        """Rebuild FAISS from the stored vectors (no re-encoding); see :func:`maintenance.rebuild`."""
        from .maintenance import rebuild  # noqa: PLC0415

        return rebuild(self, factory=factory, target_recall=target_recall)

    def stats(self) -> Dict[str, Any]:
        """Counts, model, FAISS description and database kind (what ``ctglip verify`` prints first)."""
        from .maintenance import stats  # noqa: PLC0415

        return stats(self)
