"""Word alignment of the two sides: which audio rows and which text tokens belong to each timed word.

A word's audio-side state is the plain mean of the cached audio rows whose [t_start, t_end) overlaps the word's
time span by more than `MIN_OVERLAP` (a row straddling two words counts for both); its text-side state is the plain
mean of the transcript tokens whose character span overlaps the word's characters (a token straddling two words
counts for both). A word counts only where it has both, and is found in the transcript (words are searched in
order, case-insensitively, as interp.erasure.alignment does). The means are sparse averaging matrices built
once from the row tables, so every layer is one sparse product per side, streamed batch by batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from activations.format import AUDIO
from interp.data.manifest import Item, Word
from interp.errors import InterpError

__all__ = ["MIN_OVERLAP", "WordAlignment", "word_spans", "align_words"]

MIN_OVERLAP = 1e-6
"""Seconds a row must share with a word to count for it: more than float rounding, so a row that ends where
the word starts (k·s computed one way, the word's start another) is not counted for it."""


@dataclass(frozen=True)
class WordAlignment:
    """Words of the aligned items, and the averaging matrices of both sides.

    audio: (words, rows) over the audio-side rows of `item_ids` in cache read order; text: (words, rows) over
    the text-side rows of the same items; each word's row of weights sums to 1. word_item: (words,) index into
    item_ids. skipped: words left out, by reason.
    """

    item_ids: tuple[str, ...]
    word_item: np.ndarray
    words: tuple[str, ...]
    audio: sparse.csr_matrix
    text: sparse.csr_matrix
    skipped: dict[str, int]

    @property
    def n_items(self) -> int:
        """Items with at least one aligned word."""
        return int(np.unique(self.word_item).size)


def word_spans(transcript: str, words: Sequence[Word]) -> list[tuple[int, int] | None]:
    """Each word's [start, end) characters in the transcript, searched in order and case-insensitively from the
    end of the previous word found; None for a word the transcript does not hold."""
    lowered, cursor, spans = transcript.lower(), 0, []
    for word in words:
        at = lowered.find(word.text.lower(), cursor) if word.text else -1
        if at < 0:
            spans.append(None)
            continue
        cursor = at + len(word.text)
        spans.append((at, cursor))
    return spans


def _averaging(entries: list[tuple[int, np.ndarray]], n_words: int, n_rows: int) -> sparse.csr_matrix:
    """(n_words, n_rows) with 1/len(rows) at (word, row) for each (word, rows) entry."""
    if not entries:
        return sparse.csr_matrix((n_words, n_rows))
    rows = np.concatenate([np.full(len(cols), word) for word, cols in entries])
    cols = np.concatenate([cols for _, cols in entries])
    weights = np.concatenate([np.full(len(cols), 1.0 / len(cols)) for _, cols in entries])
    return sparse.csr_matrix((weights, (rows, cols)), shape=(n_words, n_rows))


def align_words(items: Sequence[Item], audio_rows: dict[str, np.ndarray], text_offsets: np.ndarray,
                text_rows: dict[str, np.ndarray]) -> WordAlignment:
    """Align the words of `items` (each with word timings, in cache order) to both sides' rows.

    audio_rows: the cache's row table of exactly these items (`ActivationCache.row_table(items=...)`), whose
    `item` column rises item by item; text_offsets (items + 1,) and text_rows (char_start, char_end) from the
    text states of the same items in the same order.
    """
    if len(text_offsets) != len(items) + 1:
        raise InterpError(f"text side holds {len(text_offsets) - 1} items, audio side {len(items)}")
    change = np.flatnonzero(np.diff(audio_rows["item"])) + 1
    bounds = np.concatenate([[0], change, [len(audio_rows["item"])]])
    if len(bounds) != len(items) + 1:
        raise InterpError(f"the cache rows cover {len(bounds) - 1} items; expected {len(items)}")
    audio_entries, text_entries, word_item, names = [], [], [], []
    skipped = {"not_in_transcript": 0, "no_audio_rows": 0, "no_text_tokens": 0}
    is_audio = audio_rows["kind"] == AUDIO
    for k, item in enumerate(items):
        lo, hi = int(bounds[k]), int(bounds[k + 1])
        a_start, a_end = audio_rows["t_start"][lo:hi], audio_rows["t_end"][lo:hi]
        t_lo, t_hi = int(text_offsets[k]), int(text_offsets[k + 1])
        c_start, c_end = text_rows["char_start"][t_lo:t_hi], text_rows["char_end"][t_lo:t_hi]
        for word, span in zip(item.words or (), word_spans(item.transcript, item.words or ())):
            if span is None:
                skipped["not_in_transcript"] += 1
                continue
            heard = np.flatnonzero(is_audio[lo:hi] & (np.minimum(a_end, word.t_end)
                                                       - np.maximum(a_start, word.t_start) > MIN_OVERLAP))
            read = np.flatnonzero((c_end > span[0]) & (c_start < span[1]))
            if not heard.size or not read.size:
                skipped["no_audio_rows" if not heard.size else "no_text_tokens"] += 1
                continue
            audio_entries.append((len(names), heard + lo))
            text_entries.append((len(names), read + t_lo))
            word_item.append(k)
            names.append(word.text)
    n_words = len(names)
    return WordAlignment(tuple(item.id for item in items), np.array(word_item, dtype=np.int64), tuple(names),
                         _averaging(audio_entries, n_words, len(audio_rows["item"])),
                         _averaging(text_entries, n_words, int(text_offsets[-1])), skipped)
