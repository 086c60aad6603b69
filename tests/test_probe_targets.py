"""Probe targets: energy and pitch of synthetic signals with known values, and transcript normalisation."""

from __future__ import annotations

import numpy as np
import parselmouth
import pytest

from interp.errors import InterpError
from probes.targets import CHARSET, bag_of_characters, characters, encode_chars, energy_db, pitch_log_hz, pitch_track

SR = 16_000


def _tone(f0: float, seconds: float, amplitude: float = 0.3) -> np.ndarray:
    """Vowel-like harmonic tone: harmonics 1–10 of f0 with 1/h amplitudes."""
    t = np.arange(int(round(seconds * SR))) / SR
    wave = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 11))
    return amplitude * wave / np.max(np.abs(wave))


def _tone_silence_tone() -> np.ndarray:
    """150 Hz for 0.5 s, silence for 0.5 s, 220 Hz for 0.5 s."""
    return np.concatenate([_tone(150.0, 0.5), np.zeros(SR // 2), _tone(220.0, 0.5)])


def test_energy_of_a_sine_is_its_rms_in_db() -> None:
    """A sine of amplitude A over whole periods has RMS A/√2."""
    amplitude = 0.3
    wave = amplitude * np.sin(2 * np.pi * 200.0 * np.arange(SR) / SR)
    got = energy_db(wave, SR, np.array([0.0, 0.25, 0.5]), np.array([0.1, 0.35, 0.52]))
    np.testing.assert_allclose(got, 20 * np.log10(amplitude / np.sqrt(2)), atol=1e-3)


def test_energy_of_silence_is_the_floor_and_an_empty_span_is_nan() -> None:
    wave = np.concatenate([np.zeros(SR // 2), 0.5 * np.ones(SR // 2)])
    got = energy_db(wave, SR, np.array([0.0, 0.2, 0.3, 2.0, 0.6]), np.array([0.2, 0.2, 0.2, 3.0, 0.7]))
    assert got[0] == pytest.approx(-100.0)
    assert np.isnan(got[1]) and np.isnan(got[2]) and np.isnan(got[3])  # empty, reversed, past the end
    assert got[4] == pytest.approx(20 * np.log10(0.5))
    assert energy_db(np.zeros(800), SR, np.array([0.0]), np.array([0.05]), floor_db=-80.0)[0] == pytest.approx(-80.0)


def test_energy_span_edges_round_to_samples_and_clip_to_the_wave() -> None:
    """[0.04, 0.2) on a 0.1 s wave reads samples 640…1599 only."""
    wave = np.zeros(1600)
    wave[640:] = 0.1
    assert energy_db(wave, SR, np.array([0.04]), np.array([0.2]))[0] == pytest.approx(-20.0)


def test_pitch_recovers_the_f0_of_harmonic_tones_and_is_nan_over_silence() -> None:
    wave = _tone_silence_tone()
    starts, ends = np.array([0.1, 0.3, 0.6, 1.1, 1.3]), np.array([0.2, 0.4, 0.9, 1.2, 1.4])
    got = pitch_log_hz(wave, SR, starts, ends)
    np.testing.assert_allclose(np.exp(got[[0, 1]]), 150.0, rtol=0.01)
    np.testing.assert_allclose(np.exp(got[[3, 4]]), 220.0, rtol=0.01)
    np.testing.assert_allclose(got[[0, 1, 3, 4]], np.log([150, 150, 220, 220]), rtol=0.01)
    assert np.isnan(got[2])


def test_pitch_is_the_median_of_praat_voiced_frames_centred_in_the_span() -> None:
    """Recomputed here from parselmouth's own Pitch object, frame by frame, including spans that
    straddle a voicing boundary and spans holding no frame centre."""
    wave = _tone_silence_tone() + 0.01 * np.random.default_rng(0).standard_normal(3 * SR // 2)
    starts = np.arange(0.0, 1.5, 0.04)
    ends = starts + np.where(np.arange(starts.size) % 3 == 0, 0.005, 0.08)
    pitch = parselmouth.Sound(wave, SR).to_pitch(time_step=0.01, pitch_floor=75.0, pitch_ceiling=500.0)
    frames = list(zip(pitch.xs(), pitch.selected_array["frequency"]))
    expected = []
    for start, end in zip(starts, ends):
        voiced = sorted(f0 for t, f0 in frames if start <= t < end and f0 > 0)
        half = len(voiced) // 2
        if not voiced:
            expected.append(np.nan)
        elif len(voiced) % 2:
            expected.append(np.log(voiced[half]))
        else:
            expected.append(np.log((voiced[half - 1] + voiced[half]) / 2))
    got = pitch_log_hz(wave, SR, starts, ends)
    np.testing.assert_allclose(got, expected, rtol=1e-12, equal_nan=True)
    assert np.isfinite(got).sum() > 10 and np.isnan(got).sum() > 10


def test_voiced_share_counts_voiced_frames_in_the_span() -> None:
    track = pitch_track(_tone_silence_tone(), SR)
    share = track.voiced_share(np.array([0.1, 0.6, 0.1, 0.101]), np.array([0.4, 0.9, 0.1, 0.102]))
    assert share[0] == 1.0 and share[1] == 0.0
    assert np.isnan(share[2]) and np.isnan(share[3])  # empty span; no frame centre inside


def test_pitch_of_a_wave_shorter_than_praat_window_is_unvoiced() -> None:
    """Praat needs 3 periods of the floor (40 ms at 75 Hz); a shorter item has no voiced row."""
    assert np.isnan(pitch_log_hz(_tone(150.0, 0.03), SR, np.array([0.0]), np.array([0.03]))).all()
    with pytest.raises(InterpError):
        pitch_track(_tone(150.0, 0.5), SR, floor_hz=300.0, ceiling_hz=200.0)


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Hello, World!", "hello world"),
        ("  many   spaces\tand\nlines  ", "many spaces and lines"),
        ("I have 3 cats.", "i have cats"),
        ("Room 101", "room"),
        ("Don't stop", "don't stop"),
        ("Don’t rock 'n' roll", "don't rock 'n' roll"),
        ("well-known — twenty–one", "well known twenty one"),
        ("Café naïve", "cafe naive"),
        ("$%&*() 42", ""),
        ("MiXeD CaSe", "mixed case"),
    ],
)
def test_characters_normalisation(raw: str, normalised: str) -> None:
    assert characters(raw) == normalised
    assert characters(normalised) == normalised  # idempotent


def test_charset_encoding_and_bag_of_characters_agree() -> None:
    assert CHARSET[0] == "<blank>" and CHARSET[1:3] == (" ", "'")
    assert "".join(CHARSET[3:]) == "abcdefghijklmnopqrstuvwxyz"
    codes = encode_chars("Ab, b's")
    assert codes.tolist() == [3, 4, 1, 4, 2, 21]
    assert "".join(CHARSET[c] for c in codes) == "ab b's"
    bag = bag_of_characters("Ab, b's")
    assert bag.shape == (len(CHARSET) - 1,)
    assert bag.sum() == codes.size and bag[CHARSET.index("b") - 1] == 2 and bag[0] == 1
    assert encode_chars("123").size == 0 and not bag_of_characters("!?").any()
