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
def _setup(log_level: str = typer.Option("WARNING", help="Logging level: DEBUG, INFO, WARNING, ERROR."),
           threads: Optional[int] = typer.Option(None, min=1, help="Torch threads for any command (default: "
                                                 "torch's, one per core); `probe` and `demo` set their own.")) -> None:
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _progress(units, *, total: int, desc: str):
    """A progress bar on stderr, shown on a terminal only (logs and tests stay clean)."""
    from tqdm import tqdm

    return tqdm(units, total=total, desc=desc, unit="item", disable=None, file=sys.stderr)


_DEVICE = typer.Option("cpu", help="Torch device: cpu, cuda, cuda:1.")
_DTYPE = typer.Option("float32", help="Weights' precision for checkpoints: float32, bfloat16, float16.")
_PROMPTS = typer.Option("chat", "--prompts", metavar="STYLE",
                        help="How tasks are put: chat (each task's zero-shot instruction through each model's own "
                             "chat template) or few-shot (plain few-shot completions, for base models and the mini "
                             "stack). Keep it the same across extract, behave, lens and erase of one study.")
_DEVICE_MAP = typer.Option(None, "--device-map", help="'auto' spreads a large checkpoint over all GPUs.")
_MODEL_HELP = ("A model name (interp models list) or a local checkpoint: qwen2-audio:PATH, "
               "ultravox:PATH[,audio=PATH][,llm=PATH], phi4mm:PATH[,speech_lora=off], cascade:asr=PATH,llm=PATH "
               "(llm=self,speech=SPEC last: the speech LLM's own LLM).")


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


def _shard(shard: str | None) -> tuple[int, int]:
    """(rank, world) from `--shard k/N`, else from torchrun's RANK/WORLD_SIZE, else (0, 1)."""
    import os

    if shard is None:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    try:
        rank, world = (int(part) for part in shard.split("/"))
    except ValueError:
        raise InterpError(f"--shard {shard!r}: expected k/N, e.g. 0/4") from None
    if not 0 <= rank < world:
        raise InterpError(f"--shard {shard}: k must be in 0..N-1")
    return rank, world


