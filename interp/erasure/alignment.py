"""Aligning an item's audio rows to its words, and its words to the model's tokens (the chars and text concepts)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from interp.data.manifest import Word

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["overlaps", "word_first_tokens", "token_name"]


def overlaps(start: np.ndarray, end: np.ndarray, words: Sequence[Word]) -> np.ndarray:
    """(rows, words) seconds of overlap between each row's span and each word's timing."""
    w_start = np.array([w.t_start for w in words], dtype=np.float64)
    w_end = np.array([w.t_end for w in words], dtype=np.float64)
    return np.clip(np.minimum(end[:, None], w_end[None, :]) - np.maximum(start[:, None], w_start[None, :]), 0, None)


def word_first_tokens(tokenizer: PreTrainedTokenizerBase, transcript: str, words: Sequence[Word]) -> list[int]:
    """The first token of each timed word as the tokenizer splits the transcript (offsets); a word not found in
    the transcript (or a tokenizer without offsets) is tokenised alone after a space."""
    def alone(text: str) -> int:
        ids = tokenizer(" " + text, add_special_tokens=False)["input_ids"]
        return int(ids[0]) if ids else -1

    try:
        encoded = tokenizer(transcript, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(encoded["input_ids"]), [tuple(o) for o in encoded["offset_mapping"]]
    except (NotImplementedError, KeyError, TypeError, ValueError):
        return [alone(word.text) for word in words]
    lowered, cursor, out = transcript.lower(), 0, []
    for word in words:
        at = lowered.find(word.text.lower(), cursor) if word.text else -1
        if at < 0:
            out.append(alone(word.text))
            continue
        stop = at + len(word.text)
        cursor = stop
        token = next((tid for tid, (a, b) in zip(ids, offsets) if b > at and a < stop), None)
        out.append(int(token) if token is not None else alone(word.text))
    return out


def token_name(tokenizer: PreTrainedTokenizerBase, token: int) -> str:
    """`<id>:<token>` as the tokenizer writes it (the id alone when it cannot), for column names."""
    try:
        return f"{token}:{tokenizer.convert_ids_to_tokens(int(token))}"
    except Exception:  # noqa: BLE001 - a name is only a label in the metadata
        return str(token)
