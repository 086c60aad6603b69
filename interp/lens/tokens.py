"""Token normalisation: which lens tokens count as words, and as which word (NORMALISATION_RULE).

Each token id becomes text by decoding it alone with the model's tokenizer; then surrounding whitespace and
leading-space markers (byte-level `Ġ`, SentencePiece `▁`, a leading space) are stripped, the text is lower-cased,
and the token is DROPPED when it is a special token (tokenizer.all_special_ids, special added tokens, ids beyond
the tokenizer) or when what is left is empty or has no letter or digit (punctuation-only, whitespace,
undecodable byte pieces). Dropped tokens count nowhere (neither numerator nor denominator of the scores).

The transcript's reference tokens are normalised the same way, from the transcript tokenised with the model's
tokenizer four ways: as written, with a leading space, and both of those lower-cased (so a word-initial token
matches with or without its space, and "GREAT" -> `GRE`,`AT` still matches a lens token `great`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from transformers import PreTrainedTokenizerBase

__all__ = ["NORMALISATION_RULE", "TokenNormalizer"]

NORMALISATION_RULE = (
    "decode each token id alone with the model's tokenizer; strip surrounding whitespace and leading-space markers "
    "(Ġ, ▁, a space); lower-case; drop special tokens and tokens left empty or without any letter or digit "
    "(punctuation-only); dropped tokens count in neither numerator nor denominator. Reference tokens: the "
    "transcript tokenised as written, with a leading space, and both lower-cased, normalised the same way")

_MARKERS = "Ġ▁ \t\n\r"


def _normalise_piece(text: str) -> str | None:
    text = text.strip().lstrip(_MARKERS).strip().lower()
    return text if any(ch.isalnum() for ch in text) else None


class TokenNormalizer:
    """Token ids -> normalised text (or None for dropped tokens), by NORMALISATION_RULE; memoised per id.

    Memory: one memo entry per distinct id seen (at most vocab).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        special = set(int(i) for i in getattr(tokenizer, "all_special_ids", []) or [])
        for token_id, added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
            if getattr(added, "special", False):
                special.add(int(token_id))
        self.special_ids = frozenset(special)
        self.vocab_size = len(tokenizer)
        self._memo: dict[int, str | None] = {}

    def token(self, token_id: int) -> str | None:
        """The normalised text of one id, None when the rule drops it."""
        token_id = int(token_id)
        if token_id not in self._memo:
            if token_id in self.special_ids or not 0 <= token_id < self.vocab_size:
                self._memo[token_id] = None
            else:
                self._memo[token_id] = _normalise_piece(self.decode([token_id]))
        return self._memo[token_id]

    def tokens(self, ids: Iterable[int]) -> list[str | None]:
        return [self.token(i) for i in ids]

    def decode(self, ids: Sequence[int]) -> str:
        """The ids decoded together, special tokens and spaces kept as they are."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False,
                                     clean_up_tokenization_spaces=False)

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def reference(self, transcript: str) -> frozenset[str]:
        """Normalised tokens of the transcript tokenised as written, with a leading space, and both lower-cased."""
        variants = {transcript, " " + transcript, transcript.lower(), " " + transcript.lower()}
        return frozenset(t for text in variants for t in self.tokens(self._encode(text)) if t is not None)

    def transcript_tokens(self, transcript: str) -> list[str]:
        """Distinct normalised tokens of ' ' + transcript, in order (the denominator of recall)."""
        return list(dict.fromkeys(t for t in self.tokens(self._encode(" " + transcript)) if t is not None))
