"""Qwen2-Audio behind the SpeechLM protocol: its own processor expands the audio token, positions by token id.

Module paths are those of transformers 5.24 (the language model sits at `model.model.language_model`
from 5.10 on; decoder layers return a Tensor, not a tuple).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn
from transformers import Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor

from interp.data.audio import SAMPLE_RATE
from interp.errors import InterpError
from interp.models.base import Site, SpeechBatch, llm_sites
from interp.models.encoded import EncodedSpeechLM, audio_spans, durations, right_pad

__all__ = ["Qwen2AudioSpeechLM"]

_MEL_SECONDS = 0.01  # Whisper's mel hop: 160 samples at 16 kHz
_FRAME_SECONDS = 2 * _MEL_SECONDS  # the encoder's second conv has stride 2
_TOKEN_SECONDS = 2 * _FRAME_SECONDS  # then an average pool of 2 before the projector


class Qwen2AudioSpeechLM(EncodedSpeechLM):
    """A Qwen2AudioForConditionalGeneration with its processor, as a SpeechLM.

    The prompt's placeholder becomes `<|audio_bos|><|AUDIO|><|audio_eos|>`, which the processor expands
    to one `<|AUDIO|>` per audio embedding (25 per second); audio positions are those tokens. The
    processor pads every clip to the feature extractor's 30 s window (the encoder only accepts that
    length), so longer clips are refused rather than truncated.
    """

    def __init__(self, model: Qwen2AudioForConditionalGeneration, processor: Qwen2AudioProcessor, *,
                 name: str) -> None:
        if processor.audio_token_id != model.config.audio_token_id:
            raise InterpError(f"the processor's {processor.audio_token} is token {processor.audio_token_id} but the "
                              f"model expects audio at token {model.config.audio_token_id}")
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.feature_extractor = processor.feature_extractor
        self.name = name
        self.audio_token_id = int(processor.audio_token_id)
        self.audio_markup = processor.audio_bos_token + processor.audio_token + processor.audio_eos_token
        self.pad_id = int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None
                          else self.tokenizer.eos_token_id)

    _typed_content = True

    def _encode(self, audio: Sequence[np.ndarray], parts: Sequence[tuple[str, str]],
                suffixes: Sequence[Sequence[int]]) -> SpeechBatch:
        """Batch through the processor (which expands the audio token), plus optional suffix tokens."""
        clips = [np.asarray(a, dtype=np.float32) for a in audio]
        limit = self.feature_extractor.n_samples
        if any(len(clip) > limit for clip in clips):
            raise InterpError(f"Qwen2-Audio hears at most {limit / SAMPLE_RATE:g} s per clip; its processor would "
                              f"silently cut longer audio")
        texts = [before + self.audio_markup + after for before, after in parts]
        processed = self.processor(text=texts, audio=clips, sampling_rate=SAMPLE_RATE, padding=True,
                                   padding_side="right", return_tensors="pt")
        lengths = processed["attention_mask"].sum(-1).tolist()
        rows = [ids[:length].tolist() + list(suffix)
                for ids, length, suffix in zip(processed["input_ids"], lengths, suffixes)]
        input_ids, attention_mask = right_pad(rows, pad_id=self.pad_id)
        audio_mask = input_ids == self.audio_token_id
        audio_span = audio_spans(audio_mask, durations(clips), seconds_per_position=_TOKEN_SECONDS)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask,
                  "input_features": processed["input_features"],
                  "feature_attention_mask": processed["feature_attention_mask"]}
        return SpeechBatch(inputs=inputs, input_ids=input_ids, attention_mask=attention_mask, audio_mask=audio_mask,
                           audio_span=audio_span)

    def sites(self) -> dict[str, Site]:
        tower, llm = self.model.model.audio_tower, self.model.model.language_model
        table = {f"audio.layers.{i}": Site(f"audio.layers.{i}", layer, seconds_per_row=_FRAME_SECONDS)
                 for i, layer in enumerate(tower.layers)}
        table["projector"] = Site("projector", self.model.model.multi_modal_projector, seconds_per_row=_TOKEN_SECONDS)
        table.update(llm_sites(llm.layers))
        return table

    @property
    def final_norm(self) -> nn.Module:
        return self.model.model.language_model.norm

    @property
    def unembed(self) -> nn.Module:
        return self.model.lm_head
