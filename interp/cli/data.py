"""`interp data`: spoken task sets: import benchmarks, synthesise suites, add babble noise, inspect."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer

from interp.cli.options import progress

__all__ = ["app"]

app = typer.Typer(help="Spoken task sets: import benchmarks, synthesise suites, add babble noise, inspect.",
                  no_args_is_help=True, rich_markup_mode=None)


def _print_summary(root: Path) -> None:
    """What `interp data info` prints of a set."""
    from interp.data.info import summarize
    from interp.data.manifest import SpokenSet

    summary = summarize(SpokenSet.open(root))
    typer.echo(f"set: {root} ({summary.items} items)")
    typer.echo("tasks: " + ", ".join(f"{k} {v}" for k, v in summary.tasks.items()))
    typer.echo("labels: " + ", ".join(f"{k} {v}" for k, v in summary.labels.items()))
    typer.echo(f"duration: total {summary.duration_total:.1f} s; min {summary.duration_min:.2f}, median "
               f"{summary.duration_median:.2f}, mean {summary.duration_mean:.2f}, max {summary.duration_max:.2f} s")
    typer.echo("sources: " + ", ".join(f"{k} {v}" for k, v in summary.sources.items()))
    typer.echo("speech: " + ", ".join(f"{k} {v}" for k, v in summary.speech.items()))
    typer.echo(f"word times: {summary.with_word_times}/{summary.items} items")


@app.command("import")
def data_import(
    dataset: str = typer.Argument(..., help="sst2, ag_news, csqa, triviaqa, meld, mustard or librispeech."),
    source: Optional[Path] = typer.Argument(None, help="The benchmark file (LibriSpeech: a folder). "
                                            "Default: the copy shipped in interp/resources."),
    out: Path = typer.Option(..., "--out", help="Folder of the new spoken set."),
    limit: Optional[int] = typer.Option(None, help="Keep at most N items, balanced across labels."),
    seed: int = typer.Option(0, help="Seed of --limit sampling and of the per-item voices."),
    tts: bool = typer.Option(False, "--tts", help="Speak the text (needed for text-only benchmarks)."),
    engine: str = typer.Option("piper", help="TTS engine: piper (neural, default) or espeak (parametric)."),
    audio_dir: Optional[Path] = typer.Option(None, help="MELD/MUStARD: folder of your natural clips "
                                             "(dia{D}_utt{U}.wav / {id}.wav); items without one fall back to TTS."),
    overwrite: bool = typer.Option(False, help="Replace --out if it exists."),
) -> None:
    """Import a benchmark as a spoken task set (16 kHz wavs + manifest.jsonl).

    AG News speaks title + description, cut at a sentence end within 60 words. CommonsenseQA speaks the
    question; its five choices reach the model as text. MELD and MUStARD use natural clips from
    --audio-dir when given, else TTS. LibriSpeech uses its own recordings.
    """
    from interp.data.loaders import DEFAULT_SOURCES, import_items
    from interp.data.spoken import write_spoken_set
    from interp.data.text_items import select_stratified
    from interp.data.tts import open_engine
    from interp.errors import DataError
    from interp.provenance import provenance
    from interp.resources import resource_path

    if dataset in DEFAULT_SOURCES and source is None:
        source = resource_path(DEFAULT_SOURCES[dataset])
    items = import_items(dataset, source or Path("-"), audio_dir=audio_dir)
    has_audio = dataset == "librispeech" or (dataset in ("meld", "mustard"))
    if not tts and not has_audio:
        raise DataError(f"{dataset} is text only: pass --tts to speak it (engine {engine})")
    items = select_stratified(items, limit=limit, seed=seed)
    if tts or any(item.recording is None for item in items):
        open_engine(engine)  # fail before writing anything if the engine is unknown or not installed
    config = {"dataset": dataset, "source": str(source), "limit": limit, "seed": seed, "tts": tts,
              "engine": engine, "audio_dir": str(audio_dir) if audio_dir else None}
    written = write_spoken_set(items, out, engine=engine, seed=seed, use_recordings=not tts, overwrite=overwrite,
                               provenance=provenance(command="interp data import", config=config, seed=seed))
    for _ in progress(written, total=len(items), desc=f"speaking {dataset}"):
        pass
    _print_summary(out)


@app.command("synth")
def data_synth(
    task: str = typer.Argument(..., help="sentiment, topic, yesno, pitch or rate."),
    n: int = typer.Option(100, "--n", help="Number of items."),
    seed: int = typer.Option(0, help="Seed of texts, labels and voices."),
    out: Path = typer.Option(..., "--out", help="Folder of the new spoken set."),
    engine: str = typer.Option("piper", help="TTS engine for the text suites (pitch and rate always use espeak)."),
    overwrite: bool = typer.Option(False, help="Replace --out if it exists."),
) -> None:
    """Generate a built-in task suite that needs no download.

    sentiment/topic/yesno carry the label in the words; pitch and rate carry it only in the voice
    (every sentence is spoken once with each label).
    """
    from interp.data.spoken import write_spoken_set
    from interp.data.tasks import synthesize_suite
    from interp.data.tts import open_engine
    from interp.provenance import provenance

    items = synthesize_suite(task, n=n, seed=seed)
    open_engine(engine)
    config = {"task": task, "n": n, "seed": seed, "engine": engine}
    written = write_spoken_set(items, out, engine=engine, seed=seed, use_recordings=False, overwrite=overwrite,
                               provenance=provenance(command="interp data synth", config=config, seed=seed))
    for _ in progress(written, total=len(items), desc=f"speaking {task}"):
        pass
    _print_summary(out)


@app.command("noise", context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def data_noise(
    ctx: typer.Context,
    spoken_set: Path = typer.Argument(..., metavar="SET", help="The clean spoken set."),
    snr: list[float] = typer.Option(..., help="Target SNRs in dB: --snr 20 10 5 0 (or repeat --snr)."),
    out: Path = typer.Option(..., "--out", help="Folder that receives one set per SNR (snr20/, snr10/, …)."),
    babble: str = typer.Option("recording", help="recording (the shipped multi-talker babble), mix (6 other "
                               "utterances of the set) or file (--noise-file)."),
    noise_file: Optional[Path] = typer.Option(None, help="A wav/flac noise recording, with --babble file."),
    seed: int = typer.Option(0, help="Seed of the noise excerpts."),
    overwrite: bool = typer.Option(False, help="Replace existing SNR sets."),
) -> None:
    """Add babble noise at each SNR (speech power over noise power, whole utterance)."""
    from interp.data.manifest import SpokenSet
    from interp.data.noise import noisy_set_name, write_noisy_sets
    from interp.errors import DataError
    from interp.provenance import provenance

    snrs = list(snr)
    for extra in ctx.args:
        try:
            snrs.append(float(extra))
        except ValueError:
            raise DataError(f"unexpected argument {extra!r}: --snr takes numbers (dB)") from None
    if babble not in ("recording", "mix", "file"):
        raise DataError(f"unknown --babble {babble!r}; choose recording, mix or file")
    spoken = SpokenSet.open(spoken_set)
    config = {"set": str(spoken_set), "snr": snrs, "babble": babble, "noise_file": str(noise_file), "seed": seed}
    written = write_noisy_sets(spoken, out, snrs=snrs, babble=babble, noise_file=noise_file, seed=seed,
                               overwrite=overwrite, provenance=provenance(command="interp data noise", config=config,
                                                                          seed=seed))
    for _ in progress(written, total=len(spoken) * len(snrs), desc="mixing babble"):
        pass
    for value in snrs:
        typer.echo(f"wrote {out / noisy_set_name(value)} ({len(spoken)} items at {value:g} dB SNR)")


@app.command("info")
def data_info(
    spoken_set: Path = typer.Argument(..., metavar="SET", help="A spoken set folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Validate a set and print counts per label, durations, sources and how the speech was made."""
    if as_json:
        from interp.data.info import summarize
        from interp.data.manifest import SpokenSet

        typer.echo(json.dumps(asdict(summarize(SpokenSet.open(spoken_set))), indent=2))
    else:
        _print_summary(spoken_set)


@app.command("suites")
def data_suites() -> None:
    """List the built-in suites and the importers."""
    from interp.data.loaders import IMPORTERS
    from interp.data.tasks import SUITES

    for name, description in SUITES.items():
        typer.echo(f"synth  {name:10s} {description}")
    for name in IMPORTERS:
        typer.echo(f"import {name}")
