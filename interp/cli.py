"""The `interp` command line. It parses arguments, calls one library function, prints and draws bars.

A user mistake (an `InterpError`) is one line on stderr and exit status 2; anything else is a bug and
shows its traceback. Heavy libraries are imported inside the commands so that `--help` answers at once.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer

from interp.errors import InterpError

__all__ = ["app", "main"]

app = typer.Typer(help=__doc__.splitlines()[0] + "\n\nDoes an end-to-end speech LLM use the audio, or is it an "
                  "ASR -> LLM cascade in disguise?", no_args_is_help=True, pretty_exceptions_enable=False,
                  add_completion=False, rich_markup_mode=None)
data_app = typer.Typer(help="Spoken task sets: import benchmarks, synthesise suites, add babble noise, inspect.",
                       no_args_is_help=True, rich_markup_mode=None)
app.add_typer(data_app, name="data")
models_app = typer.Typer(help="The models: speech LLMs, cascades, ASR, text LLMs, tiny test instances.",
                         no_args_is_help=True, rich_markup_mode=None)
app.add_typer(models_app, name="models")


@app.callback()
def _setup(log_level: str = typer.Option("WARNING", help="Logging level: DEBUG, INFO, WARNING, ERROR.")) -> None:
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _progress(units, *, total: int, desc: str):
    """A progress bar on stderr, shown on a terminal only (logs and tests stay clean)."""
    from tqdm import tqdm

    return tqdm(units, total=total, desc=desc, unit="item", disable=None, file=sys.stderr)


_DEVICE = typer.Option("cpu", help="Torch device: cpu, cuda, cuda:1.")
_DTYPE = typer.Option("float32", help="Weights' precision for checkpoints: float32, bfloat16, float16.")
_DEVICE_MAP = typer.Option(None, "--device-map", help="'auto' spreads a large checkpoint over all GPUs.")
_MODEL_HELP = ("A model name (interp models list) or a local checkpoint: qwen2-audio:PATH, "
               "ultravox:PATH[,audio=PATH][,llm=PATH], phi4mm:PATH, cascade:asr=PATH,llm=PATH.")


def _load(model: str, device: str, dtype: str, device_map: str | None) -> object:
    from interp.models.checkpoints import LoadOptions
    from interp.models.mini import load_model

    return load_model(model, options=LoadOptions(device=device, dtype=dtype, device_map=device_map))


def _print_summary(root: Path) -> None:
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


@data_app.command("import")
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
    for _ in _progress(written, total=len(items), desc=f"speaking {dataset}"):
        pass
    _print_summary(out)


@data_app.command("synth")
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
    for _ in _progress(written, total=len(items), desc=f"speaking {task}"):
        pass
    _print_summary(out)


@data_app.command("noise", context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
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
    for _ in _progress(written, total=len(spoken) * len(snrs), desc="mixing babble"):
        pass
    for value in snrs:
        typer.echo(f"wrote {out / noisy_set_name(value)} ({len(spoken)} items at {value:g} dB SNR)")


@data_app.command("info")
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


@data_app.command("suites")
def data_suites() -> None:
    """List the built-in suites and the importers."""
    from interp.data.loaders import IMPORTERS
    from interp.data.tasks import SUITES

    for name, description in SUITES.items():
        typer.echo(f"synth  {name:10s} {description}")
    for name in IMPORTERS:
        typer.echo(f"import {name}")


@models_app.command("list")
def models_list() -> None:
    """Name, kind, parameters, where the weights come from, licence, and whether they are installed."""
    from interp.models.mini import MODEL_CARDS, is_present

    typer.echo(f"{'name':20s} {'kind':10s} {'parameters':22s} {'present':8s} {'licence':36s} weights")
    for card in MODEL_CARDS.values():
        present = "yes" if is_present(card) else "no"
        typer.echo(f"{card.name:20s} {card.kind:10s} {card.parameters:22s} {present:8s} {card.licence:36s} {card.weights}")


@app.command("transcribe")
def transcribe_set(
    spoken_set: Path = typer.Argument(..., metavar="SET", help="A spoken set folder."),
    model: str = typer.Option("mini-whisper", help="An ASR model or a cascade (its ASR is used). " + _MODEL_HELP),
    limit: Optional[int] = typer.Option(None, help="Transcribe only the first N items."),
    batch_size: int = typer.Option(8, help="Clips per forward pass."),
    device: str = _DEVICE,
    dtype: str = _DTYPE,
    device_map: Optional[str] = _DEVICE_MAP,
) -> None:
    """Transcribe a set and print the WER against its transcripts."""
    from interp.data.manifest import SpokenSet
    from interp.errors import InterpError
    from interp.text_metrics import word_error_rate

    spoken = SpokenSet.open(spoken_set)
    items = spoken.items[:limit] if limit else spoken.items
    system = _load(model, device, dtype, device_map)
    asr = getattr(system, "asr", system)
    if not hasattr(asr, "transcribe"):
        raise InterpError(f"{model} is not an ASR model or a cascade; try mini-whisper")
    hypotheses = []
    batches = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    for batch in _progress(batches, total=len(batches), desc="transcribing"):
        hypotheses += asr.transcribe([spoken.load_audio(item) for item in batch])
    for item, hypothesis in zip(items, hypotheses):
        typer.echo(f"{item.id}\t{hypothesis}")
    wer = word_error_rate([item.transcript for item in items], hypotheses)
    typer.echo(f"WER {wer:.4f} over {len(items)} items ({model})")


@app.command("ask")
def ask(
    model: str = typer.Option(..., help="A speech LLM or a cascade. " + _MODEL_HELP),
    audio: Path = typer.Option(..., help="A 16 kHz mono wav (other rates are refused)."),
    prompt: str = typer.Option("<|audio|>", help="The prompt; <|audio|> marks where the audio goes."),
    max_new_tokens: int = typer.Option(48, help="Length limit of the answer."),
    device: str = _DEVICE,
    dtype: str = _DTYPE,
    device_map: Optional[str] = _DEVICE_MAP,
) -> None:
    """Ask one question about one audio file and print the greedy answer."""
    from interp.data.audio import SAMPLE_RATE, check_wav, read_audio
    from interp.errors import InterpError
    from interp.models.base import AUDIO_PLACEHOLDER, SpeechLM
    from interp.models.cascade import Cascade

    check_wav(audio, expected_rate=SAMPLE_RATE)
    if AUDIO_PLACEHOLDER not in prompt:
        prompt = f"{AUDIO_PLACEHOLDER}\n{prompt}"
    samples, _ = read_audio(audio, to_rate=None)
    system = _load(model, device, dtype, device_map)
    if not isinstance(system, (SpeechLM, Cascade)):
        raise InterpError(f"{model} does not hear audio and answer; choose a speech LLM or a cascade")
    typer.echo(system.generate(samples, prompt, max_new_tokens=max_new_tokens))


def main() -> None:
    """Console entry point: user mistakes become one line on stderr and exit status 2."""
    try:
        app()
    except InterpError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted (rerun the same command to resume)", err=True)
        sys.exit(130)
