"""Babble noise at a set SNR, as in the study's robustness analysis.

SNR is measured over the whole utterance: SNR_dB = 10·log10(P_speech / P_noise) with P the mean
square. The noise is scaled to hit the target exactly; if speech + noise would clip, both are scaled
by the same `gain` (< 1), which leaves the SNR unchanged and is recorded in the item.

Noise sources: the real multi-talker babble recording that ships with the package (a random
excerpt per item), a sum of other utterances of the same set (`mix`, never the item's own text), or
a wav given by the user.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from interp.data.audio import SAMPLE_RATE, Decibels, read_audio
from interp.data.manifest import Item, Noise, SpokenSet
from interp.data.writer import SetWriter
from interp.errors import DataError
from interp.resources import resource_path

__all__ = ["BabbleSource", "mix_at_snr", "measure_snr", "noisy_set_name", "write_noisy_sets"]

BabbleSource = Literal["recording", "mix", "file"]
_MIX_TALKERS = 6
_PEAK = 0.99


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: Decibels) -> tuple[np.ndarray, float]:
    """Mix (samples,) speech with same-length noise at `snr_db`; returns (mixture, gain applied to both)."""
    p_speech = float(np.mean(speech.astype(np.float64) ** 2))
    p_noise = float(np.mean(noise.astype(np.float64) ** 2))
    if p_speech == 0 or p_noise == 0:
        raise DataError("cannot set an SNR with silent speech or silent noise")
    scaled = noise.astype(np.float64) * np.sqrt(p_speech / (p_noise * 10 ** (snr_db / 10)))
    mixture = speech.astype(np.float64) + scaled
    gain = min(1.0, _PEAK / float(np.max(np.abs(mixture))))
    return (mixture * gain).astype(np.float32), gain


def measure_snr(clean: np.ndarray, mixture: np.ndarray, gain: float) -> Decibels:
    """SNR of a written mixture: noise = mixture − gain·clean."""
    signal = gain * clean.astype(np.float64)
    noise = mixture.astype(np.float64) - signal
    return 10 * float(np.log10(np.mean(signal**2) / np.mean(noise**2)))


def _excerpt(recording: np.ndarray, length: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A random `length`-sample stretch of a recording, looped if the recording is shorter."""
    if recording.size >= length:
        offset = int(rng.integers(0, recording.size - length + 1))
        return recording[offset:offset + length], offset
    offset = int(rng.integers(0, recording.size))
    return np.resize(np.roll(recording, -offset), length), offset


def _babble_mix(spoken: SpokenSet, item: Item, length: int,
                rng: np.random.Generator) -> tuple[np.ndarray, tuple[str, ...]]:
    """Sum of _MIX_TALKERS other utterances (different transcripts), each at equal power and a random offset."""
    others = [o for o in spoken.items if o.transcript != item.transcript]
    if len(others) < _MIX_TALKERS:
        raise DataError(f"--babble mix needs at least {_MIX_TALKERS} other utterances in the set; it has {len(others)}")
    chosen = [others[i] for i in rng.choice(len(others), size=_MIX_TALKERS, replace=False)]
    total = np.zeros(length)
    for other in chosen:
        talker, _ = _excerpt(spoken.load_audio(other), length, rng)
        total += talker / (np.sqrt(np.mean(talker.astype(np.float64) ** 2)) + 1e-12)
    return total.astype(np.float32), tuple(o.id for o in chosen)


def noisy_set_name(snr_db: Decibels) -> str:
    """Folder name of one SNR's set inside the noise output folder, e.g. snr10, snr-5."""
    return f"snr{snr_db:g}"


def write_noisy_sets(spoken: SpokenSet, out: Path, *, snrs: list[Decibels], babble: BabbleSource,
                     noise_file: Path | None, seed: int, provenance: dict[str, Any],
                     overwrite: bool = False) -> Iterator[tuple[Decibels, str]]:
    """Write one set per SNR under `out` (out/snr20, …), yielding (snr, item id) as items are written.

    Each item keeps its noise excerpt across SNRs (seeded by seed and item id), so sets differ only in
    the noise level. New ids are `<id>.snr<snr>`; the clean id is kept in `speech.noise.parent_id`.
    """
    if not snrs:
        raise DataError("give at least one --snr")
    if (babble == "file") != (noise_file is not None):
        raise DataError("--noise-file goes with --babble file (and --babble file needs --noise-file)")
    targets = [out / noisy_set_name(snr) for snr in snrs]
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        raise DataError(f"{existing[0]} already exists; pass --overwrite to replace it or choose another --out")
    source_file = noise_file if noise_file is not None else resource_path("noise/babble.wav")
    recording = None if babble == "mix" else read_audio(source_file)[0]
    out.mkdir(parents=True, exist_ok=True)
    for snr, target in zip(snrs, targets):
        config = {"source": str(spoken.root), "snr_db": snr, "babble": babble, "seed": seed,
                  "noise_file": str(noise_file)}
        with SetWriter(target, config=config, overwrite=overwrite) as writer:
            for item in spoken.items:
                new_id = f"{item.id}.{noisy_set_name(snr)}"
                if not writer.has(new_id):
                    writer.add(*_noisy_item(spoken, item, new_id, snr, babble, recording, source_file, seed))
                yield snr, new_id
            writer.commit({**provenance, "config": {**provenance["config"], "snr_db": snr}})


def _noisy_item(spoken: SpokenSet, item: Item, new_id: str, snr: Decibels, babble: BabbleSource,
                recording: np.ndarray | None, source_file: Path, seed: int) -> tuple[Item, np.ndarray]:
    clean = spoken.load_audio(item)
    rng = np.random.default_rng([seed, zlib.crc32(item.id.encode())])
    offset, mixed_ids = None, ()
    if recording is None:
        noise, mixed_ids = _babble_mix(spoken, item, clean.size, rng)
    else:
        noise, start = _excerpt(recording, clean.size, rng)
        offset = round(start / SAMPLE_RATE, 4)
    mixture, gain = mix_at_snr(clean, noise, snr)
    kind = {"recording": "babble-recording", "mix": "babble-mix", "file": "file"}[babble]
    record = Noise(kind=kind, snr_db=snr, seed=seed, parent_id=item.id, gain=gain,
                   file=None if babble == "mix" else source_file.name, offset=offset, mixed_ids=mixed_ids)
    noisy = replace(item, id=new_id, audio=f"audio/{new_id}.wav", speech=replace(item.speech, noise=record))
    return noisy, mixture
