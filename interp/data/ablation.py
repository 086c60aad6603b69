"""Audio ablations: each item answered with its audio replaced, to test how much a system relies on what it hears.

Three controls, all seeded and reproducible (the transforms are pure functions of numpy arrays and a seed):

* `silence`: zeros of the item's length. A system that answers the same for every item hears nothing.
* `babble`: the shipped multi-talker babble recording alone (no speech of the item), cut or looped to the item's
  length from an offset drawn from (seed, item id), at the item's RMS level, so only loudness and length survive.
* `swap`: another item's audio, by a seeded derangement of the run's items (never the item's own). A system that
  uses the audio then answers the item it heard: correct only as often as the two items happen to share a label.

`AblatedAudio` applies one of them to the items of a run (interp.behavior's harness reads audio through it).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np

from interp.data.audio import read_audio
from interp.data.manifest import Item, SpokenSet
from interp.errors import InterpError
from interp.resources import resource_path

__all__ = ["Ablation", "ABLATIONS", "ABLATION_RULES", "check_ablation", "silence", "babble", "babble_recording",
           "derangement", "swap_sources", "AblatedAudio"]

_log = logging.getLogger(__name__)

Ablation = Literal["silence", "babble", "swap"]
ABLATIONS: tuple[str, ...] = get_args(Ablation)
ABLATION_RULES: dict[str, str] = {
    "silence": "each item's audio is replaced by zeros of the same length",
    "babble": "each item's audio is replaced by the shipped babble recording alone, cut (looped if shorter) to "
              "the item's length from an offset seeded by (seed, item id) and scaled to the item's RMS level",
    "swap": "each item hears another item's audio, by a seeded derangement of the run's items (never its own); "
            "audio_from names the item heard",
}
"""One sentence per ablation, recorded in every ablated run's sidecar."""


def check_ablation(name: str) -> Ablation:
    """The ablation, or InterpError naming the known ones."""
    if name not in ABLATIONS:
        raise InterpError(f"unknown ablation {name!r}; choose one of {', '.join(ABLATIONS)}")
    return name  # type: ignore[return-value]


def silence(audio: np.ndarray) -> np.ndarray:
    """Zeros with the shape of `audio` (float32)."""
    return np.zeros(np.shape(audio), dtype=np.float32)


def babble(audio: np.ndarray, recording: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A stretch of `recording` as long as `audio`, from a random offset (looped when the recording is shorter),
    scaled to `audio`'s RMS (left at the recording's own level when `audio` is silent); float32 within [-1, 1]."""
    length = int(np.size(audio))
    if recording.size == 0:
        raise InterpError("the babble recording is empty")
    high = recording.size - length + 1 if recording.size >= length else recording.size
    offset = int(rng.integers(0, high))
    excerpt = np.resize(np.roll(recording.astype(np.float64), -offset), length)
    target = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if length else 0.0
    level = float(np.sqrt(np.mean(np.square(excerpt)))) if length else 0.0
    if target > 0 and level > 0:
        excerpt *= target / level
    return np.clip(excerpt, -1.0, 1.0).astype(np.float32)


def babble_recording() -> np.ndarray:
    """The shipped multi-talker babble (interp/resources/noise/babble.wav), (samples,) float32 at 16 kHz."""
    return read_audio(resource_path("noise/babble.wav"))[0]


def derangement(n: int, seed: int) -> np.ndarray:
    """A permutation of range(n) with no fixed point, uniform over derangements (rejection sampling: about e
    draws), the same for the same (n, seed). InterpError for n < 2, where none exists."""
    if n < 2:
        raise InterpError(f"--ablate swap needs at least 2 items to give each one another item's audio; got {n}")
    rng = np.random.default_rng([seed, n])
    while True:
        permutation = rng.permutation(n)
        if not np.any(permutation == np.arange(n)):
            return permutation


def swap_sources(ids: Sequence[str], seed: int) -> dict[str, str]:
    """{item id: id of the item whose audio it hears} by `derangement(len(ids), seed)`; ids must be distinct."""
    if len(set(ids)) != len(ids):
        raise InterpError("swap needs distinct item ids")
    permutation = derangement(len(ids), seed)
    return {item_id: ids[int(source)] for item_id, source in zip(ids, permutation)}


@dataclass(frozen=True)
class AblatedAudio:
    """What a run under an ablation hears: `audio(item)` in place of the item's own samples.

    items: the run's items (swap deranges exactly these). `sources` (swap only) maps each item id to the item
    whose audio it hears; `heard_from(item)` gives its id for a predictions line (None for the other ablations).
    """

    spoken_set: SpokenSet
    name: Ablation
    seed: int
    items: tuple[Item, ...]
    sources: dict[str, Item] = field(default_factory=dict)
    recording: np.ndarray | None = None

    @classmethod
    def build(cls, spoken_set: SpokenSet, name: str, items: Sequence[Item], *, seed: int = 0) -> AblatedAudio:
        """The ablation `name` over `items` of `spoken_set`; InterpError for an unknown name or a swap of < 2."""
        name = check_ablation(name)
        items = tuple(items)
        by_id = {item.id: item for item in items}
        mapping = swap_sources(list(by_id), seed) if name == "swap" else {}
        sources = {item_id: by_id[source] for item_id, source in mapping.items()}
        recording = babble_recording() if name == "babble" else None
        _log.info("ablation %s (seed %d) over %d items of %s", name, seed, len(items), spoken_set.root)
        return cls(spoken_set, name, seed, items, sources, recording)

    def config(self) -> dict[str, Any]:
        """The record a run's sidecar keeps: name, seed and the rule in one sentence."""
        return {"ablation": self.name, "seed": self.seed, "rule": ABLATION_RULES[self.name]}

    def heard_from(self, item: Item) -> str | None:
        """Id of the item whose audio `item` is answered with (swap), else None."""
        source = self.sources.get(item.id)
        return source.id if source is not None else None

    def audio(self, item: Item) -> np.ndarray:
        """The samples the system hears for `item` under this ablation."""
        if self.name == "swap":
            source = self.sources.get(item.id)
            if source is None:
                raise InterpError(f"item {item.id!r} is not among the {len(self.items)} items deranged by swap")
            return self.spoken_set.load_audio(source)
        own = self.spoken_set.load_audio(item)
        if self.name == "silence":
            return silence(own)
        rng = np.random.default_rng([self.seed, zlib.crc32(item.id.encode())])
        return babble(own, self.recording, rng)
