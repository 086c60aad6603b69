"""What the TTS engines take and give: their settings (as records that survive JSON), the utterance, and the
words of a text that both engines time."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Literal, Protocol

import numpy as np

from interp.data.audio import SAMPLE_RATE
from interp.data.manifest import Speech, Word

__all__ = ["EngineName", "ENGINES", "EspeakSettings", "PiperSettings", "Utterance", "TTSEngine", "vary_settings",
           "settings_to_dict", "settings_from_dict", "text_tokens"]

EngineName = Literal["piper", "espeak"]
ENGINES: tuple[EngineName, ...] = ("piper", "espeak")
_TOKEN = re.compile(r"\S+")
_EDGE_PUNCTUATION = "\"'“”‘’.,;:!?()[]{}-–—…*"


@dataclass(frozen=True)
class EspeakSettings:
    """espeak-ng voice (optionally with a variant, e.g. "en-us+f3"), rate in words/min, pitch and range 0–100."""

    voice: str = "en-us"
    rate_wpm: int = 175
    pitch: int = 50
    pitch_range: int = 50


@dataclass(frozen=True)
class PiperSettings:
    """Piper's VITS scales: length_scale > 1 is slower; noise_scale and noise_w vary timbre and rhythm."""

    length_scale: float = 1.0
    noise_scale: float = 0.667
    noise_w: float = 0.8
    seed: int = 0


@dataclass(frozen=True)
class Utterance:
    """Speech audio: (samples,) float32 at 16 kHz, word timings (None where unknown), and how it was made."""

    samples: np.ndarray
    words: tuple[Word, ...] | None
    speech: Speech

    @property
    def duration(self) -> float:
        return self.samples.size / SAMPLE_RATE


class TTSEngine(Protocol):
    """A loaded engine: speaks a text with its own kind of settings."""

    name: EngineName

    def speak(self, text: str, settings: EspeakSettings | PiperSettings) -> Utterance: ...


def vary_settings(engine: EngineName, rng: np.random.Generator) -> EspeakSettings | PiperSettings:
    """Random but natural settings, so that acoustics are not constant across a set's items."""
    if engine == "piper":
        return PiperSettings(
            length_scale=round(float(rng.uniform(0.85, 1.2)), 3),
            noise_scale=round(float(rng.uniform(0.4, 0.8)), 3),
            noise_w=round(float(rng.uniform(0.5, 1.0)), 3),
            seed=int(rng.integers(2**31)),
        )
    variant = str(rng.choice(["m1", "m2", "m3", "m4", "m7", "f1", "f2", "f3", "f4"]))
    return EspeakSettings(
        voice=f"{rng.choice(['en-us', 'en', 'en-gb-x-rp'])}+{variant}",
        rate_wpm=int(rng.integers(140, 200)),
        pitch=int(rng.integers(35, 65)),
        pitch_range=int(rng.integers(30, 70)),
    )


def settings_to_dict(settings: EspeakSettings | PiperSettings) -> dict:
    """JSON-ready settings that name their own type, so a recorded utterance can be spoken again."""
    return {"type": type(settings).__name__, **asdict(settings)}


def settings_from_dict(data: dict) -> EspeakSettings | PiperSettings:
    """The settings `settings_to_dict` recorded."""
    fields = {k: v for k, v in data.items() if k != "type"}
    return PiperSettings(**fields) if data["type"] == "PiperSettings" else EspeakSettings(**fields)


def text_tokens(text: str) -> list[tuple[str, int, int]]:
    """Whitespace tokens as (word without edge punctuation, start char, end char); punctuation-only tokens dropped."""
    out = []
    for match in _TOKEN.finditer(text):
        word = match.group().strip(_EDGE_PUNCTUATION)
        if word:
            out.append((word, match.start(), match.end()))
    return out
