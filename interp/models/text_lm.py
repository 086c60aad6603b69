"""A causal text LLM behind the same prompts as the speech models: the placeholder is filled with text.

This is the LLM half of every cascade and of the oracle. It uses plain forward hooks through the same
kind of site table as the speech adapters (`llm.embed`, `llm.layers.{i}`), so one hook idiom serves all.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from interp.models.base import Site, llm_sites
from interp.models.encoded import on_device, right_pad
from interp.models.prompting import chat_text, choice_token_ids, split_prompt

__all__ = ["TextLM"]


class TextLM:
    """A causal LM with its tokenizer. `text` replaces the prompt's AUDIO_PLACEHOLDER."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, name: str) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad)

    def prompt_ids(self, text: str, prompt: str) -> list[int]:
        """Token ids of the full input (chat template, generation prompt) with `text` in the placeholder."""
        before, after = split_prompt(chat_text(self.tokenizer, prompt))
        return self.tokenizer(before + text + after, add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def score_choices(self, text: str, prompt: str, choices: Sequence[str]) -> np.ndarray:
        """(choices,) float64 summed log-probabilities of each choice after the filled prompt.

        The prompt runs once; its KV cache is repeated for the choices' remaining tokens, so a 2-way choice
        of one-token answers costs one forward pass, not two.
        """
        head = self.prompt_ids(text, prompt)
        ids = choice_token_ids(self.tokenizer, choices)
        prompt_out = self.model(**on_device({"input_ids": torch.tensor([head])}, self.model), use_cache=True)
        first = torch.log_softmax(prompt_out.logits[0, -1].double(), dim=-1)
        scores = torch.stack([first[choice[0]] for choice in ids]).cpu()
        if any(len(choice) > 1 for choice in ids):
            # choice tokens after the first: token t+1 is predicted from the logits at choice position t
            continuation, mask = right_pad(ids, pad_id=self.pad_id)
            cache = prompt_out.cache
            cache.batch_repeat_interleave(len(ids))
            attention_mask = torch.cat([torch.ones(len(ids), len(head), dtype=torch.long), mask], dim=1)
            logits = self.model(**on_device({"input_ids": continuation, "attention_mask": attention_mask}, self.model),
                                cache=cache).logits
            log_probs = torch.log_softmax(logits.double(), dim=-1).cpu()
            scores = scores + torch.stack([log_probs[row, torch.arange(len(choice) - 1), choice[1:]].sum()
                                           for row, choice in enumerate(ids)])
        return scores.cpu().numpy()

    @torch.no_grad()
    def generate(self, text: str, prompt: str, *, max_new_tokens: int = 32) -> str:
        """Greedy answer to the prompt with `text` in the placeholder."""
        input_ids, attention_mask = right_pad([self.prompt_ids(text, prompt)], pad_id=self.pad_id)
        output = self.model.generate(**on_device({"input_ids": input_ids, "attention_mask": attention_mask}, self.model),
                                     do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=self.pad_id)
        return self.tokenizer.decode(output[0, input_ids.shape[1]:], skip_special_tokens=True).strip()

    def sites(self) -> dict[str, Site]:
        return llm_sites(self.model.model.layers)

    @property
    def final_norm(self) -> nn.Module:
        return self.model.model.norm

    @property
    def unembed(self) -> nn.Module:
        return self.model.lm_head

