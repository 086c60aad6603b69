"""What a spoken set holds: counts per label, durations, sources, how the speech was made."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from interp.data.manifest import SpokenSet

__all__ = ["SetSummary", "summarize"]


@dataclass(frozen=True)
class SetSummary:
    """Counts and duration statistics of one set (durations in seconds)."""

    items: int
    tasks: dict[str, int]
    labels: dict[str, int]
    duration_total: float
    duration_min: float
    duration_median: float
    duration_mean: float
    duration_max: float
    sources: dict[str, int]
    speech: dict[str, int]
    with_word_times: int


def _speech_kind(speech) -> str:
    made = f"tts/{speech.engine}" if speech.kind == "tts" else "natural"
    return made if speech.noise is None else f"{made} + {speech.noise.kind} {speech.noise.snr_db:g} dB"


def summarize(spoken: SpokenSet) -> SetSummary:
    """Summary of a validated set; open-task items are counted under the label "(open)"."""
    durations = np.array([item.duration for item in spoken.items])
    return SetSummary(
        items=len(spoken),
        tasks=dict(Counter(item.task for item in spoken.items)),
        labels=dict(sorted(Counter("(open)" if item.is_open else item.answer for item in spoken.items).items())),
        duration_total=float(durations.sum()),
        duration_min=float(durations.min()),
        duration_median=float(np.median(durations)),
        duration_mean=float(durations.mean()),
        duration_max=float(durations.max()),
        sources=dict(Counter(f"{item.source.dataset}/{item.source.split}" for item in spoken.items)),
        speech=dict(Counter(_speech_kind(item.speech) for item in spoken.items)),
        with_word_times=sum(1 for item in spoken.items if item.words),
    )
