"""A causal text LLM behind the same prompts as the speech models: the placeholder is filled with text.

This is the LLM half of every cascade and of the oracle. It uses plain forward hooks through the same
kind of site table as the speech adapters (`llm.embed`, `llm.layers.{i}`), so one hook idiom serves all.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from interp.models.base import CausalLMReadout, Site, llm_sites
from interp.models.encoded import on_device, right_pad, score_after_prompt
from interp.models.prompting import (
    chat_text,
    choice_delimiter,
    continuation_ids,
    encode_context,
    split_prompt,
    with_bos,
)

__all__ = ["TextLM"]


class TextLM(CausalLMReadout):
    """A causal LM with its tokenizer. `text` replaces the prompt's AUDIO_PLACEHOLDER."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, name: str) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad)

    def render(self, prompt: str, text: str) -> str:
        """The exact text the LLM reads: the prompt through its chat template, `text` in the placeholder."""
        before, after = split_prompt(chat_text(self.tokenizer, prompt))
        return before + text + after

    def prompt_ids(self, text: str, prompt: str) -> list[int]:
        """Token ids of the full input (chat template, generation prompt, BOS as the tokenizer adds it) with
        `text` in the placeholder."""
        return encode_context(self.tokenizer, self.render(prompt, text))

    @torch.no_grad()
    def score_choices(self, text: str, prompt: str, choices: Sequence[str]) -> np.ndarray:
        """(choices,) float64 summed log-probabilities of each choice as a continuation of the filled prompt
        (interp.models.prompting: the tokens of prompt + " choice" after the prompt's own).

        The prompt runs once; its KV cache is repeated for the choices' remaining tokens, so a 2-way choice
        of one-token answers costs one forward pass, not two.
        """
        context, ids = continuation_ids(self.tokenizer, self.render(prompt, text), choices,
                                        delimiter=choice_delimiter(prompt))
        head = with_bos(self.tokenizer, context)
        prompt_out = self.model(**on_device({"input_ids": torch.tensor([head])}, self.model), use_cache=True)
        return score_after_prompt(self.model, prompt_out, len(head), ids, pad_id=self.pad_id).numpy()

    @torch.no_grad()
    def generate(self, text: str, prompt: str, *, max_new_tokens: int = 32) -> str:
        """Greedy answer to the prompt with `text` in the placeholder."""
        input_ids, attention_mask = right_pad([self.prompt_ids(text, prompt)], pad_id=self.pad_id)
        output = self.model.generate(**on_device({"input_ids": input_ids, "attention_mask": attention_mask},
                                                 self.model),
                                     do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=self.pad_id)
        return self.tokenizer.decode(output[0, input_ids.shape[1]:], skip_special_tokens=True).strip()

    def sites(self) -> dict[str, Site]:
        return llm_sites(self.model.model.layers)

