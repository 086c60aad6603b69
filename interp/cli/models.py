"""`interp models list`, and the commands that use one model directly: `interp transcribe` and `interp ask`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from interp.cli.options import (
    DEVICE,
    DEVICE_MAP,
    DTYPE,
    MODEL_HELP,
    load_system,
    progress,
)

__all__ = ["app", "transcribe_set", "ask"]

app = typer.Typer(help="The models: speech LLMs, cascades, ASR, text LLMs, tiny test instances.",
                  no_args_is_help=True, rich_markup_mode=None)


@app.command("list")
def models_list() -> None:
    """Name, kind, parameters, where the weights come from, licence, and whether they are installed."""
    from interp.models.mini import MODEL_CARDS, is_present

    typer.echo(f"{'name':20s} {'kind':10s} {'parameters':22s} {'present':8s} {'licence':36s} weights")
    for card in MODEL_CARDS.values():
        present = "yes" if is_present(card) else "no"
        typer.echo(f"{card.name:20s} {card.kind:10s} {card.parameters:22s} {present:8s} "
                   f"{card.licence:36s} {card.weights}")


def transcribe_set(
    spoken_set: Path = typer.Argument(..., metavar="SET", help="A spoken set folder."),
    model: str = typer.Option("mini-whisper", help="An ASR model or a cascade (its ASR is used). " + MODEL_HELP),
    limit: Optional[int] = typer.Option(None, help="Transcribe only the first N items."),
    batch_size: int = typer.Option(8, help="Clips per forward pass."),
    device: str = DEVICE,
    dtype: str = DTYPE,
    device_map: Optional[str] = DEVICE_MAP,
) -> None:
    """Transcribe a set and print the WER against its transcripts."""
    from interp.data.manifest import SpokenSet
    from interp.errors import InterpError
    from interp.text_metrics import word_error_rate

    spoken = SpokenSet.open(spoken_set)
    items = spoken.items[:limit] if limit else spoken.items
    system = load_system(model, device, dtype, device_map)
    asr = getattr(system, "asr", system)
    if not hasattr(asr, "transcribe"):
        raise InterpError(f"{model} is not an ASR model or a cascade; try mini-whisper")
    hypotheses = []
    batches = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    for batch in progress(batches, total=len(batches), desc="transcribing"):
        hypotheses += asr.transcribe([spoken.load_audio(item) for item in batch])
    for item, hypothesis in zip(items, hypotheses):
        typer.echo(f"{item.id}\t{hypothesis}")
    wer = word_error_rate([item.transcript for item in items], hypotheses)
    typer.echo(f"WER {wer:.4f} over {len(items)} items ({model})")


def ask(
    model: str = typer.Option(..., help="A speech LLM or a cascade. " + MODEL_HELP),
    audio: Path = typer.Option(..., help="A 16 kHz mono wav (other rates are refused)."),
    prompt: str = typer.Option("<|audio|>", help="The prompt; <|audio|> marks where the audio goes."),
    max_new_tokens: int = typer.Option(48, help="Length limit of the answer."),
    device: str = DEVICE,
    dtype: str = DTYPE,
    device_map: Optional[str] = DEVICE_MAP,
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
    system = load_system(model, device, dtype, device_map)
    if not isinstance(system, (SpeechLM, Cascade)):
        raise InterpError(f"{model} does not hear audio and answer; choose a speech LLM or a cascade")
    typer.echo(system.generate(samples, prompt, max_new_tokens=max_new_tokens))
