"""Prompts and answer scoring shared by end-to-end models and cascades, so both read the same text.

A prompt is the user's message with one AUDIO_PLACEHOLDER; the LLM's chat template (when it has one)
wraps it and opens the assistant's turn, with BOS exactly as the tokenizer adds it (one, never zero or two).

Forced choice is scored as lm-evaluation-harness scores a continuation (`HFLM._encode_pair`): the context
keeps no trailing whitespace, which moves to the front of the continuation. The delimiter before the choice is
" " for a plain prompt ("Answer:" + " positive") and "" for a chat-rendered one, where the answer opens the
assistant's turn (lm-evaluation-harness sets target_delimiter to "" under apply_chat_template). The continuation's
tokens are those of context + continuation after the context's own tokens, so the model is scored on a token
sequence it would write
(SmolLM2 writes "Answer: positive" as `Answer`, `:`, ` positive`, never `Answer`, `:`, ` `, `positive`).
The score of a choice is the SUM of those tokens' log-probabilities (no length normalisation), so longer
answers are not favoured; tasks keep their choices short and comparable.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from interp.errors import InterpError
from interp.models.base import AUDIO_PLACEHOLDER

__all__ = ["PlainPrompt", "ScoringError", "split_prompt", "chat_text", "with_bos", "encode_context",
           "continuation_ids", "choice_delimiter", "PLAIN_DELIMITER"]

PLAIN_DELIMITER = " "
"""What separates a plain prompt from the choice (lm-evaluation-harness's default target_delimiter)."""


def choice_delimiter(prompt: str) -> str:
    """" " after a PlainPrompt ("Answer:" + " positive"); "" after a chat-rendered prompt, whose answer opens the
    assistant's turn (or, without a template, the line after the instruction)."""
    return PLAIN_DELIMITER if isinstance(prompt, PlainPrompt) else ""


class ScoringError(InterpError):
    """A forced-choice answer that cannot be scored as the model would write it."""


class PlainPrompt(str):
    """A prompt given to the model exactly as written, without its chat template (few-shot completions for
    base models and the mini stack); the type carries that choice to every adapter and to the cascades alike."""


def chat_text(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    """The full model input text for a user prompt: a PlainPrompt as written; else the chat template +
    generation prompt if the tokenizer has a template (instruct models), else the prompt followed by a
    newline (base models)."""
    if isinstance(prompt, PlainPrompt):
        return str(prompt)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt + "\n"


def split_prompt(text: str) -> tuple[str, str]:
    """(text before, text after) the single audio placeholder; refuses zero or several placeholders."""
    count = text.count(AUDIO_PLACEHOLDER)
    if count != 1:
        raise InterpError(f"a prompt needs exactly one {AUDIO_PLACEHOLDER} placeholder (where the audio goes); "
                          f"found {count}")
    before, after = text.split(AUDIO_PLACEHOLDER)
    return before, after


def _adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer puts BOS in front of a text it encodes (Gemma, Llama do; SmolLM2, Qwen don't).
    Read from what it does, not from `add_bos_token`, which GGUF-loaded tokenizers leave False while adding it."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos


def with_bos(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> list[int]:
    """The ids that start a model input, with BOS exactly once where the tokenizer adds one (a chat template
    that writes its own `<|begin_of_text|>` is not given a second), never where it does not."""
    ids = list(ids)
    if _adds_bos(tokenizer) and (not ids or ids[0] != tokenizer.bos_token_id):
        ids = [tokenizer.bos_token_id, *ids]
    return ids


def encode_context(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of the text that starts a model input, BOS as `with_bos` puts it."""
    return with_bos(tokenizer, tokenizer(text, add_special_tokens=False)["input_ids"])


def _continuation_text(context: str, delimiter: str, choice: str) -> tuple[str, str]:
    """(context, continuation) as lm-evaluation-harness pairs them: trailing whitespace of the context moves
    into the continuation, where it stands for the delimiter ("Answer: " + "positive" is "Answer:" + " positive")."""
    stripped = context.rstrip()
    return stripped, (context[len(stripped):] or delimiter) + choice


def continuation_ids(tokenizer: PreTrainedTokenizerBase, context: str, choices: Sequence[str], *,
                     delimiter: str) -> tuple[list[int], list[list[int]]]:
    """(context ids, each choice's continuation ids): the tokens of context + delimiter + choice after the
    context's own, with the context's trailing whitespace moved into the continuation (in place of the delimiter).

    context is the text the model reads last before the answer (for a speech model, the text after its audio);
    delimiter comes from `choice_delimiter`.
    Raises ScoringError when a choice is empty, or when the context's tokens are not a prefix of the whole
    text's (the tokenizer would merge across the boundary, so the split would be one it never makes).
    """
    if any(not choice.strip() for choice in choices):
        raise ScoringError(f"an answer choice is empty ({list(choices)!r}); choices must be non-empty text")
    head = context.rstrip()
    head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    continuations = []
    for choice in choices:
        _, continuation = _continuation_text(context, delimiter, choice)
        whole = tokenizer(head + continuation, add_special_tokens=False)["input_ids"]
        if whole[:len(head_ids)] != head_ids:
            raise ScoringError(f"the context {head[-30:]!r} does not tokenise as a prefix of itself + "
                               f"{continuation!r}: end the prompt on a word or punctuation the answer cannot merge "
                               "with (e.g. 'Answer:')")
        if len(whole) == len(head_ids):
            raise ScoringError(f"the choice {choice!r} tokenises to nothing after the prompt")
        continuations.append(whole[len(head_ids):])
    return head_ids, continuations
