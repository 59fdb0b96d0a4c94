"""`ctglip demo`: the whole product on a fresh synthetic archive, judged against its ground truth."""

from __future__ import annotations

import click

from ctglip_sdk.cli.output import echo_json, print_table


@click.command("demo")
@click.option("--out", "out_dir", default="demo-output", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the archive, the index, the montage and the report (reused on re-runs).")
@click.option("--patients", default=30, show_default=True, type=click.IntRange(4, 10000),
              help="Synthetic patients to generate.")
@click.option("--seed", default=2026, show_default=True, type=int, help="Archive seed.")
@click.option("--model", default="ctglip-tiny-synthetic", show_default=True, help="Model name or folder.")
@click.option("--preset", default="default", show_default=True, type=click.Choice(["small", "default"]),
              help="Synthetic preset.")
@click.option("-k", "k", default=5, show_default=True, type=click.IntRange(1, 100), help="Hits per query.")
@click.option("--no-montage", is_flag=True, help="Skip the PNG montage of the first query's hits.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for pipelines.")
def demo_command(out_dir: str, patients: int, seed: int, model: str, preset: str, k: int, no_montage: bool,
                 as_json: bool) -> None:
    """Generate an archive, ingest it with the bundled model, search, score, build a cohort, report."""
    from ctglip_sdk.index.demo import run_demo

    res = run_demo(out_dir, n_patients=patients, seed=seed, model=model, preset=preset, k=k,
                   montage=not no_montage, progress=not as_json)
    if as_json:
        echo_json(res.to_dict())
        return
    ing = res.ingest
    done = (f"Ingested {res.archive} into {res.index_dir}" if ing.get("ok") else
            f"{res.archive} was already in {res.index_dir} ({ing.get('skipped', 0)} series unchanged, none re-read)")
    click.echo(f"\n{done} with {res.model} (synthetic phantoms — not patient data). Timings (s): {res.seconds}")
    for s in res.searches:
        p, n = s["precision"], len(s["hits"])
        click.echo(f"\n\"{s['question']}\" -> text={s['parsed']['text']!r} organ={s['parsed']['organ']} "
                   f"where={s['parsed']['where'] or {}}  precision@{n}={'n/a' if p is None else f'{p:.2f}'}; "
                   f"truth ({s['finding']}): {s['relevant']} right answer(s) among {s['candidates']} candidates, "
                   f"ranked {s['relevant_ranks'] or '-'} (ranked by {s['ranking']})")
        print_table([{"score": h["score"], "organ": h["organ"], "patient": h["patient"][:8], "age": h["age"],
                      "sex": h["sex"], "truth": "correct" if h["correct"] else "wrong"} for h in s["hits"]])
    c = res.cohort
    click.echo(f"\nCohort all_of={c['all_of']} none_of={c['none_of']}: found {c['found']} studies, "
               f"truth has {c['expected']}, {c['true_positives']} in both.")
    if res.montage:
        click.echo(f"Montage: {res.montage}")
    click.echo(f"Report: {res.report}")
