"""Prompts and answer scoring shared by end-to-end models and cascades, so both read the same text.

A prompt is the user's message with one AUDIO_PLACEHOLDER; the LLM's chat template (when it has one)
wraps it and opens the assistant's turn. Forced-choice scoring follows one length policy everywhere:
the score of a choice is the SUM of its tokens' log-probabilities after the prompt (no length
normalisation), so longer answers are not favoured; tasks keep their choices short and comparable.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from interp.errors import InterpError
from interp.models.base import AUDIO_PLACEHOLDER

__all__ = ["PlainPrompt", "split_prompt", "chat_text", "choice_token_ids"]


class PlainPrompt(str):
    """A prompt given to the model exactly as written, without its chat template.

    Small instruct models answer few-shot completions ("Review: …\nAnswer: positive") far better than the
    same question in a chat turn; the type carries that choice to every adapter and to the cascades alike.
    """


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


def choice_token_ids(tokenizer: PreTrainedTokenizerBase, choices: Sequence[str]) -> list[list[int]]:
    """Token ids of each answer string as the model would write it right after the prompt."""
    ids = [tokenizer(choice, add_special_tokens=False)["input_ids"] for choice in choices]
    if any(not choice for choice in ids):
        raise InterpError("an answer choice tokenises to nothing; choices must be non-empty text")
    return ids
