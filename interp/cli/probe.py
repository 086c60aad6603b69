"""`interp probe`: energy, pitch, CTC and bag-of-characters probes at every site of one or more caches."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from interp.cli.options import bar

__all__ = ["probe_command"]


def probe_command(
    caches: list[Path] = typer.Argument(..., metavar="CACHE...", help="One or more caches of the same items (e.g. "
                                        "an encoder cache as the control and an LLM cache)."),
    data: Path = typer.Option(..., help="The spoken set the caches were extracted from (waveforms, transcripts)."),
    probes: str = typer.Option("energy,pitch,ctc,boc", help="Comma-separated: energy, pitch, ctc, boc."),
    sites: Optional[str] = typer.Option(None, help="Site spec (default: every site of each cache)."),
    out: Path = typer.Option(Path("results/probes.json"), help="Results JSON; the figure goes beside it (.html)."),
    folds: int = typer.Option(5, help="Cross-validation folds over training items (ridge lambda)."),
    test_fraction: float = typer.Option(0.2, help="Share of items held out for scoring (split by item)."),
    ctc_frames_per_row: Optional[int] = typer.Option(None, help="CTC character slots per row r (default: the "
                                                     "smallest that fits every training item)."),
    seed: int = typer.Option(0, help="Seed of the split, CTC training and bootstrap."),
    threads: int = typer.Option(1, help="Torch threads (CTC's small ops run fastest on one)."),
) -> None:
    """Probe every site of a cache: energy and pitch (ridge R2 per audio row), CTC text decodability
    (1 - CER) and bag-of-characters (R2), held-out items, bootstrap CIs; writes JSON and a plotly figure."""
    import torch

    from activations import ActivationCache
    from interp.data.manifest import SpokenSet
    from interp.provenance import provenance
    from interp.sites import expand_sites
    from interp.study.analyses import write_probes

    torch.set_num_threads(threads)
    spoken = SpokenSet.open(data)
    names = [name.strip() for name in probes.split(",") if name.strip()]
    config = {"caches": [str(c) for c in caches], "data": str(data), "probes": names, "sites": sites,
              "folds": folds, "test_fraction": test_fraction, "ctc_frames_per_row": ctc_frames_per_row}
    opened = [ActivationCache.open(path) for path in caches]
    reports = write_probes(opened, spoken, out, probes=names,
                           sites=[expand_sites(sites, cache.sites) if sites else None for cache in opened],
                           n_folds=folds, test_fraction=test_fraction, ctc_frames_per_row=ctc_frames_per_row,
                           seed=seed, provenance=provenance(command="interp probe", config=config, seed=seed),
                           progress=bar)
    for report in reports:
        for score in report.scores:
            typer.echo(f"{report.cache}\t{score.site}\t{score.probe}\t{score.score:.3f} "
                       f"[{score.low:.3f}, {score.high:.3f}]")
    typer.echo(f"results: {out}\nfigure: {out.with_suffix('.html')}")
