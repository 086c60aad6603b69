"""Concept labels: the label z of every audio row of a cache, one small labelling function per concept.

A row's span is its [t_start, t_end) in the item's audio (the cache's row table). The table `LABELLERS`:

* ``chars`` — the characters spoken during the row: the bag of characters (28 counts: space, apostrophe,
  a–z; `probes.targets.bag_of_characters`) of the words whose timing (`Item.words`) overlaps the row's
  span, joined by spaces. Rows overlapping no word (silence) are all zeros. Rank ≤ 28, far below d.
* ``text`` — proxy token identity: the word with the largest overlap with the row's span (ties: the earlier
  word), and of it the FIRST token the model's tokenizer gives it inside the transcript (tokenised with
  offsets; a word not found there is tokenised alone after a space). The `text_classes` (K, default 32)
  most frequent tokens over the labelled rows are classes, everything else is "other" (rarer tokens and
  silent rows): one-hot with K + 1 columns, rank ≤ K.
* ``boc`` — the item's bag of characters (28 counts of its whole transcript), the same on all its rows. Rank ≤ 28.
* ``energy`` — RMS level in dB of the row's span (`probes.targets.energy_db`), z-scored over the fitted rows;
  real-valued, rank ≤ 1.
* ``pitch`` — Praat log-F0 of the row's span (`probes.targets.pitch_track`, median of voiced frames), cut into
  `pitch_bins` (default 8) quantile bins over the voiced rows, plus one class for unvoiced rows: one-hot,
  rank ≤ `pitch_bins`. `pitch_bins=0` instead fits the z-scored log-F0 of voiced rows only (rank ≤ 1).

(``random``, the control, has no labels of its own: it copies another concept's rank; see interp.erasure.fit.)
Rows of items without word timings (natural recordings) have no `chars`/`text` label and are left out of
the fit (their count is recorded); fit those concepts on a set with timings (the TTS sets have them). Other
rows with no label (energy of an empty span; unvoiced rows under `pitch_bins=0`) are left out the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from activations import AUDIO, ActivationCache
from activations.extract import set_items_of
from interp.data.audio import SAMPLE_RATE
from interp.data.manifest import Item, SpokenSet
from interp.erasure.alignment import overlaps, token_name, word_first_tokens
from interp.errors import InterpError
from probes.targets import CHARSET, bag_of_characters, energy_db, pitch_track

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["ConceptName", "CONCEPTS", "DEFINITIONS", "SITE_CHARS", "ConceptLabels", "LabelOptions", "LABELLERS",
           "concept_labels"]

ConceptName = Literal["chars", "text", "boc", "energy", "pitch", "random"]
CONCEPTS: tuple[ConceptName, ...] = ("chars", "text", "boc", "energy", "pitch", "random")
SITE_CHARS = tuple(CHARSET[1:])
"""The 28 columns of the character concepts: space, apostrophe, a–z."""

DEFINITIONS = {
    "chars": "bag of characters (28 counts) of the words whose timing overlaps the row's span; silence = zeros",
    "text": "first model token of the word overlapping the row's span most; K most frequent tokens + other "
            "(rarer tokens and silence), one-hot",
    "boc": "bag of characters (28 counts) of the item's transcript, on each of its rows",
    "energy": "RMS level (dB) of the row's span, z-scored",
    "pitch": "Praat log-F0 of the row's span in quantile bins over voiced rows + unvoiced class, one-hot "
             "(bins 0: z-scored log-F0 of voiced rows)",
    "random": "seeded random orthonormal subspace of the matched concept's rank, removed in the whitened (or raw) "
              "space",
}
"""One line per concept, written into every eraser file."""


@dataclass(frozen=True)
class ConceptLabels:
    """The label of every row of a cache (in `ActivationCache.read` order) for one concept.

    z: (rows, k) float64 (one-hot for categorical concepts); keep: (rows,) bool, the rows the eraser is fitted
    on (audio rows with a label); columns: name of each column of z; info: counts for the eraser's metadata.
    """

    concept: str
    kind: Literal["categorical", "real"]
    z: np.ndarray
    keep: np.ndarray
    columns: tuple[str, ...]
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LabelOptions:
    """What a labelling function may need besides the rows: K of ``text`` and its tokenizer, bins of ``pitch``."""

    text_classes: int = 32
    pitch_bins: int = 8
    tokenizer: PreTrainedTokenizerBase | None = None


@dataclass(frozen=True)
class _ItemRows:
    """One labelled item's audio rows: their cache row numbers and their spans (seconds, float64)."""

    item: Item
    index: np.ndarray
    start: np.ndarray
    end: np.ndarray


