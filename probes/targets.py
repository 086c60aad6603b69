"""Probe targets: energy and pitch of an audio row's time span, and character targets of a transcript.

Acoustic targets are computed from the item's waveform over each cached audio row's [t_start, t_end)
span, so that a probe asks whether the row's hidden state still carries the acoustics of its own stretch
of audio. Character targets (CTC labels, bag-of-characters counts) come from one normalisation of the
transcript, so that the CTC alphabet and the counts always agree.
"""

from __future__ import annotations

import string
import unicodedata
from dataclasses import dataclass

import numpy as np
import parselmouth

from interp.errors import InterpError

__all__ = [
    "BLANK",
    "CHARSET",
    "PitchTrack",
    "bag_of_characters",
    "characters",
    "encode_chars",
    "energy_db",
    "pitch_log_hz",
    "pitch_track",
]

BLANK = 0
CHARSET: tuple[str, ...] = ("<blank>", " ", "'", *string.ascii_lowercase)
"""CTC alphabet: index 0 is the blank, then space, apostrophe and a–z (indices 1–28)."""

_INDEX = {char: index for index, char in enumerate(CHARSET) if index != BLANK}
_DASHES = "-\u2010\u2011\u2012\u2013\u2014"  # spoken as a word break, so they become spaces
_APOSTROPHES = "\u2019\u02bc"  # typographic apostrophes, as in “don’t”


def _check_wave(wave: np.ndarray, sr: int) -> np.ndarray:
    if wave.ndim != 1:
        raise InterpError(f"expected a mono waveform of shape (samples,), got shape {wave.shape}")
    if sr <= 0:
        raise InterpError(f"sample rate must be positive, got {sr}")
    return wave.astype(np.float64, copy=False)


def _check_spans(t_start: np.ndarray, t_end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    start = np.asarray(t_start, dtype=np.float64)
    end = np.asarray(t_end, dtype=np.float64)
    if start.ndim != 1 or start.shape != end.shape:
        raise InterpError(f"t_start and t_end must be 1-D of one length, got shapes {start.shape} and {end.shape}")
    return start, end


def energy_db(
    wave: np.ndarray, sr: int, t_start: np.ndarray, t_end: np.ndarray, floor_db: float = -100.0
) -> np.ndarray:
    """RMS level in dB (20·log10 rms, re full scale 1.0) of `wave` over each [t_start, t_end) span.

    Span edges (seconds) become sample indices by rounding and are clipped to the wave; a span with no
    sample left gives NaN. The RMS is floored at 10**(floor_db/20), so digital silence is `floor_db`
    rather than -inf. Returns (spans,) float64.
    """
    samples = _check_wave(wave, sr)
    start, end = _check_spans(t_start, t_end)
    first = np.clip(np.rint(start * sr).astype(np.int64), 0, samples.size)
    stop = np.clip(np.rint(end * sr).astype(np.int64), 0, samples.size)
    floor = 10.0 ** (floor_db / 20.0)
    out = np.full(start.shape, np.nan)
    for row, (i0, i1) in enumerate(zip(first, stop)):
        if i1 > i0:
            segment = samples[i0:i1]
            rms = np.sqrt(np.dot(segment, segment) / segment.size)
            out[row] = 20.0 * np.log10(max(rms, floor))
    return out


@dataclass(frozen=True)
class PitchTrack:
    """Praat F0 of a whole item: frame centre times (s) and F0 in Hz, 0 where the frame is unvoiced.

    Pitch is tracked once over the whole wave (Praat needs context longer than one row's span) and each
    span then reads the frames whose centre time t satisfies t_start <= t < t_end.
    """

    times: np.ndarray
    f0_hz: np.ndarray

    def _frames(self, t_start: np.ndarray, t_end: np.ndarray) -> np.ndarray:
        """(spans, frames) bool: frame centre inside the span."""
        start, end = _check_spans(t_start, t_end)
        return (self.times[None, :] >= start[:, None]) & (self.times[None, :] < end[:, None])

    def log_hz(self, t_start: np.ndarray, t_end: np.ndarray) -> np.ndarray:
        """log of the median F0 (Hz) of the voiced frames in each span; NaN where none is voiced.

        The median of the frames' F0 in Hz is taken first, then its natural log. Returns (spans,) float64.
        """
        voiced = self._frames(t_start, t_end) & (self.f0_hz > 0)[None, :]
        out = np.full(voiced.shape[0], np.nan)
        for row, mask in enumerate(voiced):
            if mask.any():
                out[row] = np.log(np.median(self.f0_hz[mask]))
        return out

    def voiced_share(self, t_start: np.ndarray, t_end: np.ndarray) -> np.ndarray:
        """Share of each span's pitch frames that are voiced; NaN for a span holding no frame centre.

        Reports how many rows a pitch probe keeps (only rows with a voiced frame get a target).
        """
        inside = self._frames(t_start, t_end)
        counts = inside.sum(axis=1)
        voiced = (inside & (self.f0_hz > 0)[None, :]).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, voiced / np.maximum(counts, 1), np.nan)


