"""Spoken task sets: a folder with `manifest.jsonl` (one `Item` per line) and `audio/` (16 kHz mono wav).

One typed record class, `Item`, with its parts (`Source`, `Speech`, `Noise`, `Word`). Loading validates
every line and every audio header, so a bad set fails where it enters with the line that is wrong.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from interp.data.audio import SAMPLE_RATE, Seconds, check_wav, read_audio
from interp.errors import DataError

__all__ = ["Labelled", "Word", "Source", "Noise", "Speech", "Item", "SpokenSet", "MANIFEST", "AUDIO_DIR"]

MANIFEST = "manifest.jsonl"
AUDIO_DIR = "audio"
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_DURATION_TOLERANCE: Seconds = 0.01


@dataclass(frozen=True)
class Word:
    """One word of the transcript and where it is spoken in the item's audio (seconds)."""

    text: str
    t_start: Seconds
    t_end: Seconds


@dataclass(frozen=True)
class Source:
    """Where the item's text (and label) comes from: dataset, split, the id there, and any note
    on how it was changed (e.g. truncation)."""

    dataset: str
    split: str
    original_id: str
    note: str | None = None


@dataclass(frozen=True)
class Noise:
    """How noise was added: kind, SNR, seed, the clean item it was made from.

    gain is the factor applied to the clean speech (below 1 only when the mixture would clip), so the
    noise alone is `mixture - gain * clean`.
    """

    kind: Literal["babble-recording", "babble-mix", "file"]
    snr_db: float
    seed: int
    parent_id: str
    gain: float
    file: str | None = None
    offset: Seconds | None = None
    mixed_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Speech:
    """How the audio was made: TTS engine and its parameters, or a natural recording; plus noise."""

    kind: Literal["tts", "natural"]
    engine: str | None = None
    voice: str | None = None
    params: dict[str, float | int | str] = field(default_factory=dict)
    recording: str | None = None
    noise: Noise | None = None


class Labelled:
    """Answer accessors shared by records that hold `choices` and `label`."""

    choices: tuple[str, ...]
    label: int | tuple[str, ...]

    @property
    def is_open(self) -> bool:
        """True for open-answer tasks (TriviaQA, transcription): label holds answers, not an index."""
        return not self.choices

    @property
    def answer(self) -> str:
        """The correct answer as text."""
        return self.label[0] if isinstance(self.label, tuple) else self.choices[self.label]


