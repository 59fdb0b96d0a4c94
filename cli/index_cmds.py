"""`ctglip ingest | search | similar | score | cohort | export | verify`: thin wrappers over ArchiveIndex."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Sequence

import click
from click.core import ParameterSource

from ctglip_sdk.cli.interrupts import sigterm_as_interrupt
from ctglip_sdk.cli.output import echo_json, print_table
from ctglip_sdk.cli.search_text import read_search_text
from ctglip_sdk.errors import ConfigError, CTGlipError, IndexStateError, InputError

__all__ = ["ingest", "search", "similar", "score", "cohort", "export", "verify", "COMMANDS", "DEFAULT_MODEL",
           "INGEST_FAILED_EXIT"]

#: Model used when `ctglip ingest` creates an index and no --model is given.
DEFAULT_MODEL = "ctglip-tiny-synthetic"
#: Exit status of `ctglip ingest` when series failed in this run (1 is a user error, 2 a usage error).
INGEST_FAILED_EXIT = 3
#: Image types the montage can be saved as (matplotlib writes them without extra packages).


def _index_options(func: Callable) -> Callable:
    func = click.option("--json", "as_json", is_flag=True, help="Print JSON for pipelines.")(func)
    func = click.option("--database-url", envvar="CTGLIP_DATABASE_URL", default=None, metavar="URL",
                        help="SQL database of the index when not the SQLite file inside DIR "
                             "(e.g. postgresql+psycopg://user@host/db; env CTGLIP_DATABASE_URL).")(func)
    func = click.option("--index", "index_dir", required=True, metavar="DIR",
                        type=click.Path(file_okay=False, path_type=Path), help="Index folder.")(func)
    return func


def _open(index_dir: Path, database_url: Optional[str]) -> Any:
    from ctglip_sdk.index import ArchiveIndex

    return ArchiveIndex.open(index_dir, database_url=database_url)


def _where(exprs: Sequence[str]) -> Optional[dict]:
    from ctglip_sdk.index import parse_where_expr

    return parse_where_expr(exprs) if exprs else None


_HIT_COLUMNS = ["score", "crop_id", "organ", "patient", "study_uid", "series_uid", "study_date", "age", "sex", "bbox"]


def _print_hits(res: Any, as_json: bool, extra_notes: Sequence[str] = ()) -> None:
    notes = [*extra_notes, *getattr(res, "notes", [])]
    ranking = getattr(res, "ranking", "cosine")
    if ranking.startswith("finding:"):
        # Also under --json: margins and cosine similarities are not comparable scores, and a pipeline must be
        # able to tell which one it got. (An "absent:" ranking explains itself in the search's own notes.)
        notes.insert(0, f"ranked by the zero-shot margin of {ranking.split(':', 1)[1]}")
    if as_json:
        echo_json(res.to_dicts())
    else:
        print_table(res.to_dicts(), _HIT_COLUMNS)
    for note in notes:  # on stderr under --json, so that stdout stays one JSON document
        click.echo(f"({note})", err=as_json)


def _warn(text: str) -> None:
    click.echo(f"warning: {text}", err=True)


def _failed_this_run(report: Any) -> List[Mapping[str, Any]]:
    """Series that failed in this run. Series skipped because an earlier run failed on the same files are
    listed in ``errors`` too (with this prefix), but nothing was tried on them now."""
    return [e for e in report.errors if not str(e.get("reason", "")).startswith("previous attempt failed")]


def _ignored_new_index_options(ctx: click.Context, manifest: Mapping[str, Any], model: Optional[str],
                               factory: Optional[str], table_prefix: str, include_identifiers: bool) -> List[str]:
    """Warnings for options that only shape a new index and that differ from what this index recorded."""
    out: List[str] = []
    if factory is not None and factory != manifest.get("factory"):
        out.append(f"--factory {factory} is ignored: this index exists and keeps its FAISS type "
                   f"({manifest.get('current_factory')}; set at creation, or chosen by size)")
    if (ctx.get_parameter_source("table_prefix") is not ParameterSource.DEFAULT
            and table_prefix != manifest.get("table_prefix", "ctglip_")):
        out.append(f"--table-prefix {table_prefix} is ignored: this index keeps its tables under prefix "
                   f"{manifest.get('table_prefix', 'ctglip_')!r}")
    if include_identifiers and not manifest.get("include_identifiers"):
        out.append("--include-identifiers is ignored: this index was created without identifiers and keeps "
                   "pseudonyms only; ingest into a new --index to store them")
    if model is not None and not _same_model(model, manifest["model"]):
        out.append(f"--model {model} is ignored: this index keeps its recorded model {manifest['model']['name']!r} "
                   "(vectors of different models are not comparable); ingest into a new --index to use another "
                   "model")
    return out


def _same_model(ref: str, recorded: Mapping[str, Any]) -> bool:
    """Whether --model names the index's own model: its recorded name, or a folder holding the same config and
    weights. A registered name is not loaded: one without weights cannot be, and the index uses its copy."""
    if ref == recorded.get("name"):
        return True
    if not Path(ref).is_dir():
        return False
    import ctglip_sdk as cg  # noqa: PLC0415 - torch is heavy
    from ctglip_sdk.index.manifest import model_identity  # noqa: PLC0415

    try:
        got = model_identity(cg.load(ref))
    except CTGlipError:
        return False
    return got["config_hash"] == recorded.get("config_hash") and (
        not recorded.get("weights_hash") or got.get("weights_hash") in (None, recorded["weights_hash"]))


def _new_index(index_dir: Path, model: Optional[str], database_url: Optional[str], factory: Optional[str],
               include_identifiers: bool, table_prefix: str) -> Any:
    from ctglip_sdk.index import ArchiveIndex

    ref = model or DEFAULT_MODEL
    try:
        import ctglip_sdk as cg

        model_obj = cg.load(ref)
    except CTGlipError as exc:
        hint = (f"the bundled model {DEFAULT_MODEL!r} is not available in this install" if model is None
                else f"cannot load model {ref!r}")
        raise click.ClickException(f"{hint} ({exc}); pass --model NAME_OR_PATH (see `ctglip models`)") from None
    return ArchiveIndex.create(index_dir, model=model_obj, database_url=database_url, factory=factory,
                               include_identifiers=include_identifiers, table_prefix=table_prefix)


def _check_montage_path(path: Path, index_dir: Path) -> None:
    """Refuse a montage path that cannot be written before searching, so that a typo costs one line, not the
    search and a traceback."""
    from ctglip_sdk.index.outputs import MONTAGE_SUFFIXES, check_output_path  # noqa: PLC0415

    # the library's check: the suffix, and not into the index folder (a QueryError/InputError, exit 1)
    check_output_path(path, index_dir, suffixes=MONTAGE_SUFFIXES, what="montage")
    folder = path.parent
    if not folder.is_dir():
        raise click.ClickException(f"{path}: folder {str(folder)!r} does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise click.ClickException(f"{path}: folder {str(folder)!r} is not writable")


@click.command("ingest")
# path_type=None keeps the folder as typed: errors name the root the way the user gave it.
# No exists=True: a wrong path or an unmounted share is a user error the library names (exit 1, JSON under
# --json), not a usage error.
@click.argument("archive", type=click.Path())
@_index_options
@click.option("--model", default=None, metavar="NAME_OR_PATH",
              help=f"Model for a new index (default {DEFAULT_MODEL}); an existing index keeps its recorded model.")
@click.option("--factory", default=None, metavar="FAISS", help="FAISS factory for a new index (default: by size).")
@click.option("--table-prefix", default="ctglip_", show_default=True, help="SQL table prefix for a new index.")
@click.option("--include-identifiers", is_flag=True, help="Also store original patient identifiers (new index).")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(0, 64), help="Reader threads.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1, 1024), help="Studies per batch.")
@click.option("--retry-errors", is_flag=True, help="Retry series that failed before with unchanged files.")
@click.option("--allow-empty", is_flag=True,
              help="An archive with no study is not an error: record a run of 0 series (a drop folder that may be "
                   "empty); a new index is then created empty.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
@click.pass_context
def ingest(ctx: click.Context, archive: str, index_dir: Path, database_url: Optional[str], as_json: bool,
           model: Optional[str], factory: Optional[str], table_prefix: str, include_identifiers: bool, workers: int,
           batch_size: int, retry_errors: bool, allow_empty: bool, progress: Optional[bool]) -> None:
    """Embed ARCHIVE into the index at DIR (created on first use; resumable, idempotent, crash-safe).

    Series whose files were only touched or copied without their times (same bytes) are skipped, not embedded
    again. Exit status: 0 when every series was ingested or skipped (unchanged, or failed before with the same
    files; --retry-errors tries those again); 3 when series failed in this run (each named on stderr, or under
    "errors" with --json; the other series are ingested); 1 on a user error; 130 on Ctrl-C and 143 on SIGTERM,
    after which the run is recorded as interrupted and the same command continues it. An archive in which no
    study is found (a wrong path, an unmounted share) is a user error: no index is created and an existing one
    is left untouched; --allow-empty accepts it with a warning (exit 0, 0 series seen). On an existing index, --model, --factory,
    --table-prefix and --include-identifiers are ignored with a warning when they differ from what the index
    recorded.
    """
    from ctglip_sdk.index import ArchiveIndex, plan_ingest

    # SIGTERM (an orchestrator's stop) stops like Ctrl-C, so the run is recorded as interrupted, not 'running'.
    with sigterm_as_interrupt():
        # The archive is planned before the index is created or opened: one without studies must leave
        # nothing behind. The plan is then ingested as is, so the archive is listed once.
        plan = plan_ingest(archive, allow_empty=allow_empty)
        if (index_dir / "manifest.json").exists():
            idx = ArchiveIndex.open(index_dir, database_url=database_url)
            for text in _ignored_new_index_options(ctx, idx.manifest, model, factory, table_prefix,
                                                   include_identifiers):
                _warn(text)
        else:
            try:
                idx = _new_index(index_dir, model, database_url, factory, include_identifiers, table_prefix)
            except IndexStateError:
                if not (index_dir / "manifest.json").exists():
                    raise
                # another `ctglip ingest` created it while this one waited for the lock: use it, as a later run would
                idx = ArchiveIndex.open(index_dir, database_url=database_url)
        try:
            with idx:
                report = idx.ingest(plan, workers=workers, batch_size=batch_size, retry_errors=retry_errors,
                                    progress=progress)
        except KeyboardInterrupt as exc:
            raise type(exc)("ingest stopped; the series written so far are kept and the run is recorded as "
                            "interrupted: run the same command again to continue") from None
    if report.seen == 0:  # only with --allow-empty
        _warn(f"no studies found in {archive}; see docs/data.md for the archive layouts ingest reads")
    if as_json:
        echo_json(report.to_dict())
    else:
        click.echo(report.summary())
        for err in report.errors:
            click.echo(f"  failed {err['series']}: {err['reason']}", err=True)
    if _failed_this_run(report):
        ctx.exit(INGEST_FAILED_EXIT)


@click.command("search")
@click.argument("text")
@_index_options
@click.option("--organ", "organs", multiple=True, help="Organ name or group (repeatable): liver, kidney, lung…")
@click.option("--where", "wheres", multiple=True, metavar="EXPR",
              help="Filter (repeatable): age>=60, sex=F, study_date>=2020-01-01, contrast=portal_venous (or no), split=test.")
@click.option("--parse", is_flag=True,
              help="Also read filters from TEXT: sex words, ages (over 60, 40-60 years, > 70, 65+), study dates "
                   "(in 2021, after 2020), contrast and the organ named, as in \"fatty liver in women over 60\"; "
                   "--organ and --where given win. Without it, "
                   "such words only go to the text encoder, and a note on stderr says so.")
@click.option("-k", "--k", "k", default=20, show_default=True, type=click.IntRange(1, 10000), help="Hits.")
@click.option("--montage", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also save a PNG (or .jpg, .pdf, .svg) of the hits' organ boxes; its folder must exist (and not "
                   "be the index folder).")
@click.option("--rank", type=click.Choice(["auto", "cosine"]), default="auto", show_default=True,
              help="auto: a text naming one dictionary finding ranks by that finding's zero-shot margin; "
                   "cosine: plain text similarity.")
def search(text: str, index_dir: Path, database_url: Optional[str], as_json: bool, organs: Sequence[str],
           wheres: Sequence[str], parse: bool, k: int, montage: Optional[Path], rank: str) -> None:
    """Organs matching TEXT (finding margin or cosine similarity with the index's text encoder).

    Notes on how TEXT was read and ranked follow the table (on stderr under --json).
    """
    if montage is not None:
        _check_montage_path(montage, index_dir)
    query = read_search_text(text, organs, _where(wheres), parse)
    for hint in query.hints:
        click.echo(f"({hint})", err=True)
    with _open(index_dir, database_url) as idx:
        res = idx.search(query.text, k=k, organ=query.organ, where=query.where, rank=rank)
        if query.hints:  # the hint above said it with the --where flags to pass
            res.notes = [n for n in res.notes if "look like filters" not in n]
        _print_hits(res, as_json, query.notes)
        if montage is not None and len(res):
            from ctglip_sdk.index.montage import save_montage

            try:
                save_montage(idx, res, montage)
            except (OSError, ValueError, CTGlipError) as exc:  # the hits are printed: only the picture is lost
                raise click.ClickException(f"{montage}: montage not saved ({exc}); the hits above are "
                                           "complete") from None


@click.command("similar")
@click.argument("crop_id", type=int)
@_index_options
@click.option("-k", "--k", "k", default=10, show_default=True, type=click.IntRange(1, 10000), help="Hits.")
@click.option("--any-organ", is_flag=True, help="Search every organ class, not only the crop's own.")
@click.option("--where", "wheres", multiple=True, metavar="EXPR", help="Filter (repeatable), as for search.")
def similar(crop_id: int, index_dir: Path, database_url: Optional[str], as_json: bool, k: int, any_organ: bool,
            wheres: Sequence[str]) -> None:
    """Organs most like the stored organ CROP_ID (a crop_id from search)."""
    with _open(index_dir, database_url) as idx:
        res = idx.similar(crop_id, k=k, same_organ=not any_organ, where=_where(wheres))
    _print_hits(res, as_json)


@click.command("score")
@_index_options
@click.option("--finding", "findings", multiple=True, help="Dictionary key to score (repeatable; default: all).")
@click.option("--prompt", "prompts", multiple=True, metavar="KEY=TEXT",
              help="Extra finding from your own text, stored as prompt:KEY (repeatable).")
@click.option("--batch-size", default=4096, show_default=True, type=click.IntRange(1, 10 ** 6),
              help="Organ vectors scored per matrix product.")
def score(index_dir: Path, database_url: Optional[str], as_json: bool, findings: Sequence[str],
          prompts: Sequence[str], batch_size: int) -> None:
    """Zero-shot probabilities for every organ and applicable finding (incremental)."""
    spec = {}
    for p in prompts:
        key, sep, text = p.partition("=")
        if not sep or not key.strip() or not text.strip():
            raise click.BadParameter(f"{p!r}: write KEY=TEXT", param_hint="--prompt")
        spec[key.strip()] = text.strip()
    with _open(index_dir, database_url) as idx:
        out = idx.score(findings=list(findings) or None, prompts=spec or None, batch_size=batch_size)
    if as_json:
        echo_json(out)
    else:
        click.echo(f"scored {out['scored']} (organ, finding) pairs over {out['organs']} organs "
                   f"({len(out['findings'])} findings) in {out['seconds']} s")


@click.command("cohort")
@_index_options
@click.option("--all-of", "all_of", multiple=True, metavar="COND", help="Finding key or text every member has.")
@click.option("--any-of", "any_of", multiple=True, metavar="COND", help="Members have at least one of these.")
@click.option("--none-of", "none_of", multiple=True, metavar="COND", help="Members have none of these.")
@click.option("--where", "wheres", multiple=True, metavar="EXPR", help="Filter (repeatable), as for search.")
@click.option("--threshold", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="Probability at or above which a finding counts as present.")
@click.option("--level", type=click.Choice(["patient", "study"]), default="patient", show_default=True,
              help="Return patients or single studies.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the members to this .csv file (not inside the index folder).")
@click.option("--raw-csv", is_flag=True, help="Write CSV text cells as stored: no leading ' on cells that start "
                                              "with = + - @ (which spreadsheets would run as formulas).")
def cohort(index_dir: Path, database_url: Optional[str], as_json: bool, all_of: Sequence[str],
           any_of: Sequence[str], none_of: Sequence[str], wheres: Sequence[str], threshold: float, level: str,
           output: Optional[Path], raw_csv: bool) -> None:
    """Patients (or studies) meeting finding conditions, from stored scores (run `ctglip score` first).

    --output must be a .csv file outside the index folder (it is refused there: it would replace the index's
    own files).
    """
    from ctglip_sdk.index.outputs import COHORT_SUFFIXES, check_output_path, write_cohort_csv  # noqa: PLC0415

    if output is not None:  # said before the query, with the reason
        check_output_path(output, index_dir, suffixes=COHORT_SUFFIXES, what="cohort CSV")
        if not Path(output).parent.is_dir():
            raise InputError(f"cannot write the cohort CSV: folder {str(Path(output).parent)!r} does not exist",
                             path=output)
    with _open(index_dir, database_url) as idx:
        res = idx.cohort(all_of=all_of, any_of=any_of, none_of=none_of, where=_where(wheres), threshold=threshold,
                         level=level)
        if output is not None:  # checked again by the writer, against the database's own file too
            write_cohort_csv(idx, res, output, [*all_of, *any_of], escape_formulas=not raw_csv)
    if as_json:
        echo_json({"level": level, "n": len(res), "members": res.to_dicts(), "notes": list(res.notes)})
        return
    rows = [{**{k: v for k, v in m.items() if k not in ("evidence", "studies")}, "studies": len(m["studies"]),
             **{f"p:{k}": v for k, v in m["evidence"].items()}} for m in res]
    print_table(rows)
    click.echo(f"{len(res)} {level}(s)")


@click.command("export")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@_index_options
@click.option("--what", type=click.Choice(["scores", "organs", "studies", "ingest"]), default="scores",
              show_default=True, help="Table to export.")
@click.option("--raw-csv", is_flag=True, help="Write CSV text cells as stored: no leading ' on cells that start "
                                              "with = + - @ (which spreadsheets would run as formulas).")
def export(path: Path, index_dir: Path, database_url: Optional[str], as_json: bool, what: str,
           raw_csv: bool) -> None:
    """Write a table of the index to PATH (.csv, .parquet with pyarrow, or .jsonl; not inside the index folder).

    In CSV, a text cell that starts with = + - @ (a DICOM description, say, which a spreadsheet would run as a
    formula) is written with a leading '; --raw-csv writes it as stored.
    """
    with _open(index_dir, database_url) as idx:
        out = idx.export(path, what=what, escape_formulas=not raw_csv)
    if as_json:
        echo_json({"path": str(out), "what": what})
    else:
        click.echo(f"wrote {what} to {out}")


@click.command("verify")
@_index_options
@click.option("--repair", is_flag=True, help="Fix what can be fixed (rebuild FAISS, drop unreferenced vectors, "
                                             "queue series with lost vectors for re-ingest, recreate a lost scores "
                                             "or history table empty).")
def verify(index_dir: Path, database_url: Optional[str], as_json: bool, repair: bool) -> None:
    """Check every SQL table is there and SQL, stored vectors and FAISS agree; exit code 1 when a problem remains."""
    from ctglip_sdk.index import ArchiveIndex

    try:
        idx = ArchiveIndex.open(index_dir, database_url=database_url)
    except CTGlipError as exc:
        if repair and "verify" in str(exc):
            idx = ArchiveIndex.open(index_dir, database_url=database_url, repair=True)
        elif as_json and isinstance(exc, IndexStateError):
            # verify exists to report problems: a pipeline reading --json gets them as JSON, not only a line
            echo_json({"ok": False, "problems": [str(exc)], "warnings": [], "repaired": []})
            raise SystemExit(1)
        else:
            raise
    with idx:
        report = idx.verify(repair=repair)
    if as_json:
        echo_json(report)
    else:
        if report.get("organs") is not None:  # None: the database lacks tables, and nothing was counted
            click.echo(f"organs {report['organs']}, series {report['series']}, stored vectors "
                       f"{report['stored_vectors']}, FAISS {report['faiss']}")
        for line in report["repaired"]:
            click.echo(f"repaired: {line}")
        for line in report["warnings"]:
            click.echo(f"warning: {line}")
        for line in report["problems"]:
            click.echo(f"problem: {line}", err=True)
        click.echo("ok" if report["ok"] else "NOT OK (run with --repair)" if not repair and report.get(
            "repairable", True) else "NOT OK")
    if not report["ok"]:
        raise SystemExit(1)


@click.command("remove")
@_index_options
@click.option("--series", "series", multiple=True, metavar="UID", help="SeriesInstanceUID to remove (repeatable).")
@click.option("--study", "studies", multiple=True, metavar="UID", help="StudyInstanceUID to remove (repeatable).")
@click.option("--patients-file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Text file of patient identifiers (or stored pseudonyms), one per line: kept off the command "
                   "line, where shell history and process lists would show them.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def remove(index_dir: Path, database_url: Optional[str], as_json: bool, series: Sequence[str],
           studies: Sequence[str], patients_file: Optional[Path], yes: bool) -> None:
    """Delete series, studies or patients from the index: SQL rows, FAISS ids and stored vectors.

    A series still in the archive comes back with the next ingest: remove it there too when it must stay out.
    """
    patients: List[str] = []
    if patients_file is not None:
        try:
            patients = [ln.strip() for ln in patients_file.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read the patients file ({type(exc).__name__})", path=patients_file) from None
    if not (series or studies or patients):
        raise click.UsageError("name at least one --series, --study or a --patients-file")
    if not yes:
        if as_json:  # a pipeline reads stdout and cannot answer a prompt: say what is missing instead
            raise ConfigError("removal needs confirmation: pass --yes with --json")
        click.confirm(f"Remove {len(series)} series, {len(studies)} studies and {len(patients)} patients' series "
                      f"from {index_dir}? This cannot be undone", abort=True, err=True)
    with _open(index_dir, database_url) as idx:
        out = idx.remove(series=series, studies=studies, patients=patients)
    if as_json:
        echo_json(out)
        return
    click.echo(f"removed {out['series']} series, {out['organs']} organs, {out['studies']} studies and "
               f"{out['patients']} patients; erased {out['vectors_erased']} stored vectors")
    nf = out["not_found"]
    for what in ("series", "studies"):
        if nf[what]:
            click.echo(f"not in the index ({what}): {', '.join(nf[what])}", err=True)
    if nf["patients"]:
        click.echo(f"not in the index: {nf['patients']} patient(s)", err=True)


#: The commands of this module, for registration in `ctglip_sdk.cli.main`.
COMMANDS = [ingest, search, similar, score, cohort, export, verify, remove]
