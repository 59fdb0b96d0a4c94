"""`ctglip ingest | search | similar | score | cohort | export | verify`: thin wrappers over ArchiveIndex."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import click

from ctglip_sdk.cli.output import echo_json, print_table
from ctglip_sdk.errors import CTGlipError

__all__ = ["ingest", "search", "similar", "score", "cohort", "export", "verify", "COMMANDS", "DEFAULT_MODEL"]

#: Model used when `ctglip ingest` creates an index and no --model is given.
DEFAULT_MODEL = "ctglip-tiny-synthetic"


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


def _print_hits(res: Any, as_json: bool) -> None:
    notes = list(getattr(res, "notes", []))
    if as_json:
        echo_json(res.to_dicts())
    else:
        print_table(res.to_dicts(), _HIT_COLUMNS)
        if getattr(res, "ranking", "cosine") != "cosine":
            notes.insert(0, f"ranked by the zero-shot margin of {res.ranking.split(':', 1)[1]}")
    for note in notes:  # on stderr under --json, so that stdout stays one JSON document
        click.echo(f"({note})", err=as_json)


@click.command("ingest")
@click.argument("archive", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_index_options
@click.option("--model", default=None, metavar="NAME_OR_PATH",
              help=f"Model for a new index (default {DEFAULT_MODEL}); an existing index keeps its recorded model.")
@click.option("--factory", default=None, metavar="FAISS", help="FAISS factory for a new index (default: by size).")
@click.option("--table-prefix", default="ctglip_", show_default=True, help="SQL table prefix for a new index.")
@click.option("--include-identifiers", is_flag=True, help="Also store original patient identifiers (new index).")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(0, 64), help="Reader threads.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1, 1024), help="Studies per batch.")
@click.option("--retry-errors", is_flag=True, help="Retry series that failed before with unchanged files.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
def ingest(archive: Path, index_dir: Path, database_url: Optional[str], as_json: bool, model: Optional[str],
           factory: Optional[str], table_prefix: str, include_identifiers: bool, workers: int, batch_size: int,
           retry_errors: bool, progress: Optional[bool]) -> None:
    """Embed ARCHIVE into the index at DIR (created on first use; resumable, idempotent, crash-safe)."""
    from ctglip_sdk.index import ArchiveIndex

    if (index_dir / "manifest.json").exists():
        idx = ArchiveIndex.open(index_dir, model=model, database_url=database_url)
    else:
        ref = model or DEFAULT_MODEL
        try:
            import ctglip_sdk as cg

            model_obj = cg.load(ref)
        except CTGlipError as exc:
            hint = (f"the bundled model {DEFAULT_MODEL!r} is not available in this install" if model is None
                    else f"cannot load model {ref!r}")
            raise click.ClickException(f"{hint} ({exc}); pass --model NAME_OR_PATH (see `ctglip models`)") from None
        idx = ArchiveIndex.create(index_dir, model=model_obj, database_url=database_url, factory=factory,
                                  include_identifiers=include_identifiers, table_prefix=table_prefix)
    with idx:
        report = idx.ingest(archive, workers=workers, batch_size=batch_size, retry_errors=retry_errors,
                            progress=progress)
    if as_json:
        echo_json(report.to_dict())
        return
    click.echo(report.summary())
    for err in report.errors:
        click.echo(f"  failed {err['series']}: {err['reason']}", err=True)


@click.command("search")
@click.argument("text")
@_index_options
@click.option("--organ", "organs", multiple=True, help="Organ name or group (repeatable): liver, kidney, lung…")
@click.option("--where", "wheres", multiple=True, metavar="EXPR",
              help="Filter (repeatable): age>=60, sex=F, study_date>=2020-01-01, contrast=venous, split=test.")
@click.option("-k", "--k", "k", default=20, show_default=True, type=click.IntRange(1, 10000), help="Hits.")
@click.option("--montage", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also save a PNG of the hits' organ boxes.")
@click.option("--rank", type=click.Choice(["auto", "cosine"]), default="auto", show_default=True,
              help="auto: a text naming one dictionary finding ranks by that finding's zero-shot margin; "
                   "cosine: plain text similarity.")
def search(text: str, index_dir: Path, database_url: Optional[str], as_json: bool, organs: Sequence[str],
           wheres: Sequence[str], k: int, montage: Optional[Path], rank: str) -> None:
    """Organs matching TEXT (finding margin or cosine similarity with the index's text encoder)."""
    with _open(index_dir, database_url) as idx:
        res = idx.search(text, k=k, organ=list(organs) or None, where=_where(wheres), rank=rank)
        if montage is not None and len(res):
            from ctglip_sdk.index.montage import save_montage

            save_montage(idx, res, montage)
    _print_hits(res, as_json)


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
              help="Also write the members to CSV.")
def cohort(index_dir: Path, database_url: Optional[str], as_json: bool, all_of: Sequence[str],
           any_of: Sequence[str], none_of: Sequence[str], wheres: Sequence[str], threshold: float, level: str,
           output: Optional[Path]) -> None:
    """Patients (or studies) meeting finding conditions, from stored scores (run `ctglip score` first)."""
    with _open(index_dir, database_url) as idx:
        res = idx.cohort(all_of=all_of, any_of=any_of, none_of=none_of, where=_where(wheres), threshold=threshold,
                         level=level)
    if output is not None:
        res.to_pandas().to_csv(output, index=False)
    if as_json:
        echo_json({"level": level, "n": len(res), "members": res.to_dicts()})
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
def export(path: Path, index_dir: Path, database_url: Optional[str], as_json: bool, what: str) -> None:
    """Write a table of the index to PATH (.csv, .parquet with pyarrow, or .jsonl)."""
    with _open(index_dir, database_url) as idx:
        out = idx.export(path, what=what)
    if as_json:
        echo_json({"path": str(out), "what": what})
    else:
        click.echo(f"wrote {what} to {out}")


@click.command("verify")
@_index_options
@click.option("--repair", is_flag=True, help="Fix what can be fixed (rebuild FAISS, drop unreferenced vectors, "
                                             "queue series with lost vectors for re-ingest).")
def verify(index_dir: Path, database_url: Optional[str], as_json: bool, repair: bool) -> None:
    """Check SQL, stored vectors and FAISS agree; exit code 1 when a problem remains."""
    from ctglip_sdk.index import ArchiveIndex

    try:
        idx = ArchiveIndex.open(index_dir, database_url=database_url)
    except CTGlipError as exc:
        if not repair or "verify" not in str(exc):
            raise
        idx = ArchiveIndex.open(index_dir, database_url=database_url, repair=True)
    with idx:
        report = idx.verify(repair=repair)
    if as_json:
        echo_json(report)
    else:
        click.echo(f"organs {report['organs']}, series {report['series']}, stored vectors "
                   f"{report['stored_vectors']}, FAISS {report['faiss']}")
        for line in report["repaired"]:
            click.echo(f"repaired: {line}")
        for line in report["warnings"]:
            click.echo(f"warning: {line}")
        for line in report["problems"]:
            click.echo(f"problem: {line}", err=True)
        click.echo("ok" if report["ok"] else "NOT OK (run with --repair)" if not repair else "NOT OK")
    if not report["ok"]:
        raise SystemExit(1)


#: The commands of this module, for registration in `ctglip_sdk.cli.main`.
COMMANDS = [ingest, search, similar, score, cohort, export, verify]