@app.command("extract")
def extract_command(
    model: str = typer.Option(..., help="An end-to-end speech LLM. " + _MODEL_HELP),
    data: Path = typer.Option(..., help="A spoken set folder."),
    out: Path = typer.Option(..., help="The cache folder (created; an unfinished one is resumed)."),
    sites: str = typer.Option("llm.layers.*", help="Sites: llm.layers.0,4,8 | llm.layers.* | projector,llm.layers.* | "
                              "audio.layers.* (encoder sites go in a cache of their own)."),
    positions: str = typer.Option("audio", help="Rows to keep: audio, text or all positions of the LLM sequence."),
    dtype: str = typer.Option("float16", "--dtype", help="Stored precision: float16 (overflow stops with the site "
                              "named), bfloat16 or float32."),
    batch_size: int = typer.Option(8, help="Items per forward pass (right-padded; rows do not depend on it)."),
    shard: Optional[str] = typer.Option(None, help="k/N: this worker takes items k, k+N, ... (SLURM arrays); "
                                        "under torchrun RANK/WORLD_SIZE are used. Then run `interp cache finalize`."),
    limit: Optional[int] = typer.Option(None, help="Only the first N items of the set."),
    prompt: Optional[str] = typer.Option(None, help="Prompt with <|audio|> for every item (default: each item's "
                                         "task prompt, as the behaviour harness asks it)."),
    prompts: str = _PROMPTS,
    items_per_shard: int = typer.Option(64, help="Items per shard file (a crash loses at most one shard)."),
    overwrite: bool = typer.Option(False, help="Replace a cache made with another model, sites or settings."),
    device: str = _DEVICE,
    model_dtype: str = typer.Option("float32", "--model-dtype", help="Weights' precision for checkpoints."),
    device_map: Optional[str] = _DEVICE_MAP,
) -> None:
    """Cache activations of a speech LLM at its named sites to sharded HDF5 (resumable)."""
    from activations.extract import extract, plan_extraction
    from activations.format import DTYPES, POSITIONS
    from interp.data.manifest import SpokenSet
    from interp.models.base import describe_model
    from interp.provenance import provenance
    from interp.task_prompts import check_prompt_style, task_prompt

    style = check_prompt_style(prompts)
    if dtype not in DTYPES:
        raise InterpError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if positions not in POSITIONS:
        raise InterpError(f"--positions {positions!r}: choose one of {', '.join(POSITIONS)}")
    rank, world = _shard(shard)
    if device.startswith("cuda") and world > 1 and shard is None:
        import os

        device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}"
    spoken = SpokenSet.open(data)
    system = _load(model, device, model_dtype, device_map)
    plan = plan_extraction(system, sites, positions)
    prompt_for = (lambda item: prompt) if prompt else (lambda item: task_prompt(item.task, style).for_item(item))
    if prompt is not None:
        from interp.models.prompting import split_prompt

        split_prompt(prompt)
    config = {"model": model, "data": str(data), "sites": list(plan.sites), "positions": positions, "dtype": dtype,
              "batch_size": batch_size, "limit": limit, "prompt": prompt, "prompts": None if prompt else style,
              "rank": rank, "world": world}
    total = len([i for i in range(len(spoken.items[:limit])) if i % world == rank])
    with _progress(None, total=total, desc=f"extracting {model}") as bar:
        writer = extract(system, spoken, out, plan=plan, prompt_for=prompt_for, dtype=dtype, batch_size=batch_size,
                         rank=rank, world=world, limit=limit, overwrite=overwrite,
                         model_info=describe_model(system, model),
                         provenance=provenance(command="interp extract", config=config, seed=None),
                         items_per_shard=items_per_shard, progress=bar.update)
    typer.echo(f"cache: {out} ({len(writer.done)} items of rank {rank}/{world}, sites {len(plan.sites)}, {dtype})")
    if world > 1:
        typer.echo(f"when every rank has finished: interp cache finalize {out}")


@app.command("probe")
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
    from interp.sites import expand_sites
    from interp.provenance import provenance
    from probes import probe_figure, run_probes

    torch.set_num_threads(threads)
    spoken = SpokenSet.open(data)
    names = [name.strip() for name in probes.split(",") if name.strip()]
    config = {"caches": [str(c) for c in caches], "data": str(data), "probes": names, "sites": sites,
              "folds": folds, "test_fraction": test_fraction, "ctc_frames_per_row": ctc_frames_per_row}
    reports = []
    for path in caches:
        cache = ActivationCache.open(path)
        chosen = expand_sites(sites, cache.sites) if sites else None
        total = len(chosen or cache.sites)
        with _progress(None, total=total, desc=f"probing {path.name}") as bar:
            reports.append(run_probes(cache, spoken, probes=names, sites=chosen, n_folds=folds, seed=seed,
                                      test_fraction=test_fraction, ctc_frames_per_row=ctc_frames_per_row,
                                      progress=lambda done, all_, site: bar.update(1)))
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"reports": [report.to_dict(None) for report in reports],
              "provenance": provenance(command="interp probe", config=config, seed=seed)}
    out.write_text(json.dumps(record, indent=1, allow_nan=False, default=str))
    for report in reports:
        for score in report.scores:
            typer.echo(f"{report.cache}\t{score.site}\t{score.probe}\t{score.score:.3f} "
                       f"[{score.low:.3f}, {score.high:.3f}]")
    figure_path = out.with_suffix(".html")
    figures = [probe_figure(report) for report in reports]
    body = "\n".join(f.to_html(include_plotlyjs=(i == 0), full_html=False) for i, f in enumerate(figures))
    figure_path.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>probes</title></head>"
                           f"<body>{body}</body></html>")
    typer.echo(f"results: {out}\nfigure: {figure_path}")


