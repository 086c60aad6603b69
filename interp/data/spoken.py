"""Turn `TextItem`s into a spoken set: speak each (or take its natural recording), write it resumably.

Voices are drawn per item from a generator seeded by (seed, item id), so an item sounds the same
whatever else is in the set, and a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from interp.data.audio import SAMPLE_RATE, read_audio
from interp.data.manifest import AUDIO_DIR, Item, Speech
from interp.data.text_items import TextItem
from interp.data.tts import EngineName, Utterance, open_engine, vary_settings
from interp.data.writer import SetWriter
from interp.errors import DataError

__all__ = ["write_spoken_set"]

_log = logging.getLogger(__name__)
_PEAK = 0.95


def _item_rng(seed: int, item_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(item_id.encode())])


def _voice(text_item: TextItem, *, engine: EngineName, seed: int, use_recording: bool) -> Utterance:
    """The item's audio (16 kHz float32, peak-limited), how it was made, and its word timings
    (None for natural audio)."""
    if use_recording and text_item.recording is not None:
        samples, _ = read_audio(text_item.recording)
        return Utterance(samples=_limit_peak(samples), words=None,
                         speech=Speech(kind="natural", recording=text_item.recording.name))
    if text_item.voice is not None:
        engine = text_item.engine or engine
        settings = text_item.voice
    else:
        settings = vary_settings(engine, _item_rng(seed, text_item.id))
    utterance = open_engine(engine).speak(text_item.transcript, settings)
    if utterance.samples.size == 0:
        raise DataError(f"item {text_item.id}: {engine} produced no audio for {text_item.transcript!r}")
    return replace(utterance, samples=_limit_peak(utterance.samples))


def _limit_peak(samples: np.ndarray) -> np.ndarray:
    """Scale down audio whose peak exceeds _PEAK: espeak at fast rates and resampled full-scale
    recordings overshoot 1.0, which 16-bit PCM would clip. Quieter audio keeps its level."""
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    return samples * (_PEAK / peak) if peak > _PEAK else samples


def write_spoken_set(items: list[TextItem], out: Path, *, engine: EngineName, seed: int,
                     use_recordings: bool, provenance: dict[str, Any], overwrite: bool = False) -> Iterator[str]:
    """Speak `items` into the set `out`, yielding each item id once it is on disk.

    The set appears at `out` only after the last item (see SetWriter); interrupting leaves a hidden
    partial folder that the same command resumes. use_recordings: take natural audio where an item has
    a recording (MELD, MUStARD with --audio-dir; LibriSpeech), else speak it.
    """
    if not items:
        raise DataError("no items to speak")
    fallback = sum(1 for i in items if i.recording is None) if use_recordings else 0
    if fallback:
        _log.warning("%d of %d items have no natural recording; %s speaks them (see each item's speech)",
                     fallback, len(items), engine)
    config = {"command": provenance.get("command"), "items": [i.id for i in items], "engine": engine, "seed": seed,
              "use_recordings": use_recordings}
    with SetWriter(out, config=config, overwrite=overwrite) as writer:
        for text_item in items:
            if not writer.has(text_item.id):
                voiced = _voice(text_item, engine=engine, seed=seed, use_recording=use_recordings)
                writer.add(Item(
                    id=text_item.id, task=text_item.task, audio=f"{AUDIO_DIR}/{text_item.id}.wav",
                    sample_rate=SAMPLE_RATE, duration=voiced.duration, transcript=text_item.transcript,
                    choices=text_item.choices, label=text_item.label, source=text_item.source, speech=voiced.speech,
                    words=voiced.words), voiced.samples)
            yield text_item.id
        writer.commit(provenance)
