"""Transcript comparison: one normalisation and a corpus word error rate, shared by every ASR check.

Whisper writes "Fat-mutton pieces," where a reference says "FAT MUTTON PIECES": scoring raw strings would
count casing and punctuation as recognition errors, so both sides are normalised the same way first.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers.models.whisper.english_normalizer import BasicTextNormalizer

from interp.errors import DataError

__all__ = ["normalize_transcript", "word_edits", "word_error_rate"]

_BASIC = BasicTextNormalizer()


def normalize_transcript(text: str) -> str:
    """Lower-case words separated by single spaces, without punctuation or symbols.

    Whisper's own basic normaliser (transformers' BasicTextNormalizer, pure Python, offline): lower-cases,
    drops text in [brackets], <angle brackets> and (parentheses) (sound-event tags), turns every
    punctuation mark and symbol into a space ("fat-mutton" -> "fat mutton", "it's" -> "it s"), keeps
    letters, digits and diacritics, and collapses whitespace. Numbers and spellings are not standardised
    ("3" and "three" stay different words).
    """
    return _BASIC(text).strip()


def _word_edits(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Levenshtein distance between two word sequences (substitutions, insertions, deletions cost 1)."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, start=1):
        current = [i]
        for j, hyp_word in enumerate(hypothesis, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_word != hyp_word)))
        previous = current
    return previous[-1]


def word_edits(references: Sequence[str], hypotheses: Sequence[str]) -> tuple[list[int], list[int]]:
    """Per pair: word edits of the hypothesis against its reference, and the reference's word count.

    Both after `normalize_transcript`. The per-utterance parts of the corpus WER, for paired bootstraps over
    utterances (sum of edits / sum of words on each resample).
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    edits, words = [], []
    for reference, hypothesis in zip(references, hypotheses):
        ref_words = normalize_transcript(reference).split()
        edits.append(_word_edits(ref_words, normalize_transcript(hypothesis).split()))
        words.append(len(ref_words))
    return edits, words


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER: word edits summed over all pairs / reference words summed, after `normalize_transcript`.

    Pooling (rather than averaging per-utterance rates) weights each word equally, as ASR benchmarks do.
    Can exceed 1 when hypotheses insert many words. Raises DataError when the references hold no words.
    """
    edits, words = word_edits(references, hypotheses)
    if sum(words) == 0:
        raise DataError("the reference transcripts contain no words: a word error rate is undefined")
    return sum(edits) / sum(words)