@dataclass(frozen=True)
class _AudioRows:
    """What every labelling function reads: the cache's rows (audio: (rows,) bool) and the labelled items'."""

    audio: np.ndarray
    spoken_set: SpokenSet
    items: tuple[_ItemRows, ...]

    @property
    def n_rows(self) -> int:
        return int(self.audio.size)

    def labelled(self) -> np.ndarray:
        """(rows,) bool: the audio rows of the labelled items."""
        out = np.zeros(self.n_rows, dtype=bool)
        for part in self.items:
            out[part.index] = True
        return out

    def untimed(self) -> int:
        """Audio rows of labelled items without word timings."""
        return sum(part.index.size for part in self.items if not part.item.words)


# ---------------------------------------------------------------------------------------------------------------
# the labelling functions


def _chars(rows: _AudioRows, options: LabelOptions) -> ConceptLabels:
    z, keep = np.zeros((rows.n_rows, len(SITE_CHARS))), np.zeros(rows.n_rows, dtype=bool)
    for part in rows.items:
        if part.item.words and part.index.size:
            bags = np.stack([bag_of_characters(word.text) for word in part.item.words])
            hit = overlaps(part.start, part.end, part.item.words) > 0
            z[part.index] = hit.astype(np.float64) @ bags
            z[part.index, 0] += np.maximum(hit.sum(axis=1) - 1, 0)  # the spaces between the joined words
            keep[part.index] = True
    return ConceptLabels("chars", "real", z, keep, SITE_CHARS, {"rows_without_word_timing": rows.untimed()})


def _boc(rows: _AudioRows, options: LabelOptions) -> ConceptLabels:
    z = np.zeros((rows.n_rows, len(SITE_CHARS)))
    for part in rows.items:
        z[part.index] = bag_of_characters(part.item.transcript)
    return ConceptLabels("boc", "real", z, rows.labelled(), SITE_CHARS)


def _row_tokens(rows: _AudioRows, tokenizer: PreTrainedTokenizerBase) -> np.ndarray:
    """(rows,) int64: the first token of the word overlapping each audio row's span most (ties: the earlier
    word); -1 for a silent row, -2 for a row without a label (text rows, items without word timings)."""
    token = np.full(rows.n_rows, -2, dtype=np.int64)
    for part in rows.items:
        if part.item.words and part.index.size:
            first = np.array(word_first_tokens(tokenizer, part.item.transcript, part.item.words), dtype=np.int64)
            overlap = overlaps(part.start, part.end, part.item.words)
            best = overlap.argmax(axis=1)  # the first maximum: ties go to the earlier word
            token[part.index] = np.where(overlap.max(axis=1) > 0, first[best], -1)
    return token


def _text(rows: _AudioRows, options: LabelOptions) -> ConceptLabels:
    token = _row_tokens(rows, options.tokenizer)
    keep = token > -2
    ids, counts = np.unique(token[keep & (token >= 0)], return_counts=True)
    order = np.lexsort((ids, -counts))[:options.text_classes]
    classes = ids[order]
    column = {int(t): c for c, t in enumerate(classes)}
    z = np.zeros((rows.n_rows, classes.size + 1))
    labelled = np.flatnonzero(keep)
    z[labelled, [column.get(int(t), classes.size) for t in token[labelled]]] = 1.0
    columns = tuple(token_name(options.tokenizer, int(t)) for t in classes) + ("other",)
    info = {"rows_without_word_timing": rows.untimed(), "silent_rows": int((token[keep] == -1).sum()),
            "distinct_tokens": int(ids.size), "class_rows": [int(c) for c in counts[order]],
            "other_rows": int(z[labelled, -1].sum())}
    return ConceptLabels("text", "categorical", z, keep, columns, info)