erase_app = typer.Typer(help="LEACE concept erasure: fit erasers on caches, answer tasks with them applied.",
                        no_args_is_help=True, rich_markup_mode=None)
app.add_typer(erase_app, name="erase")


@erase_app.command("fit")
def erase_fit(
    cache: Path = typer.Argument(..., metavar="CACHE"),
    data: Path = typer.Option(..., help="The spoken set the cache was extracted from (timings, waveforms)."),
    concept: str = typer.Option(..., help="chars, text, boc, energy, pitch, or random (a random subspace of the "
                                "rank of --match: the control)."),
    sites: Optional[str] = typer.Option(None, help="Site spec (default: every site of the cache)."),
    out: Path = typer.Option(..., help="The eraser file (.safetensors with JSON metadata; no pickle)."),
    match: Optional[str] = typer.Option(None, help="random: the concept (default text) or rank to match."),
    text_classes: int = typer.Option(32, help="text: the K most frequent aligned tokens + 'other' (rank <= K)."),
    seed: int = typer.Option(0, help="Seed of the random control."),
) -> None:
    """Fit one LEACE eraser per site on the cache's audio rows and print each eraser's rank and share of d."""
    from interp.erasure import fit_eraser

    with _progress(None, total=None, desc=f"fitting {concept}") as bar:
        eraser = fit_eraser(cache, data, concept, sites, match=match, text_classes=text_classes, seed=seed,
                            progress=lambda done, total, site: bar.update(1))
    eraser.save(out)
    typer.echo(eraser.describe())
    typer.echo(f"eraser: {out}")


@erase_app.command("eval")
def erase_eval(
    model: str = typer.Option(..., help="The speech LLM the eraser was fitted on. " + _MODEL_HELP),
    data: list[Path] = typer.Option(..., help="Spoken set folder(s) to answer."),
    eraser: Path = typer.Option(..., help="An eraser file from `interp erase fit`."),
    out: Path = typer.Option(..., help="Run folder (behaviour layout: RUN/<system>/<set>.jsonl)."),
    sites: Optional[str] = typer.Option(None, help="Apply at these fitted sites only (default: all)."),
    positions: str = typer.Option("audio", help="audio (default) or all: erasing text positions too is out of "
                                  "the distribution the eraser was fitted on."),
    name: Optional[str] = typer.Option(None, help="System folder name (default <model>+erase-<concept>)."),
    limit: Optional[int] = typer.Option(None, help="Only the first N items of each set."),
    prompts: str = _PROMPTS,
    device: str = _DEVICE,
) -> None:
    """Answer every item with the eraser applied at its sites (audio positions by default), through the
    behaviour harness, and print accuracy; compare runs with `interp stats`."""
    from interp.behavior import read_sidecar
    from interp.data.manifest import SpokenSet
    from interp.erasure import Eraser, evaluate_erasure
    from interp.task_prompts import check_prompt_style

    style = check_prompt_style(prompts)
    if positions not in ("audio", "all"):
        raise InterpError(f"--positions {positions!r}: choose audio or all")
    fitted = Eraser.load(eraser)
    sets = [SpokenSet.open(path) for path in data]
    system = _load(model, device, "float32", None)
    for spoken in sets:
        with _progress(None, total=len(spoken.items[:limit]), desc=f"{spoken.root.name} erased") as bar:
            path = evaluate_erasure(system, fitted, spoken, out, system_name=name, positions=positions, sites=sites,
                                    limit=limit, progress=lambda done, total: setattr(bar, "n", done) or bar.refresh(),
                                    prompt_style=style)
        sidecar = read_sidecar(path.with_suffix(".json"))
        typer.echo(f"{path}: accuracy {sidecar.get('accuracy')}")


cache_app = typer.Typer(help="Activation caches: inspect, verify, merge shards of several workers, export.",
                        no_args_is_help=True, rich_markup_mode=None)
app.add_typer(cache_app, name="cache")


