"""Babble noise: the SNR written to disk is the SNR asked for, for every item and every source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from interp.data.manifest import SpokenSet
from interp.data.noise import measure_snr, mix_at_snr
from tests.helpers import run_cli

SNRS = ["20", "10", "5", "0"]


def _achieved(clean: SpokenSet, noisy: SpokenSet) -> list[float]:
    by_id = {item.id: item for item in clean.items}
    snrs = []
    for item in noisy.items:
        noise = item.speech.noise
        snrs.append(measure_snr(clean.load_audio(by_id[noise.parent_id]), noisy.load_audio(item), noise.gain))
    return snrs


@pytest.mark.parametrize("babble", ["recording", "mix"])
def test_achieved_snr_within_0_1_db_for_every_item(sentiment_set: Path, tmp_path: Path, babble: str) -> None:
    """Measured from the written wavs (16-bit), each item's SNR is within 0.1 dB of the target."""
    result = run_cli("data", "noise", sentiment_set, "--snr", *SNRS, "--babble", babble, "--out", tmp_path / "n")
    assert result.returncode == 0, result.stderr
    clean = SpokenSet.open(sentiment_set)
    for target in SNRS:
        noisy = SpokenSet.open(tmp_path / "n" / f"snr{target}")
        assert len(noisy) == len(clean)
        achieved = np.array(_achieved(clean, noisy))
        assert np.all(np.abs(achieved - float(target)) < 0.1), (target, achieved)
        assert all(item.speech.noise.kind == f"babble-{babble}" for item in noisy.items)


def test_noise_excerpt_is_kept_across_snrs_and_differs_across_items(sentiment_set: Path, tmp_path: Path) -> None:
    """Sets differ only in level: an item's babble excerpt starts at the same offset at every SNR."""
    assert run_cli("data", "noise", sentiment_set, "--snr", "10", "0", "--out", tmp_path / "n").returncode == 0
    offsets = {snr: [i.speech.noise.offset for i in SpokenSet.open(tmp_path / "n" / f"snr{snr}").items]
               for snr in ("10", "0")}
    assert offsets["10"] == offsets["0"]
    assert len(set(offsets["10"])) == len(offsets["10"])


def test_babble_mix_never_uses_the_item_itself(sentiment_set: Path, tmp_path: Path) -> None:
    """The mixed talkers are six other utterances with other transcripts."""
    assert run_cli("data", "noise", sentiment_set, "--snr", "5", "--babble", "mix",
                   "--out", tmp_path / "n").returncode == 0
    clean = {item.id: item for item in SpokenSet.open(sentiment_set).items}
    for item in SpokenSet.open(tmp_path / "n" / "snr5").items:
        mixed = item.speech.noise.mixed_ids
        assert len(mixed) == 6 and item.speech.noise.parent_id not in mixed
        assert all(clean[m].transcript != item.transcript for m in mixed)


def test_user_noise_file_is_resampled_and_mixed(sentiment_set: Path, tmp_path: Path) -> None:
    """A 44.1 kHz stereo noise file works with --babble file and hits the SNR."""
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "hum.wav", 0.1 * rng.standard_normal((44100 * 2, 2)), 44100)
    result = run_cli("data", "noise", sentiment_set, "--snr", "3", "--babble", "file",
                     "--noise-file", tmp_path / "hum.wav", "--out", tmp_path / "n")
    assert result.returncode == 0, result.stderr
    noisy = SpokenSet.open(tmp_path / "n" / "snr3")
    assert noisy.items[0].speech.noise.file == "hum.wav"
    assert np.all(np.abs(np.array(_achieved(SpokenSet.open(sentiment_set), noisy)) - 3) < 0.1)


def test_mixing_that_would_clip_scales_both_and_keeps_the_snr() -> None:
    """Loud speech at -5 dB SNR would clip: the gain drops below 1 and the SNR is unchanged."""
    rng = np.random.default_rng(1)
    speech = 0.9 * np.sin(np.linspace(0, 2000, 16000)).astype(np.float32)
    mixture, gain = mix_at_snr(speech, rng.standard_normal(16000).astype(np.float32), -5.0)
    assert gain < 1 and np.max(np.abs(mixture)) <= 0.99 + 1e-6
    assert measure_snr(speech, mixture, gain) == pytest.approx(-5.0, abs=1e-4)


def test_noise_needs_numbers_and_a_matching_file_option(sentiment_set: Path, tmp_path: Path) -> None:
    """Bad options are one line each and write nothing."""
    bad = run_cli("data", "noise", sentiment_set, "--snr", "10", "loud", "--out", tmp_path / "n")
    assert bad.returncode == 2 and "--snr takes numbers" in bad.stderr
    no_file = run_cli("data", "noise", sentiment_set, "--snr", "10", "--babble", "file", "--out", tmp_path / "n")
    assert no_file.returncode == 2 and "--noise-file" in no_file.stderr and no_file.stderr.count("\n") == 1
    assert not (tmp_path / "n" / "snr10").exists()
