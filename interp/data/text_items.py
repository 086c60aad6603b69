"""Items before they are spoken: text, answer choices, label, source, and how they must be voiced.

Importers and the built-in suites produce `TextItem`s; `interp.data.spoken` turns them into a set.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from interp.data.manifest import Labelled, Source
from interp.data.tts import EngineName, EspeakSettings, PiperSettings

__all__ = ["TextItem", "select_stratified"]


@dataclass(frozen=True)
class TextItem(Labelled):
    """An item to be spoken.

    voice/engine: fixed when the label lives in the voice (the pitch and rate suites); otherwise None
    and the set builder draws a varied voice. recording: a natural recording to use instead of TTS.
    """

    id: str
    task: str
    transcript: str
    choices: tuple[str, ...]
    label: int | tuple[str, ...]
    source: Source
    engine: EngineName | None = None
    voice: EspeakSettings | PiperSettings | None = None
    recording: Path | None = None


def select_stratified(items: list[TextItem], *, limit: int | None, seed: int) -> list[TextItem]:
    """At most `limit` items, as balanced across labels as the classes allow, in source order.

    Forced-choice items are drawn label by label: each label gets an equal share, and what a small
    class cannot fill goes to the others (so `--limit 200` on SST-2 gives 100/100). Open-task items
    are drawn uniformly. Seeded and deterministic.
    """
    if limit is None or limit >= len(items):
        return list(items)
    rng = np.random.default_rng(seed)
    by_label: dict[object, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        by_label[item.label if item.choices else None].append(index)
    pools = {label: list(rng.permutation(indices)) for label, indices in sorted(by_label.items(), key=str)}
    quota = dict.fromkeys(pools, 0)
    remaining = limit
    while remaining > 0:
        open_labels = [label for label in pools if quota[label] < len(pools[label])]
        share, extra = divmod(remaining, len(open_labels))
        for rank, label in enumerate(open_labels):
            take = min(share + (rank < extra), len(pools[label]) - quota[label])
            quota[label] += take
            remaining -= take
    chosen = sorted(int(i) for label, pool in pools.items() for i in pool[: quota[label]])
    return [items[i] for i in chosen]