@cache_app.command("info")
def cache_info(cache: Path = typer.Argument(..., metavar="CACHE")) -> None:
    """Model, sites, dtype, items, rows, bytes, versions and git commit of a cache."""
    from activations.maintenance import info

    summary = info(cache)
    typer.echo(f"cache: {cache}")
    typer.echo(f"model: {summary['model']}")
    sites = summary["sites"]
    typer.echo(f"sites: {len(sites)} ({', '.join(f'{name} {dim}' for name, dim in sites.items())})")
    for key in ("dtype", "positions", "dataset", "items", "rows", "shards", "bytes", "finalized", "git_commit"):
        typer.echo(f"{key}: {summary.get(key)}")
    typer.echo("versions: " + ", ".join(f"{k} {v}" for k, v in (summary.get("versions") or {}).items()))


@cache_app.command("verify")
def cache_verify(cache: Path = typer.Argument(..., metavar="CACHE")) -> None:
    """Check checksums, offsets, dims and finiteness of every shard; exit 1 when a problem is found."""
    from activations.maintenance import verify

    report = verify(cache)
    for problem in report.problems:
        typer.echo(f"problem: {problem}")
    typer.echo(f"{'ok' if report.ok else 'FAILED'}: {report.shards} shards, {report.items} items, {report.rows} rows, "
               f"{report.bytes} bytes")
    if not report.ok:
        raise typer.Exit(1)


@cache_app.command("finalize")
def cache_finalize(cache: Path = typer.Argument(..., metavar="CACHE")) -> None:
    """Merge the manifests written by the ranks of a multi-worker extraction (--shard k/N or torchrun)."""
    from activations.maintenance import finalize

    typer.echo(f"manifest: {finalize(cache)}")


@cache_app.command("export")
def cache_export(cache: Path = typer.Argument(..., metavar="CACHE"),
                 out: Path = typer.Option(..., help="The single .h5 file to write.")) -> None:
    """Copy a cache into one self-contained .h5 file (same layout as a shard, header included)."""
    from activations.maintenance import export

    typer.echo(f"exported: {export(cache, out)}")


