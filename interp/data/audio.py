"""Audio files of spoken task sets: 16 kHz mono, read and written the same way everywhere.

Every engine and recording is brought to `SAMPLE_RATE` by one polyphase resampler, so the same input
always gives the same samples.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from interp.errors import AudioError

__all__ = ["SAMPLE_RATE", "Seconds", "Decibels", "resample", "read_audio", "write_wav", "check_wav"]

SAMPLE_RATE = 16_000
Seconds = float
Decibels = float


def resample(samples: np.ndarray, *, from_rate: int, to_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling (scipy's Kaiser window), deterministic.

    samples: (samples,) float. Returns (samples',) float32.
    """
    if from_rate == to_rate:
        return samples.astype(np.float32, copy=False)
    g = math.gcd(from_rate, to_rate)
    return resample_poly(samples.astype(np.float64), to_rate // g, from_rate // g).astype(np.float32)


def read_audio(path: Path, *, to_rate: int | None = SAMPLE_RATE) -> tuple[np.ndarray, int]:
    """Read any file libsndfile knows (wav, flac, ogg), mix to mono and resample to `to_rate`.

    Returns ((samples,) float32 in [-1, 1], sample rate). `to_rate=None` keeps the file's rate.
    """
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}")
    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as error:
        raise AudioError(f"cannot read audio {path}: {error} (wav, flac and ogg are supported)") from error
    mono = samples.mean(axis=1)
    if to_rate is None:
        return mono, rate
    return resample(mono, from_rate=rate, to_rate=to_rate), to_rate


def write_wav(path: Path, samples: np.ndarray, *, sample_rate: int = SAMPLE_RATE) -> None:
    """Write 16-bit PCM wav atomically (temporary name, then rename).

    Samples outside [-1, 1] would be clipped by the PCM conversion, so they are refused instead.
    """
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    if not np.isfinite(peak) or peak > 1.0:
        raise AudioError(f"refusing to write {path.name}: peak {peak:.3f} is outside [-1, 1] (would clip)")
    tmp = path.with_name(path.name + ".tmp")
    sf.write(str(tmp), samples, sample_rate, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)


def check_wav(path: Path, *, expected_rate: int = SAMPLE_RATE) -> Seconds:
    """Check that a set's audio file is mono at `expected_rate`; return its duration in seconds."""
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as error:
        raise AudioError(f"cannot read audio {path}: {error}") from error
    if info.samplerate != expected_rate or info.channels != 1:
        raise AudioError(
            f"{path.name} is {info.samplerate} Hz with {info.channels} channel(s); expected {expected_rate} Hz mono "
            f"(resample it, e.g. `sox in.wav -r {expected_rate} -c 1 out.wav`)"
        )
    return info.frames / info.samplerate