def _span_values(rows: _AudioRows, measure: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """(rows,) float64: measure(wave, t_start, t_end) of each labelled audio row's span; NaN elsewhere."""
    values = np.full(rows.n_rows, np.nan)
    for part in rows.items:
        if part.index.size:
            values[part.index] = measure(rows.spoken_set.load_audio(part.item), part.start, part.end)
    return values


def _zscore(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    out = np.zeros_like(values)
    if keep.any():
        mean, std = values[keep].mean(), values[keep].std()
        out[keep] = (values[keep] - mean) / (std if std > 0 else 1.0)
    return out


def _energy(rows: _AudioRows, options: LabelOptions) -> ConceptLabels:
    values = _span_values(rows, lambda wave, start, end: energy_db(wave, SAMPLE_RATE, start, end))
    voiced = rows.labelled() & np.isfinite(values)
    return ConceptLabels("energy", "real", _zscore(values, voiced)[:, None], voiced, ("energy",),
                         {"voiced_rows": int(voiced.sum())})


def _pitch(rows: _AudioRows, options: LabelOptions) -> ConceptLabels:
    values = _span_values(rows, lambda wave, start, end: pitch_track(wave, SAMPLE_RATE).log_hz(start, end))
    keep = rows.labelled()
    voiced = keep & np.isfinite(values)
    if options.pitch_bins == 0:
        return ConceptLabels("pitch", "real", _zscore(values, voiced)[:, None], voiced, ("pitch",),
                             {"voiced_rows": int(voiced.sum())})
    bins = options.pitch_bins
    edges = np.quantile(values[voiced], np.linspace(0, 1, bins + 1)[1:-1]) if voiced.any() else []
    z = np.zeros((rows.n_rows, bins + 1))
    labelled = np.flatnonzero(keep)
    z[labelled, np.where(voiced[labelled], np.digitize(np.nan_to_num(values[labelled]), edges), bins)] = 1
    columns = tuple(f"log-F0 bin {b}" for b in range(bins)) + ("unvoiced",)
    info = {"bin_edges_log_hz": [float(e) for e in edges], "voiced_rows": int(voiced.sum())}
    return ConceptLabels("pitch", "categorical", z, keep, columns, info)


LABELLERS: dict[str, Callable[[_AudioRows, LabelOptions], ConceptLabels]] = {
    "chars": _chars, "text": _text, "boc": _boc, "energy": _energy, "pitch": _pitch}
"""Concept name → its labelling function (the rows of the labelled items, options) → labels before the audio cut."""


# ---------------------------------------------------------------------------------------------------------------
# the rows they read, and the table's front


def _chosen_items(cache: ActivationCache, items: Sequence[str] | None) -> set[int]:
    """Cache positions of the items to label (all by default); an id the cache lacks is refused."""
    if items is None:
        return set(range(len(cache.items)))
    position = {meta.id: p for p, meta in enumerate(cache.items)}
    unknown = [i for i in items if i not in position]
    if unknown:
        raise InterpError(f"item {unknown[0]!r} is not in the cache {cache.path}")
    return {position[i] for i in items}


def _audio_rows(cache: ActivationCache, spoken_set: SpokenSet, items: Sequence[str] | None) -> _AudioRows:
    table = cache.row_table()
    audio = table["kind"] == AUDIO
    if not audio.any():
        raise InterpError(f"{cache.path}: the cache holds no audio rows (positions {cache.positions!r}); erasers are "
                          "fitted on audio positions: extract with --positions audio or all")
    set_items = set_items_of(cache, spoken_set)
    bounds = np.searchsorted(table["item"], np.arange(len(set_items) + 1))
    chosen = _chosen_items(cache, items)
    parts = []
    for i, item in enumerate(set_items):
        if i not in chosen:
            continue
        index = np.arange(bounds[i], bounds[i + 1])[audio[bounds[i]:bounds[i + 1]]]
        start, end = table["t_start"][index].astype(np.float64), table["t_end"][index].astype(np.float64)
        if index.size and not (np.isfinite(start).all() and np.isfinite(end).all()):
            raise InterpError(f"item {item.id!r}: audio rows without a time span in the cache; re-extract it")
        parts.append(_ItemRows(item, index, start, end))
    return _AudioRows(audio, spoken_set, tuple(parts))


def _check_request(concept: str, options: LabelOptions) -> None:
    if concept not in LABELLERS:
        raise InterpError(f"unknown concept {concept!r}; choose one of {', '.join(LABELLERS)} (or random, matched "
                          "to one of them)")
    if options.text_classes < 1:
        raise InterpError(f"text classes must be at least 1, got {options.text_classes}")
    if options.pitch_bins < 0:
        raise InterpError(f"pitch bins must be 0 (real-valued) or more, got {options.pitch_bins}")
    if concept == "text" and options.tokenizer is None:
        raise InterpError("the text concept needs the model's tokenizer")


def concept_labels(cache: ActivationCache, spoken_set: SpokenSet, concept: str, *, text_classes: int = 32,
                   pitch_bins: int = 8, tokenizer: PreTrainedTokenizerBase | None = None,
                   items: Sequence[str] | None = None) -> ConceptLabels:
    """Labels of every audio row of `cache` for `concept` (chars, text, boc, energy, pitch; see the module
    docstring), aligned by each row's [t_start, t_end) span. `tokenizer` is needed for ``text`` only.

    items: ids of the items to label (default all); rows of other items are not kept, and the text classes,
    pitch bins and z-scores are computed over the labelled items only. Rows are those of `cache.read(site)`.
    Raises InterpError for an unknown concept, a set that does not hold the cache's items, a cache without
    audio rows, or a concept that no row has a label for.
    """
    options = LabelOptions(text_classes=text_classes, pitch_bins=pitch_bins, tokenizer=tokenizer)
    _check_request(concept, options)
    rows = _audio_rows(cache, spoken_set, items)
    labels = LABELLERS[concept](rows, options)
    keep = labels.keep & rows.audio
    if not keep.any():
        hint = (" (no item has word timings: fit on a TTS set, whose items record them, or use concept boc)"
                if concept in ("chars", "text") else "")
        raise InterpError(f"no audio row of {cache.path} has a {concept} label{hint}")
    info = {"audio_rows": int(rows.audio.sum()), **labels.info, "rows": int(keep.sum())}
    return replace(labels, keep=keep, info=info)