@dataclass(frozen=True)
class Item(Labelled):
    """One spoken task item.

    label: for forced-choice tasks the index into `choices`; for open tasks (no choices) the accepted
    answers, the first being the canonical one. words: word timings where known, else None.
    """

    id: str
    task: str
    audio: str
    sample_rate: int
    duration: Seconds
    transcript: str
    choices: tuple[str, ...]
    label: int | tuple[str, ...]
    source: Source
    speech: Speech
    words: tuple[Word, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["choices"] = list(self.choices)
        record["label"] = self.label if isinstance(self.label, int) else list(self.label)
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Item:
        """Build and validate an item; raises DataError naming the first field that is wrong."""
        try:
            item = _item_from_dict(record)
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(f"malformed record: {_describe(error)}") from error
        item.validate()
        return item

    def validate(self) -> None:
        """Check the invariants a hand-made manifest can break."""
        if not _ID_PATTERN.match(self.id):
            raise DataError(f"id {self.id!r} must be letters, digits, '.', '_' or '-' (it names the audio file)")
        if self.sample_rate != SAMPLE_RATE:
            raise DataError(f"item {self.id}: sample_rate {self.sample_rate}; expected {SAMPLE_RATE} (16 kHz mono)")
        if not self.transcript.strip():
            raise DataError(f"item {self.id}: empty transcript")
        if self.duration <= 0:
            raise DataError(f"item {self.id}: duration {self.duration} s must be positive")
        if self.choices:
            if not isinstance(self.label, int) or not 0 <= self.label < len(self.choices):
                raise DataError(f"item {self.id}: label {self.label!r} is not an index into "
                                f"{len(self.choices)} choices")
        elif isinstance(self.label, int) or not self.label:
            raise DataError(f"item {self.id}: an open task (no choices) needs its answers as label")
        for word in self.words or ():
            if not 0 <= word.t_start <= word.t_end <= self.duration + _DURATION_TOLERANCE:
                raise DataError(f"item {self.id}: word {word.text!r} at {word.t_start}-{word.t_end} s "
                                "is outside the audio")


def _item_from_dict(record: dict[str, Any]) -> Item:
    speech = dict(record["speech"])
    noise = speech.pop("noise", None)
    if noise is not None:
        noise = Noise(**{**noise, "mixed_ids": tuple(noise.get("mixed_ids", ()))})
    label = record["label"]
    if isinstance(label, bool) or not isinstance(label, (int, list)):
        raise TypeError(f"label must be an integer index or a list of answers, got {label!r}")
    words = record.get("words")
    return Item(
        id=str(record["id"]),
        task=str(record["task"]),
        audio=str(record["audio"]),
        sample_rate=int(record["sample_rate"]),
        duration=float(record["duration"]),
        transcript=str(record["transcript"]),
        choices=tuple(str(c) for c in record["choices"]),
        label=label if isinstance(label, int) else tuple(str(a) for a in label),
        source=Source(**record["source"]),
        speech=Speech(**speech, noise=noise),
        words=None if words is None else tuple(Word(**w) for w in words),
    )


def _describe(error: Exception) -> str:
    if isinstance(error, KeyError):
        return f"missing field {error.args[0]!r}"
    return str(error)


@dataclass(frozen=True)
class SpokenSet:
    """A validated spoken task set on disk."""

    root: Path
    items: tuple[Item, ...]

    @classmethod
    def open(cls, root: str | Path, *, check_audio: bool = True) -> SpokenSet:
        """Read and validate `root/manifest.jsonl`; with check_audio, every wav's header too.

        Raises DataError for a missing folder, a malformed line, a duplicate id, a missing wav or one
        that is not 16 kHz mono, or a duration that disagrees with the file.
        """
        root = Path(root)
        manifest = root / MANIFEST
        if not manifest.is_file():
            what = "folder not found" if not root.exists() else f"no {MANIFEST} in it"
            raise DataError(f"{root}: {what}; a spoken set is a folder with {MANIFEST} and {AUDIO_DIR}/")
        items = _read_manifest(manifest)
        if check_audio:
            for item in items:
                _check_item_audio(root, item)
        return cls(root=root, items=items)

    def __len__(self) -> int:
        return len(self.items)

    def audio_path(self, item: Item) -> Path:
        return self.root / item.audio

    def load_audio(self, item: Item) -> np.ndarray:
        """The item's samples: (samples,) float32 at 16 kHz."""
        samples, _ = read_audio(self.audio_path(item), to_rate=None)
        return samples


def _read_manifest(manifest: Path) -> tuple[Item, ...]:
    items: list[Item] = []
    seen: set[str] = set()
    with manifest.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                item = Item.from_dict(json.loads(line))
            except json.JSONDecodeError as error:
                raise DataError(f"{manifest}:{number}: not valid JSON ({error.msg})") from error
            except DataError as error:
                raise DataError(f"{manifest}:{number}: {error}") from error
            if item.id in seen:
                raise DataError(f"{manifest}:{number}: duplicate id {item.id!r}; ids must be unique in a set")
            seen.add(item.id)
            items.append(item)
    if not items:
        raise DataError(f"{manifest}: no items")
    return tuple(items)


def _check_item_audio(root: Path, item: Item) -> None:
    try:
        duration = check_wav(root / item.audio)
    except DataError as error:
        raise DataError(f"item {item.id}: {error}") from error
    if abs(duration - item.duration) > _DURATION_TOLERANCE:
        raise DataError(f"item {item.id}: manifest says {item.duration:.3f} s but {item.audio} holds {duration:.3f} s")
