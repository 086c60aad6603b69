"""How a reply becomes an answer: the scoring rules a run records, choice parsing and open-answer matching.

* Forced choice with scores: the score of a choice is the SUM of its tokens' log-probabilities as a continuation
  of the task prompt, split as lm-evaluation-harness splits it (interp.models.prompting: no length
  normalisation); the answer is the argmax, batch-calibrated only when the run asks for it (CALIBRATION_RULES).
* Forced choice without scores (`EndpointSystem`): `parse_choice` on the greedy reply: the choice the reply
  starts with, else the choice that occurs first in it (whole words, after `normalize_transcript`; the longer
  choice wins a tie, so "not sarcastic" beats "sarcastic"). An unparseable reply is -1 and counts as wrong.
* Open tasks: `match_answer`: the reply's first non-empty line, correct when, after `normalize_answer` (lower
  case, no punctuation, no articles a/an/the, single spaces), it equals one of the accepted answers or contains
  one as a whole-word sequence. `transcribe` items are scored by word error rate (interp.text_metrics).
"""

from __future__ import annotations

from collections.abc import Sequence

from interp.text_metrics import normalize_transcript

__all__ = ["LENGTH_POLICY", "CALIBRATION_RULES", "PARSE_RULE", "OPEN_ANSWER_RULE", "words", "parse_choice",
           "normalize_answer", "match_answer"]

LENGTH_POLICY = "sum of the choice's token log-probabilities after the prompt, no length normalisation"
CALIBRATION_RULES = {
    "none": "argmax over choices of the score (no calibration)",
    "batch": "batch calibration: argmax over choices of (score - the choice's mean score over the file's items of the "
             "same task and choices)",
}
PARSE_RULE = ("generation + parsing: the choice the normalised reply starts with, else the choice occurring first "
              "in it (whole words; longer choice wins ties); none -> -1 (wrong)")
OPEN_ANSWER_RULE = ("first non-empty line of the reply; correct when, normalised (lower case, no punctuation, no "
                    "articles), it equals or contains (whole words) an accepted answer; transcribe: WER, "
                    "correct = normalised exact match")
_ARTICLES = frozenset({"a", "an", "the"})


def words(text: str) -> list[str]:
    """The words of `text` after `normalize_transcript` (lower case, no punctuation)."""
    return normalize_transcript(text).split()


def parse_choice(reply: str, choices: Sequence[str]) -> int:
    """Index of the choice a generated reply gives, or -1 (see module docstring for the rule)."""
    said = words(reply)
    options = [(index, words(choice)) for index, choice in enumerate(choices)]
    options = [(index, tokens) for index, tokens in options if tokens]
    starts = [(len(tokens), -index) for index, tokens in options if said[:len(tokens)] == tokens]
    if starts:
        return -max(starts)[1]
    best: tuple[int, int, int] | None = None  # (position, -length, index)
    for index, tokens in options:
        for position in range(len(said) - len(tokens) + 1):
            if said[position:position + len(tokens)] == tokens:
                key = (position, -len(tokens), index)
                best = key if best is None or key < best else best
                break
    return -1 if best is None else best[2]


def normalize_answer(text: str) -> str:
    """Lower case, punctuation removed (normalize_transcript), articles dropped, single spaces."""
    return " ".join(word for word in words(text) if word not in _ARTICLES)


def match_answer(reply: str, answers: Sequence[str]) -> tuple[str, bool]:
    """(the reply's first non-empty line, whether it matches one of the accepted answers)."""
    line = next((line.strip() for line in reply.splitlines() if line.strip()), "")
    said = f" {normalize_answer(line)} "
    for answer in answers:
        wanted = normalize_answer(answer)
        if wanted and f" {wanted} " in said:
            return line, True
    return line, False
