"""`interp erase`: LEACE concept erasure: fit erasers on caches, answer tasks with them applied, sweep concepts
and layer sets."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from interp.cli.options import DEVICE, MODEL_HELP, PROMPTS, load_system, progress
from interp.errors import InterpError

__all__ = ["app"]

app = typer.Typer(help="LEACE concept erasure: fit erasers on caches, answer tasks with them applied.",
                  no_args_is_help=True, rich_markup_mode=None)


def _ranks(text: str | None) -> list[int] | None:
    """--ranks 4,8,16 → [4, 8, 16]; one line (exit 2) for anything else."""
    from interp.erasure_sweep import SweepError

    if text is None:
        return None
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts or not all(part.isdigit() and int(part) >= 1 for part in parts):
        raise SweepError(f"--ranks {text!r}: give whole numbers >= 1, e.g. 4,8,16,32")
    return [int(part) for part in parts]


@app.command("fit")
def erase_fit(
    cache: Path = typer.Argument(..., metavar="CACHE"),
    data: Path = typer.Option(..., help="The spoken set the cache was extracted from (timings, waveforms)."),
    concept: str = typer.Option(..., help="chars, text, boc, energy, pitch, or random (a random subspace of the "
                                "rank of --match: the control)."),
    sites: Optional[str] = typer.Option(None, help="Site spec (default: every site of the cache)."),
    out: Path = typer.Option(..., help="The eraser file (.safetensors with JSON metadata; no pickle)."),
    match: Optional[str] = typer.Option(None, help="random: the concept (default text) or rank to match."),
    match_by: str = typer.Option("rank", help="random: match the concept's per-site rank (default) or, with "
                                 "variance, the share of raw variance its LEACE eraser removes (the smallest raw "
                                 "random eraser that removes at least as much; needs --random-space raw)."),
    random_space: str = typer.Option("whitened", help="random: remove the directions in the whitened (default) or "
                                     "raw space."),
    text_classes: int = typer.Option(32, help="text: the K most frequent aligned tokens + 'other' (rank <= K)."),
    seed: int = typer.Option(0, help="Seed of the random control."),
) -> None:
    """Fit one LEACE eraser per site on the cache's audio rows and print each eraser's rank and share of d."""
    from interp.erasure import fit_eraser

    with progress(None, total=None, desc=f"fitting {concept}") as bar:
        eraser = fit_eraser(cache, data, concept, sites, match=match, match_by=match_by,
                            random_space=random_space, text_classes=text_classes, seed=seed,
                            progress=lambda done, total, site: bar.update(1))
    eraser.save(out)
    typer.echo(eraser.describe())
    typer.echo(f"eraser: {out}")


@app.command("eval")
def erase_eval(
    model: str = typer.Option(..., help="The speech LLM the eraser was fitted on. " + MODEL_HELP),
    data: list[Path] = typer.Option(..., help="Spoken set folder(s) to answer."),
    eraser: Path = typer.Option(..., help="An eraser file from `interp erase fit`."),
    out: Path = typer.Option(..., help="Run folder (behaviour layout: RUN/<system>/<set>.jsonl)."),
    sites: Optional[str] = typer.Option(None, help="Apply at these fitted sites only (default: all)."),
    positions: str = typer.Option("audio", help="audio (default) or all: erasing text positions too is out of "
                                  "the distribution the eraser was fitted on."),
    name: Optional[str] = typer.Option(None, help="System folder name (default <model>+erase-<concept>)."),
    limit: Optional[int] = typer.Option(None, help="Only the first N items of each set."),
    prompts: str = PROMPTS,
    device: str = DEVICE,
) -> None:
    """Answer every item with the eraser applied at its sites (audio positions by default), through the
    behaviour harness, and print accuracy; compare runs with `interp stats`."""
    from interp.behavior import read_sidecar
    from interp.data.manifest import SpokenSet
    from interp.erasure import Eraser
    from interp.erasure_eval import evaluate_erasure
    from interp.task_prompts import check_prompt_style

    style = check_prompt_style(prompts)
    if positions not in ("audio", "all"):
        raise InterpError(f"--positions {positions!r}: choose audio or all")
    fitted = Eraser.load(eraser)
    sets = [SpokenSet.open(path) for path in data]
    system = load_system(model, device, "float32", None)
    for spoken in sets:
        with progress(None, total=len(spoken.items[:limit]), desc=f"{spoken.root.name} erased") as bar:
            path = evaluate_erasure(system, fitted, spoken, out, system_name=name, positions=positions, sites=sites,
                                    limit=limit, progress=lambda done, total: setattr(bar, "n", done) or bar.refresh(),
                                    prompt_style=style)
        sidecar = read_sidecar(path.with_suffix(".json"))
        typer.echo(f"{path}: accuracy {sidecar.get('accuracy')}")


@app.command("sweep")
def erase_sweep(
    sets: list[Path] = typer.Argument(..., metavar="SET...", help="Spoken set folders."),
    out: Path = typer.Option(..., "--out", metavar="RUN", help="Run folder (created; a rerun resumes it)."),
    model: str = typer.Option("mini-ultravox", help="The speech LLM. " + MODEL_HELP),
    cache_dir: Optional[Path] = typer.Option(None, help="Caches, one per set (default RUN/caches)."),
    concepts: str = typer.Option("text,random,chars,energy,pitch",
                                 help="Comma list of chars, text, boc, energy, pitch and the random controls random "
                                      "(whitened, matched rank), random-raw (raw space, matched rank), random-var "
                                      "(raw space, matched to text's raw variance per site); text and the controls "
                                      "take a rank: text@8, random@8, random-raw@8, random-var@8 (matches text@8)."),
    ranks: Optional[str] = typer.Option(None, help="Comma list of ranks, e.g. 4,8,16,32: every text or random "
                                        "control in --concepts written without @rank is swept over them."),
    layer_sets: list[str] = typer.Option(["0-29", "0-14", "15-29"], "--layer-sets", metavar="LAYERS",
                                         help='LLM layers of one eraser: 0-29, a comma list 0,4,8, or all; repeat '
                                              'it for more layer sets (default 0-29, 0-14 and 15-29).'),
    positions: str = typer.Option("audio", help="Erase at audio positions (default) or all."),
    limit: Optional[int] = typer.Option(None, help="Only the first N items of each set."),
    split: str = typer.Option("half", help="half: fit on one half of the items, evaluate on the other (default); "
                              "none: fit and evaluate on all items."),
    random_match: str = typer.Option("text", help="The concept (or rank) the random control matches."),
    text_classes: int = typer.Option(32, help="text: the K most frequent aligned tokens + 'other'."),
    dtype: str = typer.Option("float32", help="Stored precision of extracted caches: float32, float16, bfloat16."),
    batch_size: int = typer.Option(8, help="Items per forward pass when extracting."),
    seed: int = typer.Option(0, help="Seed of the split, the random control and the bootstrap."),
    threads: Optional[int] = typer.Option(None, help="Torch threads (default: torch's). On a shared CPU pass 1: "
                                          "threads waiting for busy cores made the harness ~20x slower here."),
    prompts: str = PROMPTS,
) -> None:
    """Erasure sweep: concepts × layer sets × sets → one table (RUN/sweep.csv, sweep.json) and one figure
    (sweep.html), resumable: a rerun recomputes nothing, more concepts or layer sets add rows, and another model,
    limit, split, seed, positions or random match into the same RUN is refused. Each eraser is fitted on one half
    of the items and evaluated on the other (interp.erasure_sweep); compare the systems with `interp stats RUN`."""
    from interp.erasure_sweep import SweepPlan, format_table, header_line, run_sweep
    from interp.task_prompts import check_prompt_style

    plan = SweepPlan(model=model, sets=list(sets), out=out, cache_dir=cache_dir, concepts=concepts.split(","),
                     ranks=_ranks(ranks), layer_sets=list(layer_sets), positions=positions, limit=limit, split=split,
                     random_match=random_match, text_classes=text_classes, dtype=dtype,
                     prompt_style=check_prompt_style(prompts),
                     batch_size=batch_size, seed=seed, threads=threads, command="interp erase sweep")
    logging.getLogger("interp.erasure_sweep").setLevel(logging.INFO)  # what it reuses and computes, on stderr
    rows = run_sweep(plan)
    typer.echo(header_line(plan))
    typer.echo(format_table(rows))
