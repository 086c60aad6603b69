"""What every speech adapter shares once it can encode (audio, prompt, suffix tokens) into one batch.

Adapters differ in how audio becomes positions; scoring answers, padding and timing audio positions
are the same for all, so they live here once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

from interp.data.audio import SAMPLE_RATE
from interp.errors import InterpError
from interp.models.base import SpeechBatch
from interp.models.prompting import (
    PlainPrompt,
    ScoringError,
    chat_text,
    choice_delimiter,
    continuation_ids,
    split_prompt,
)

__all__ = ["EncodedSpeechLM", "right_pad", "audio_spans", "durations", "on_device", "score_after_prompt"]


def right_pad(rows: Sequence[Sequence[int]], *, pad_id: int) -> tuple[Tensor, Tensor]:
    """(input_ids, attention_mask), both (batch, longest) int64, padded on the right.

    Right padding keeps every real token at the position it has alone, so causal activations of an item
    do not depend on the batch it is in.
    """
    width = max(map(len, rows))
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, : len(row)] = torch.tensor(list(row), dtype=torch.long)
        attention_mask[index, : len(row)] = 1
    return input_ids, attention_mask


def audio_spans(audio_mask: Tensor, durations: Sequence[float], *, seconds_per_position: float) -> np.ndarray:
    """(batch, seq, 2) float64 (t_start, t_end) of the audio each audio position covers; NaN elsewhere.

    Position k of an item covers [k·s, (k+1)·s) seconds, cut at the item's duration.
    """
    spans = np.full((*audio_mask.shape, 2), np.nan)
    for index, duration in enumerate(durations):
        positions = audio_mask[index].nonzero().squeeze(-1).numpy()
        edges = np.minimum(np.arange(len(positions) + 1) * seconds_per_position, duration)
        spans[index, positions] = np.stack([edges[:-1], edges[1:]], axis=1)
    return spans


def on_device(inputs: dict[str, Tensor], model: torch.nn.Module) -> dict[str, Tensor]:
    """The batch's tensors on the model's device (batches are built on the CPU)."""
    device = next(model.parameters()).device
    return {key: value.to(device) for key, value in inputs.items()}


def durations(audio: Sequence[np.ndarray]) -> list[float]:
    return [len(clip) / SAMPLE_RATE for clip in audio]


def score_after_prompt(language_model: torch.nn.Module, prompt_out: object, prompt_length: int,
                       ids: Sequence[Sequence[int]], *, pad_id: int) -> Tensor:
    """(choices,) float64 summed log-probabilities of each choice's token ids after a prompt already run.

    prompt_out is the causal LM's output on the prompt alone (batch 1, use_cache=True): its last logits score
    every choice's first token, and its KV cache, repeated once per choice, carries the choices' remaining
    tokens through one more pass of `language_model`. So the prompt (and its audio) runs once, not once per
    choice; the result equals a full pass over prompt + choice up to float rounding.
    """
    first = torch.log_softmax(prompt_out.logits[0, -1].double(), dim=-1)
    scores = torch.stack([first[choice[0]] for choice in ids]).cpu()
    if any(len(choice) > 1 for choice in ids):
        # choice tokens after the first: token t+1 is predicted from the logits at choice position t
        continuation, mask = right_pad(ids, pad_id=pad_id)
        cache = prompt_out.cache
        cache.batch_repeat_interleave(len(ids))
        attention_mask = torch.cat([torch.ones(len(ids), prompt_length, dtype=torch.long), mask], dim=1)
        logits = language_model(**on_device({"input_ids": continuation, "attention_mask": attention_mask},
                                            language_model), cache=cache).logits
        log_probs = torch.log_softmax(logits.double(), dim=-1).cpu()
        scores = scores + torch.stack([log_probs[row, torch.arange(len(choice) - 1), choice[1:]].sum()
                                       for row, choice in enumerate(ids)])
    return scores


class EncodedSpeechLM(ABC):
    """Base of the speech adapters: `prepare`, `render` and `score_choices` from one `_encode`.

    A prompt is rendered once into (text before, text after) the audio, as the model's release renders it;
    `_encode` puts the audio's positions between the two. `audio_markup` is what the release writes where the
    audio goes before its processor expands it (Ultravox: `<|audio|>`; Qwen2-Audio: its audio_bos/AUDIO/eos).
    """

    tokenizer: object
    model: torch.nn.Module
    pad_id: int
    audio_markup: str
    name: str
    _typed_content = False
    """True where the release's processor gives the template the user's content as typed parts (text, audio,
    text), and the template writes the audio's markup itself (Qwen2-Audio-Instruct, Phi-4-MM)."""

    _batch_listeners: tuple[Callable[[SpeechBatch], None], ...] = ()
    """Who hears of each batch (`observe_batches`); empty, on the class, unless a block is open."""

    @contextmanager
    def observe_batches(self, listener: Callable[[SpeechBatch], None]) -> Iterator[None]:
        """Within the block, listener(batch) hears of every batch this adapter builds (`prepare`, `scoring_batch`)
        or runs (`logits`), before the model sees it.

        The one hook point for edits at audio positions (activations.audio_positions): they learn each batch's
        audio_mask here instead of wrapping the adapter's methods. The listener is gone after the block.
        """
        self._batch_listeners = (*self._batch_listeners, listener)
        try:
            yield
        finally:
            self._batch_listeners = tuple(known for known in self._batch_listeners if known is not listener)
            if not self._batch_listeners:
                del self._batch_listeners  # back to the class's empty default: no trace on the instance

    def _announce(self, batch: SpeechBatch) -> SpeechBatch:
        for listener in self._batch_listeners:
            listener(batch)
        return batch

    def _parts(self, prompt: str) -> tuple[str, str]:
        """(text before, text after) the audio: the prompt through the chat template (a PlainPrompt as written)."""
        if not self._typed_content or isinstance(prompt, PlainPrompt) or not getattr(self.tokenizer,
                                                                                       "chat_template", None):
            return split_prompt(chat_text(self.tokenizer, prompt))
        return self._typed_parts(prompt)

    def _typed_parts(self, prompt: str) -> tuple[str, str]:
        """The release's rendering of typed content: the text around the slot, whitespace dropped, becomes text
        parts beside one audio part, and the template writes the markup (Qwen2-Audio: `Audio 1: <|audio_bos|>
        <|AUDIO|><|audio_eos|>\n`; Phi-4-MM: `<|audio|>`); the rendered text is split at the markup."""
        before, after = split_prompt(prompt)
        content = [{"type": "text", "text": before.strip()}] if before.strip() else []
        content.append({"type": "audio", "audio_url": "audio"})  # templates test the type or that the key exists
        if after.strip():
            content.append({"type": "text", "text": after.strip()})
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                  add_generation_prompt=True)
        if text.count(self.audio_markup) != 1:
            raise InterpError(f"{self.name}'s chat template does not write {self.audio_markup} once for an audio "
                              "part (is it the release's own template?)")
        head, tail = text.split(self.audio_markup)
        return head, tail

    def render(self, prompt: str) -> str:
        """The exact text the model reads, with `audio_markup` where its audio goes."""
        before, after = self._parts(prompt)
        return before + self.audio_markup + after

    @abstractmethod
    def _encode(self, audio: Sequence[np.ndarray], parts: Sequence[tuple[str, str]],
                suffixes: Sequence[Sequence[int]]) -> SpeechBatch:
        """Right-padded batch of (text before, audio, text after), each followed by its suffix token ids."""

    @torch.no_grad()
    def logits(self, batch: SpeechBatch) -> Tensor:
        """(batch, seq, vocab) float32: the model's forward on the batch's inputs."""
        self._announce(batch)
        return self.model(**on_device(batch.inputs, self.model)).logits.float()

    def prepare(self, audio: Sequence[np.ndarray], prompts: Sequence[str]) -> SpeechBatch:
        return self._announce(self._encode(audio, [self._parts(prompt) for prompt in prompts], [[] for _ in prompts]))

    def answer_context(self, prompt: str) -> str:
        """The text between the audio and the answer: the context of the continuation split."""
        return self._parts(prompt)[1]

    def scoring_batch(self, audio: np.ndarray, prompt: str, choices: Sequence[str]) -> tuple[
            SpeechBatch, list[list[int]]]:
        """(the batch of the prompt up to the answer, each choice's continuation ids): the text after the audio
        is the context of lm-evaluation-harness's continuation split (interp.models.prompting)."""
        before, after = self._parts(prompt)
        tail, ids = continuation_ids(self.tokenizer, after, choices, delimiter=choice_delimiter(prompt))
        batch = self._announce(self._encode([audio], [(before, after.rstrip())], [[]]))
        if tail and batch.input_ids[0, -len(tail):].tolist() != tail:
            raise ScoringError(f"{type(self).__name__} tokenised the text after the audio ({after.rstrip()!r}) "
                               "otherwise than alone, so the answer's tokens cannot be placed after it")
        return batch, ids

    @torch.no_grad()
    def score_choices(self, audio: np.ndarray, prompt: str, choices: Sequence[str]) -> np.ndarray:
        """(choices,) float64: summed log-probability of each choice as a continuation of the prompt. The audio
        and the prompt run once; the choices continue from the prompt's KV cache (see score_after_prompt)."""
        batch, ids = self.scoring_batch(audio, prompt, choices)
        prompt_out = self.model(**on_device(batch.inputs, self.model), use_cache=True)
        return score_after_prompt(self._text_model, prompt_out, batch.input_ids.shape[1], ids,
                                  pad_id=self.pad_id).numpy()

    @property
    def _text_model(self) -> torch.nn.Module:
        """What continues a prompt's KV cache with text tokens alone: the model itself where its forward takes
        text without audio (Qwen2-Audio, Phi-4-MM)."""
        return self.model

    @torch.no_grad()
    def generate(self, audio: np.ndarray, prompt: str, *, max_new_tokens: int = 32) -> str:
        """Greedy answer, for models whose own `generate` merges the audio (Qwen2-Audio, Phi-4-MM)."""
        batch = self.prepare([audio], [prompt])
        output = self.model.generate(**on_device(batch.inputs, self.model), max_new_tokens=max_new_tokens,
                                     do_sample=False, pad_token_id=self.pad_id)
        return self.tokenizer.decode(output[0, batch.input_ids.shape[1]:], skip_special_tokens=True).strip()