@app.command("lens")
def lens_command(
    cache: Path = typer.Argument(..., metavar="CACHE", help="An activation cache with llm.layers.N sites."),
    model: Optional[str] = typer.Option(None, help="Whose final norm and unembedding to use (default: the model "
                                        "the cache was made with). " + _MODEL_HELP),
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
    prompts: str = _PROMPTS,
    device: str = _DEVICE,
) -> None:
    """RMSNorm logit lens at the cached audio positions: bag-of-tokens precision and recall against the
    transcript by layer (bootstrap CIs), per-item token strips, and optionally the implicit cascade."""
    from activations import ActivationCache
    from interp.data.manifest import SpokenSet
    from interp.lens import TokenNormalizer, implicit_cascade_llm, lens_report, logit_lens, run_implicit_cascade, score_lens, write_report
    from interp.sites import llm_layers, parse_layers
    from interp.task_prompts import check_prompt_style

    style = check_prompt_style(prompts)
    opened = ActivationCache.open(cache)
    chosen = parse_layers(layers, llm_layers(opened.sites))
    if top_k < 1:
        raise InterpError(f"--top-k must be at least 1, got {top_k}")
    if chunk_rows < 1:
        raise InterpError(f"--chunk-rows must be at least 1, got {chunk_rows}")
    spoken = None
    if implicit_cascade is not None:
        if run is None:
            raise InterpError("--implicit-cascade needs --run RUN (where its predictions go)")
        spoken = SpokenSet.open(implicit_cascade)
        layer = chosen[-1] if layer is None else layer
        if layer not in llm_layers(opened.sites):
            parse_layers(str(layer), llm_layers(opened.sites))  # raises, naming the cached layers
        chosen = sorted(set(chosen) | {layer})
    elif layer is not None or run is not None:
        raise InterpError("--layer and --run belong to --implicit-cascade SET")
    name = model or opened.header.model_info.get("spec") or opened.model
    system = _load(name, device, "float32", None)
    rows = int((opened.row_table()["kind"] == 0).sum())
    with _progress(None, total=rows * len(chosen), desc="logit lens") as bar:
        result = logit_lens(opened, chosen, model=system, top_k=top_k, norm=norm, chunk_rows=chunk_rows,
                            progress=bar.update)
    normalizer = TokenNormalizer(system.tokenizer)
    scores = score_lens(result, normalizer, n_boot=n_boot, level=level, seed=seed)
    implicit = None
    if spoken is not None:
        llm = implicit_cascade_llm(system)
        with _progress(None, total=len(spoken), desc=f"implicit cascade L{layer}") as bar:
            path = run_implicit_cascade(result, spoken, run, layer=layer, llm=llm, normalizer=normalizer, seed=seed,
                                        progress=lambda done, total: bar.update(1), prompt_style=style)
        sidecar = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        implicit = {"set": str(implicit_cascade), "layer": layer, "run": str(run), "system": path.parent.name,
                    "predictions": str(path), "llm": getattr(llm, "name", None), "n_items": sidecar["counts"]["items"],
                    "accuracy": sidecar["accuracy"]}
    config = {"cache": str(cache), "model": name, "layers": chosen, "top_k": top_k, "norm": norm,
              "chunk_rows": chunk_rows, "strip_items": strip_items, "n_boot": n_boot, "level": level,
              "implicit_cascade": str(implicit_cascade) if implicit_cascade else None, "layer": layer,
              "run": str(run) if run else None, "device": device}
    report = lens_report(result, scores, normalizer, strip_items=strip_items, implicit=implicit, config=config)
    written = write_report(report, out, figures=figures)
    typer.echo(f"logit lens of {cache} ({result.rows} audio rows, {report['n_items']} items) with {name}'s "
               f"{'final norm and ' if norm else ''}unembedding, {level:.0%} bootstrap CI")
    typer.echo(f"{'layer':>5s} {'precision':>24s} {'recall':>24s} {'items':>6s}")
    for entry in report["layers"]:
        cells = [f"{e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}]" if e else "n/a"
                 for e in (entry["precision"], entry["recall"])]
        typer.echo(f"{entry['layer']:5d} {cells[0]:>24s} {cells[1]:>24s} {entry['n_items']:6d}")
    if implicit is not None:
        typer.echo(f"implicit cascade (L{layer} lens text -> {implicit['llm']}): accuracy {implicit['accuracy']:.3f} "
                   f"on {implicit['n_items']} items -> {implicit['predictions']}; compare: interp stats {run}")
    for path in written:
        typer.echo(f"wrote {path}")


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


_SYSTEMS_HELP = ("Comma-separated systems: model names (interp models list), checkpoint specs (" + _MODEL_HELP.split(
    "checkpoint: ")[-1].rstrip(".") + ") or endpoint:URL,model=NAME[,key_env=VAR][,timeout=S][,raw_prompts=1]; "
    "end any of them with ,name=NAME to choose its folder name.")