def pitch_track(
    wave: np.ndarray, sr: int, *, floor_hz: float = 75.0, ceiling_hz: float = 500.0, time_step: float = 0.01
) -> PitchTrack:
    """Praat's autocorrelation pitch (parselmouth `Sound.to_pitch`) of the whole wave.

    A wave shorter than Praat's analysis window (3 periods of `floor_hz`) has no frame, so every span
    reads as unvoiced instead of failing the whole item.
    """
    samples = _check_wave(wave, sr)
    if not 0 < floor_hz < ceiling_hz:
        raise InterpError(f"pitch floor must be positive and below the ceiling, got {floor_hz} and {ceiling_hz} Hz")
    if time_step <= 0:
        raise InterpError(f"pitch time step must be positive, got {time_step} s")
    if samples.size * floor_hz < 3 * sr:
        return PitchTrack(times=np.zeros(0), f0_hz=np.zeros(0))
    pitch = parselmouth.Sound(samples, sampling_frequency=sr).to_pitch(
        time_step=time_step, pitch_floor=floor_hz, pitch_ceiling=ceiling_hz
    )
    return PitchTrack(times=np.asarray(pitch.xs(), dtype=np.float64), f0_hz=pitch.selected_array["frequency"].copy())


def pitch_log_hz(
    wave: np.ndarray,
    sr: int,
    t_start: np.ndarray,
    t_end: np.ndarray,
    *,
    floor_hz: float = 75.0,
    ceiling_hz: float = 500.0,
    time_step: float = 0.01,
) -> np.ndarray:
    """log F0 per span: `pitch_track` of the whole wave, then `PitchTrack.log_hz` (NaN = no voiced frame)."""
    track = pitch_track(wave, sr, floor_hz=floor_hz, ceiling_hz=ceiling_hz, time_step=time_step)
    return track.log_hz(t_start, t_end)


def characters(text: str) -> str:
    """Normalise a transcript to the CTC alphabet: lower-case a–z, apostrophe and single spaces.

    Accents are stripped (é → e), typographic apostrophes become ', dashes and any whitespace become a
    space, every other character (digits, punctuation, symbols) is dropped; runs of spaces collapse to one
    and the ends are stripped.
    """
    decomposed = unicodedata.normalize("NFKD", text.lower())
    kept = []
    for char in decomposed:
        if char in _APOSTROPHES:
            char = "'"
        elif char in _DASHES or char.isspace():
            char = " "
        if char in _INDEX:
            kept.append(char)
    return " ".join("".join(kept).split())


def encode_chars(text: str) -> np.ndarray:
    """CTC label sequence of a transcript: (chars,) int64 indices into CHARSET, all >= 1 (no blank).

    The text is normalised by `characters` first.
    """
    return np.array([_INDEX[char] for char in characters(text)], dtype=np.int64)


def bag_of_characters(text: str) -> np.ndarray:
    """Counts of each non-blank CHARSET symbol in the normalised transcript: (len(CHARSET) - 1,) float64.

    Entry j counts CHARSET[j + 1].
    """
    return np.bincount(encode_chars(text) - 1, minlength=len(CHARSET) - 1).astype(np.float64)
