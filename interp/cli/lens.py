"""`interp lens`: the RMSNorm logit lens at a cache's audio positions, and optionally the implicit cascade."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from interp.cli.options import DEVICE, MODEL_HELP, PROMPTS, bar, load_system
from interp.errors import InterpError
from interp.sites import llm_layers, parse_layers

__all__ = ["lens_command"]


def lens_command(
    cache: Path = typer.Argument(..., metavar="CACHE", help="An activation cache with llm.layers.N sites."),
    model: Optional[str] = typer.Option(None, help="Whose final norm and unembedding to use (default: the model "
                                        "the cache was made with). " + MODEL_HELP),
    out: Path = typer.Option(Path("results/lens.json"), "--out", help="Results JSON; <stem>_precision.html and "
                             "<stem>_strip.html are written beside it."),
    layers: str = typer.Option("all", "--layers", help="Layers: all | 20,25,29 | 20-29 (of those cached)."),
    top_k: int = typer.Option(5, "--top-k", help="Tokens kept per audio row (precision uses the top 1)."),
    norm: bool = typer.Option(True, "--norm/--no-norm", help="Apply the model's final RMSNorm before the "
                              "unembedding (--no-norm: raw residual stream, for comparison)."),
    implicit_cascade: Optional[Path] = typer.Option(None, "--implicit-cascade", metavar="SET", help="Also feed "
                                                    "each item's lens text to the text LLM on this set's task."),
    layer: Optional[int] = typer.Option(None, "--layer", help="Layer of the implicit cascade's lens text "
                                        "(default: the last layer read)."),
    run: Optional[Path] = typer.Option(None, "--run", metavar="RUN", help="Run folder of the implicit cascade's "
                                       "predictions: RUN/implicit-cascade-L<layer>/<set>.jsonl."),
    chunk_rows: int = typer.Option(2048, help="Rows unembedded at a time (memory: chunk x vocab floats)."),
    strip_items: int = typer.Option(3, help="Items whose per-row tokens go to the JSON and the strip figure."),
    n_boot: int = typer.Option(1000, help="Bootstrap resamples (over items)."),
    level: float = typer.Option(0.95, help="Confidence level of the intervals."),
    seed: int = typer.Option(0, help="Seed of the bootstrap resamples."),
    figures: bool = typer.Option(True, help="Write the two HTML figures."),
    prompts: str = PROMPTS,
    device: str = DEVICE,
) -> None:
    """RMSNorm logit lens at the cached audio positions: bag-of-tokens precision and recall against the
    transcript by layer (bootstrap CIs), per-item token strips, and optionally the implicit cascade."""
    from activations import ActivationCache
    from interp.data.manifest import SpokenSet
    from interp.models.implicit_cascade import implicit_cascade_llm
    from interp.study.analyses import ImplicitCascadeRun, write_lens
    from interp.task_prompts import check_prompt_style

    style = check_prompt_style(prompts)
    opened = ActivationCache.open(cache)
    chosen = parse_layers(layers, llm_layers(opened.sites))
    if top_k < 1:
        raise InterpError(f"--top-k must be at least 1, got {top_k}")
    if chunk_rows < 1:
        raise InterpError(f"--chunk-rows must be at least 1, got {chunk_rows}")
    spoken = SpokenSet.open(implicit_cascade) if implicit_cascade is not None else None
    chosen, layer = _implicit_layer(chosen, llm_layers(opened.sites), spoken=spoken, layer=layer, run=run)
    name = model or opened.header.model_info.get("spec") or opened.model
    system = load_system(name, device, "float32", None)
    implicit = None if spoken is None else ImplicitCascadeRun(spoken, layer, implicit_cascade_llm(system), run,
                                                              label=str(implicit_cascade), prompt_style=style)
    config = {"cache": str(cache), "model": name, "layers": chosen, "top_k": top_k, "norm": norm,
              "chunk_rows": chunk_rows, "strip_items": strip_items, "n_boot": n_boot, "level": level,
              "implicit_cascade": str(implicit_cascade) if implicit_cascade else None, "layer": layer,
              "run": str(run) if run else None, "device": device}
    lensed = write_lens(opened, chosen, model=system, out=out, config=config, implicit=implicit, top_k=top_k,
                        norm=norm, chunk_rows=chunk_rows, strip_items=strip_items, n_boot=n_boot, level=level,
                        seed=seed, figures=figures, progress=bar)
    _print_report(lensed.report, cache=cache, name=name, norm=norm, level=level, layer=layer, run=run)
    for path in lensed.written:
        typer.echo(f"wrote {path}")


def _implicit_layer(chosen: list[int], cached: list[int], *, spoken, layer: int | None,
                    run: Path | None) -> tuple[list[int], int | None]:
    """(layers to read, the implicit cascade's layer): its layer (default: the last chosen) is read too; --layer
    and --run without --implicit-cascade, or --implicit-cascade without --run, are refused."""
    if spoken is None:
        if layer is not None or run is not None:
            raise InterpError("--layer and --run belong to --implicit-cascade SET")
        return chosen, layer
    if run is None:
        raise InterpError("--implicit-cascade needs --run RUN (where its predictions go)")
    layer = chosen[-1] if layer is None else layer
    if layer not in cached:
        parse_layers(str(layer), cached)  # raises, naming the cached layers
    return sorted(set(chosen) | {layer}), layer


def _print_report(report: dict, *, cache: Path, name: str, norm: bool, level: float, layer: int | None,
                  run: Path | None) -> None:
    typer.echo(f"logit lens of {cache} ({report['n_audio_rows']} audio rows, {report['n_items']} items) with "
               f"{name}'s {'final norm and ' if norm else ''}unembedding, {level:.0%} bootstrap CI")
    typer.echo(f"{'layer':>5s} {'precision':>24s} {'recall':>24s} {'items':>6s}")
    for entry in report["layers"]:
        cells = [f"{e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}]" if e else "n/a"
                 for e in (entry["precision"], entry["recall"])]
        typer.echo(f"{entry['layer']:5d} {cells[0]:>24s} {cells[1]:>24s} {entry['n_items']:6d}")
    summary = report["implicit_cascade"]
    if summary is not None:
        typer.echo(f"implicit cascade (L{layer} lens text -> {summary['llm']}): accuracy {summary['accuracy']:.3f} "
                   f"on {summary['n_items']} items -> {summary['predictions']}; compare: interp stats {run}")
