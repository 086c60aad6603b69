"""`interp compare-text`: speech vs text inside one LLM, by layer (CKA and a cross-modal probe on word means)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from interp.cli.options import DEVICE, MODEL_HELP, bar, load_system

__all__ = ["compare_text_command"]


def compare_text_command(
    cache: Path = typer.Option(..., "--cache", help="An activation cache of a speech LLM with llm.layers.N sites "
                               "at audio positions (interp extract)."),
    data: Path = typer.Option(..., help="The spoken set the cache was extracted from (transcripts, word timings)."),
    out: Path = typer.Option(..., help="Results folder: compare_text.json, compare_text.html and the text side's "
                             "cache text_states.h5 (reused by a rerun with the same settings)."),
    layers: str = typer.Option("all", "--layers", help="Layers: all | 20,25,29 | 20-29 (of those cached)."),
    model: Optional[str] = typer.Option(None, help="The model the cache was made with (default: the one its header "
                                        "names); its own LLM reads the transcripts. " + MODEL_HELP),
    prompts: Optional[str] = typer.Option(None, "--prompts", metavar="STYLE", help="Prompt style of the text side: "
                                          "chat | few-shot (default: the one the cache's audio was read with)."),
    test_fraction: float = typer.Option(0.25, help="Share of items whose words the probes are scored on."),
    folds: int = typer.Option(5, help="Cross-validation folds over training items (ridge lambda)."),
    seed: int = typer.Option(0, help="Seed of the item split and the folds."),
    device: str = DEVICE,
) -> None:
    """Compare a speech LLM's states at each word's audio positions with its own LLM's states at the word's
    tokens in the transcript, per layer: linear CKA and a bag-of-characters probe trained on text, tested on audio."""
    from activations import ActivationCache
    from interp.compare_text import write_compare_text
    from interp.data.manifest import SpokenSet
    from interp.provenance import provenance
    from interp.sites import llm_layers, parse_layers

    opened = ActivationCache.open(cache)
    parse_layers(layers, llm_layers(opened.sites))  # refuse a bad spec before loading the model
    spoken = SpokenSet.open(data)
    name = model or opened.header.model_info.get("spec") or opened.model
    system = load_system(name, device, "float32", None)
    config = {"cache": str(cache), "data": str(data), "out": str(out), "layers": layers, "model": name,
              "prompts": prompts, "test_fraction": test_fraction, "folds": folds, "device": device}
    with bar("text side", None) as update:
        written = write_compare_text(opened, spoken, system, out, layers=layers, prompts=prompts,
                                     test_fraction=test_fraction, n_folds=folds, seed=seed, progress=update,
                                     provenance=provenance(command="interp compare-text", config=config, seed=seed))
    report = json.loads(written[0].read_text(encoding="utf-8"))
    typer.echo(f"{report['n_words']} words of {report['n_items']} items ({report['text_llm']})")
    for row in report["layers"]:
        probe = row["probe"]
        typer.echo(f"{row['site']}\tCKA {_number(row['cka'])} (shuffled {_number(row['cka_shuffled'])})"
                   f"\tR2 text->text {_number(probe['text_to_text'])}"
                   f"\taudio->audio {_number(probe['audio_to_audio'])}\ttext->audio {_number(probe['text_to_audio'])}")
    for path in written:
        typer.echo(f"wrote {path}")


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
