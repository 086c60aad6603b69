"""Ultravox behind the SpeechLM protocol: Whisper features (no padding to 30 s), placeholder spans, sites."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase, WhisperFeatureExtractor

from interp.data.audio import SAMPLE_RATE
from interp.models.base import AUDIO_PLACEHOLDER, Site, SpeechBatch, llm_sites
from interp.models.encoded import EncodedSpeechLM, audio_spans, durations, on_device, right_pad
from interp.models.prompting import encode_context
from interp.models.ultravox import ENCODER_DOWNSAMPLING, UltravoxModel, audio_token_count

__all__ = ["UltravoxSpeechLM"]

_MEL_SECONDS = 0.01  # Whisper's mel hop: 160 samples at 16 kHz


class UltravoxSpeechLM(EncodedSpeechLM):
    """An UltravoxModel with its tokenizer and feature extractor, as a SpeechLM.

    The placeholder token is the tokenizer's eos (as in fixie-ai's processor); audio positions are
    found by start index and length, never by token id. As in fixie-ai's processor, the literal `<|audio|>`
    sits in the user's message inside the LLM's chat template (Llama-3.1's for the releases).
    """

    audio_markup = AUDIO_PLACEHOLDER

    def __init__(self, model: UltravoxModel, tokenizer: PreTrainedTokenizerBase,
                 feature_extractor: WhisperFeatureExtractor, *, name: str,
                 weights: dict[str, str] | None = None) -> None:
        self.model = model.eval()
        self.weights = weights  # fingerprint of weights its name does not fix (interp.models.base.describe_model)
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.name = name
        self.placeholder_id = int(tokenizer.eos_token_id)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)

    @property
    def _stack_factor(self) -> int:
        return self.model.config.stack_factor

    def _encode(self, audio: Sequence[np.ndarray], parts: Sequence[tuple[str, str]],
                suffixes: Sequence[Sequence[int]]) -> SpeechBatch:
        """Batch with each prompt's placeholder replaced by its audio span, plus optional suffix tokens."""
        features = self.feature_extractor(
            [np.asarray(a, dtype=np.float32) for a in audio], sampling_rate=SAMPLE_RATE, padding="longest",
            pad_to_multiple_of=self.feature_extractor.hop_length, truncation=False, return_attention_mask=True,
            return_tensors="pt")
        audio_lens = features["attention_mask"].sum(-1)
        rows, starts, lengths = [], [], []
        for (before, after), mel_frames, suffix in zip(parts, audio_lens.tolist(), suffixes):
            head = encode_context(self.tokenizer, before)
            tail = self.tokenizer(after, add_special_tokens=False)["input_ids"]
            length = audio_token_count(mel_frames, stack_factor=self._stack_factor)
            rows.append(head + [self.placeholder_id] * length + tail + list(suffix))
            starts.append(len(head))
            lengths.append(length)
        input_ids, attention_mask = right_pad(rows, pad_id=self.pad_id)
        audio_mask = torch.zeros(input_ids.shape, dtype=torch.bool)
        for index, (start, length) in enumerate(zip(starts, lengths)):
            audio_mask[index, start:start + length] = True
        audio_span = audio_spans(audio_mask, durations(audio),
                                 seconds_per_position=_MEL_SECONDS * ENCODER_DOWNSAMPLING * self._stack_factor)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "audio_values": features["input_features"],
                  "audio_lens": audio_lens, "audio_token_start_idx": torch.tensor(starts),
                  "audio_token_len": torch.tensor(lengths)}
        return SpeechBatch(inputs=inputs, input_ids=input_ids, attention_mask=attention_mask, audio_mask=audio_mask,
                           audio_span=audio_span)

    def sites(self) -> dict[str, Site]:
        tower, llm = self.model.audio_tower, self.model.language_model.model
        frame_seconds = _MEL_SECONDS * ENCODER_DOWNSAMPLING
        table = {f"audio.layers.{i}": Site(f"audio.layers.{i}", layer, seconds_per_row=frame_seconds)
                 for i, layer in enumerate(tower.layers)}
        table["projector"] = Site("projector", self.model.multi_modal_projector,
                                  seconds_per_row=frame_seconds * self._stack_factor)
        table.update(llm_sites(llm.layers))
        return table

    @property
    def final_norm(self) -> nn.Module:
        return self.model.language_model.model.norm

    @property
    def unembed(self) -> nn.Module:
        return self.model.language_model.lm_head

    @property
    def _text_model(self) -> nn.Module:
        return self.model.language_model  # UltravoxModel's forward expects audio

    @torch.no_grad()
    def generate(self, audio: np.ndarray, prompt: str, *, max_new_tokens: int = 32) -> str:
        batch = self.prepare([audio], [prompt])
        inputs = on_device(batch.inputs, self.model)
        embeds = self.model.embed(inputs["input_ids"], inputs["audio_values"], inputs["audio_lens"],
                                  inputs["audio_token_start_idx"], inputs["audio_token_len"])
        output = self.model.language_model.generate(
            inputs_embeds=embeds, attention_mask=inputs["attention_mask"], max_new_tokens=max_new_tokens,
            do_sample=False, pad_token_id=self.pad_id)
        return self.tokenizer.decode(output[0], skip_special_tokens=True).strip()