@app.command("behave", context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def behave(
    ctx: typer.Context,
    systems: str = typer.Option(..., help=_SYSTEMS_HELP),
    data: list[Path] = typer.Option(..., "--data", metavar="SET", help="Spoken set folders: --data SET [SET ...]."),
    out: Path = typer.Option(..., "--out", metavar="RUN",
                             help="Run folder; predictions go to RUN/<system>/<set>.jsonl."),
    limit: Optional[int] = typer.Option(None, help="Answer only the first N items of each set."),
    prompts: str = typer.Option("chat", "--prompts", metavar="STYLE",
                                help="chat: each task's zero-shot instruction through each model's own chat "
                                     "template; few-shot: the plain few-shot completions (base models, mini stack)."),
    calibrate: str = typer.Option("none", "--calibrate", metavar="none|batch",
                                  help="batch: subtract each choice's mean score over the run's items before the "
                                       "argmax (each answer then depends on the others); rerunning a finished run "
                                       "with another value re-finalises it without running the systems."),
    device: str = _DEVICE,
    dtype: str = _DTYPE,
    device_map: Optional[str] = _DEVICE_MAP,
) -> None:
    """Let every system answer every item of every set (resumable), then print accuracy per system and set.

    Forced choice by the summed log-likelihood of each choice, scored as the continuation the model would write
    (uncalibrated unless --calibrate batch), open answers by greedy generation; an endpoint answers forced
    choices by generation + parsing.
    """
    from tqdm import tqdm

    from interp.behavior import check_scoring, parse_systems, record_run, run_summary, run_system, set_name
    from interp.data.manifest import SpokenSet
    from interp.errors import DataError
    from interp.models.checkpoints import LoadOptions
    from interp.task_prompts import check_calibration, check_prompt_style, task_prompt

    style, calibration = check_prompt_style(prompts), check_calibration(calibrate)
    specs = parse_systems(systems)
    folders = list(data)
    for extra in ctx.args:
        if extra.startswith("-"):
            raise DataError(f"unexpected option {extra!r}")
        folders.append(Path(extra))
    sets = [SpokenSet.open(folder) for folder in folders]
    names = [set_name(spoken.root) for spoken in sets]
    if len(set(names)) != len(names):
        duplicate = next(name for name in names if names.count(name) > 1)
        raise DataError(f"two sets are called {duplicate!r} (predictions are named after the set folder); "
                        "rename one folder")
    for spoken in sets:
        for task in dict.fromkeys(item.task for item in spoken.items):
            task_prompt(task, style)
    if limit is not None and limit < 1:
        raise DataError(f"--limit must be at least 1, got {limit}")
    options = LoadOptions(device=device, dtype=dtype, device_map=device_map)
    for index, spec in enumerate(specs):
        system = spec.load(options)
        for spoken in sets:
            check_scoring(system, spoken, prompt_style=style)  # before anything is written
        if index == 0:
            record_run(out, systems=[spec.name for spec in specs], sets=names,
                       config={"systems": systems, "data": [str(f) for f in folders], "limit": limit,
                               "device": device, "prompts": style, "calibration": calibration})
        for spoken, name in zip(sets, names):
            with tqdm(total=min(limit or len(spoken), len(spoken)), desc=f"{spec.name} / {name}", unit="item",
                      disable=None, file=sys.stderr) as bar:
                def update(done: int, total: int, bar=bar) -> None:
                    bar.total = total
                    bar.n = done
                    bar.refresh()

                run_system(system, spoken, out, system_name=spec.name, limit=limit, progress=update, spec=spec.spec,
                           prompt_style=style, calibration=calibration)
        del system
    system_order = [spec.name for spec in specs]
    rows = sorted((row for row in run_summary(out) if row["system"] in system_order and row["set"] in names),
                  key=lambda row: (system_order.index(row["system"]), names.index(row["set"])))
    label = "calibrated (batch)" if calibration == "batch" else "uncalibrated"
    typer.echo(f"{'system':24s} {'set':28s} {'items':>6s} {'accuracy':>9s}  ({style} prompts, {label})")
    for row in rows:
        extra = f"  WER {row['wer']:.3f}" if row["wer"] is not None else ""
        extra += f"  unparsed {row['unparsed']}" if row["unparsed"] else ""
        typer.echo(f"{row['system']:24s} {row['set']:28s} {row['items']:6d} {row['accuracy']:9.3f}{extra}")
    typer.echo(f"predictions in {out}; next: interp stats {out}")


@app.command("stats")
def stats_command(
    run: Path = typer.Argument(..., metavar="RUN", help="A run folder written by interp behave."),
    out: Optional[Path] = typer.Option(None, "--out", help="Results file (default RUN/stats.json); the figures "
                                       "are written beside it as standalone HTML."),
    n_boot: int = typer.Option(1000, help="Bootstrap resamples."),
    level: float = typer.Option(0.95, help="Confidence level of the intervals."),
    seed: int = typer.Option(0, help="Seed of the bootstrap resamples."),
    figures: bool = typer.Option(True, help="Write kappa_heatmap.html, error_overlap.html, accuracy_vs_snr.html."),
) -> None:
    """Accuracy with CIs, kappa matrix, error overlap, McNemar + Benjamini-Hochberg, accuracy vs SNR."""
    from interp.behavior import run_statistics

    stats = run_statistics(run, n_boot=n_boot, level=level, seed=seed)
    out = out or run / "stats.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out)
    for skipped in stats["skipped"]:
        typer.echo(f"skipped unfinished {skipped} (rerun interp behave to finish it)", err=True)
    pct = f"{level:.0%}"
    for name, entry in stats["sets"].items():
        kind = "open answers" if entry["open"] else f"K={entry['n_choices']}"
        typer.echo(f"{name} ({entry['task']}, {entry['n_items']} items, {kind})")
        for system, estimate in entry["accuracy"].items():
            wer = entry.get("wer", {}).get(system)
            typer.echo(f"  acc {system:24s} {estimate['value']:.3f} [{estimate['low']:.3f}, {estimate['high']:.3f}]"
                       + (f"  WER {wer:.3f}" if wer is not None else ""))
        kappas = {(k["a"], k["b"]): k for k in entry["kappa"]}
        overlaps = {(o["a"], o["b"]): o for o in entry["error_overlap"]}
        for test in entry["mcnemar"]:
            key = (test["a"], test["b"])
            line = f"  {test['a'] + ' / ' + test['b']:44s}"
            if key in kappas:
                line += f" κ {kappas[key]['value']:.3f} [{kappas[key]['low']:.3f}, {kappas[key]['high']:.3f}]"
            line += f"  McNemar p {test['p_value']:.3g} q {test['q_value']:.3g}"
            if key in overlaps and overlaps[key]["value"] is not None:
                line += f"  overlap {overlaps[key]['value']:.2f} (chance {overlaps[key]['chance']:.2f})"
            typer.echo(line)
    for group, table in stats["snr"].items():
        typer.echo(f"accuracy vs SNR: {group} ({', '.join(table['sets'])})")
        for row in table["rows"]:
            level_name = "clean" if row["snr_db"] is None else f"{row['snr_db']:g} dB"
            typer.echo(f"  {level_name:>8s} {row['system']:24s} {row['accuracy']:.3f} [{row['low']:.3f}, "
                       f"{row['high']:.3f}] n={row['n']}")
    typer.echo(f"wrote {out} ({pct} intervals, {n_boot} resamples, seed {seed})")
    if figures:
        from interp.report import accuracy_vs_snr, error_overlap_bars, kappa_heatmap, write_figure

        for figure, filename in ((kappa_heatmap(stats), "kappa_heatmap.html"),
                                 (error_overlap_bars(stats), "error_overlap.html"),
                                 (accuracy_vs_snr(stats), "accuracy_vs_snr.html")):
            typer.echo(f"wrote {write_figure(figure, out.parent / filename)}")


@app.command("demo")
def demo_command(
    out: Path = typer.Option(Path("demo"), "--out", help="The study folder (created; a rerun reuses finished "
                             "stages)."),
    stages: str = typer.Option("all", help="Comma-separated stages to run (default all): "
                               "sets, behaviour, caches, probes, lens, erasure, stats, report."),
    suite_items: int = typer.Option(24, help="Items per built-in suite (sentiment, topic, pitch, rate)."),
    benchmark_items: int = typer.Option(80, help="Items of the SST-2 and AG News subsets (spoken by TTS); 200 "
                                        "with --suite-items 40 took 35 min on 2 cores instead of 20."),
    threads: int = typer.Option(2, help="Torch threads."),
    seed: int = typer.Option(0, help="Seed of the sets, voices, noise, splits and bootstraps."),
    prompts: Optional[str] = typer.Option(None, "--prompts", metavar="STYLE", help="chat or few-shot (default: "
                                          "the demo plan's choice, see README)."),
    calibrate: str = typer.Option("none", "--calibrate", metavar="none|batch",
                                  help="Calibration of the behaviour stage's forced choices."),
) -> None:
    """The whole study in miniature on CPU: mini-ultravox against mini-cascade (same SmolLM2) and the text
    oracle. Builds the spoken sets (built-in suites, SST-2 and AG News subsets, babble at 20/10/5/0 dB), lets
    every system answer, caches mini-ultravox's layers, probes them, reads them with the logit lens (and the
    implicit cascade), erases text / random / acoustic concepts with LEACE, computes the statistics and writes
    OUT/report.html (self-contained, opens offline). Per-stage and total times are printed at the end."""
    import contextlib

    import torch
    from tqdm import tqdm

    from interp.study import STAGES, demo_plan, run_study
    from interp.task_prompts import check_calibration, check_prompt_style

    torch.set_num_threads(threads)
    plan = demo_plan()
    plan.prompt_style = check_prompt_style(prompts or plan.prompt_style)
    plan.calibration = check_calibration(calibrate)
    plan.suites = {task: suite_items for task in plan.suites}
    plan.benchmarks = {name: benchmark_items for name in plan.benchmarks}
    plan.seed = seed
    chosen = list(STAGES) if stages.strip() in ("", "all") else [s.strip() for s in stages.split(",") if s.strip()]
    for name in ("interp.study", "interp.erasure_sweep"):
        logging.getLogger(name).setLevel(logging.INFO)

    @contextlib.contextmanager
    def bar(description: str, total: int | None):
        with tqdm(total=total, desc=description, unit="item", disable=None, file=sys.stderr, leave=False) as shown:
            yield shown.update

    def finished(result) -> None:
        how = "reused" if result.skipped else "done"
        typer.echo(f"stage {result.stage:10s} {how:6s} {result.seconds:8.1f} s", err=True)

    results = run_study(plan, out, stages=chosen, progress=bar, command="interp demo", on_stage=finished)
    typer.echo(f"{'stage':12s} {'seconds':>9s}")
    for result in results:
        typer.echo(f"{result.stage:12s} {result.seconds:9.1f}" + ("  (reused)" if result.skipped else ""))
    typer.echo(f"{'this run':12s} {sum(r.seconds for r in results if not r.skipped):9.1f}")
    if any(r.skipped for r in results):
        typer.echo(f"{'as made':12s} {sum(r.seconds for r in results):9.1f}  (the reused stages' own seconds included)")
    if (out / "report.html").is_file():
        typer.echo(f"report: {out / 'report.html'}")


@app.command("serve")
def serve_command(
    model: str = typer.Option(..., help="A speech LLM or a cascade. " + _MODEL_HELP),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (127.0.0.1: this machine only)."),
    port: int = typer.Option(8000, help="Port (0 picks a free one; the line printed at start names it)."),
    name: Optional[str] = typer.Option(None, help="Model name the API reports and expects (default: --model)."),
    api_key_env: Optional[str] = typer.Option(None, help="Require 'Authorization: Bearer <key>' with the key "
                                              "read from this environment variable."),
    device: str = _DEVICE,
    dtype: str = _DTYPE,
    device_map: Optional[str] = _DEVICE_MAP,
) -> None:
    """Serve a model behind an OpenAI-compatible API: POST /v1/chat/completions, GET /v1/models."""
    import os

    from interp.serve import make_server

    key = None
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise InterpError(f"--api-key-env {api_key_env}: the variable is not set")
    system = _load(model, device, dtype, device_map)
    served = name or (model if ":" not in model else getattr(system, "name", model))
    server = make_server(system, host, port, model_name=served, api_key=key)
    bound_host, bound_port = server.server_address[:2]
    typer.echo(f"serving {served} at http://{bound_host}:{bound_port}/v1 (POST /chat/completions, GET /models); "
               "Ctrl-C stops")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        typer.echo("stopped", err=True)
    finally:
        server.server_close()


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
