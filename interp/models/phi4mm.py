"""Phi-4-multimodal (audio only) behind the SpeechLM protocol: `<|audio|>` expanded per embedding, positions by id.

Module paths are those of transformers 5.24's native `Phi4MultimodalForCausalLM` (not the remote-code
checkpoint layout); decoder and conformer layers return a Tensor, not a tuple.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from transformers import Phi4MultimodalFeatureExtractor, Phi4MultimodalForCausalLM, PreTrainedTokenizerBase

from interp.data.audio import SAMPLE_RATE
from interp.errors import InterpError
from interp.models.base import CausalLMReadout, Site, SpeechBatch, llm_sites
from interp.models.encoded import EncodedSpeechLM, audio_spans, durations, right_pad
from interp.models.prompting import with_bos

__all__ = ["Phi4MMSpeechLM"]


class Phi4MMSpeechLM(CausalLMReadout, EncodedSpeechLM):
    """A Phi4MultimodalForCausalLM with its tokenizer and audio feature extractor, as a SpeechLM.

    The model's own audio token is `<|audio|>`, the project's placeholder too. It is expanded here to
    `audio_embed_sizes` copies, exactly as `Phi4MultimodalProcessor.replace_audio_token` does (transformers
    5.24): the processor itself is not used because its constructor demands an image processor (an
    ImageProcessingMixin, a stub without Pillow; Phi-4's own one needs torchvision) that audio never
    touches. One position per 8 fbank frames
    (10 ms hop): 12.5 positions per second. Images are never passed, so the speech projection is the one used.
    Past 40 s (500 rows) the conformer folds a clip into 500-row chunks, and its layer sites come back so.
    """

    def __init__(self, model: Phi4MultimodalForCausalLM, tokenizer: PreTrainedTokenizerBase,
                 feature_extractor: Phi4MultimodalFeatureExtractor, *, name: str,
                 weights: dict[str, str] | None = None) -> None:
        self.audio_token = str(tokenizer.audio_token)
        self.audio_token_id = int(model.config.audio_config.audio_token_id)
        if tokenizer.convert_tokens_to_ids(self.audio_token) != self.audio_token_id:
            raise InterpError(f"the tokenizer's {self.audio_token} is not token {self.audio_token_id}, where the "
                              f"model expects audio")
        reduction = model.config.audio_config.time_reduction
        if feature_extractor.audio_compression_rate * feature_extractor.audio_downsample_rate != reduction:
            raise InterpError(f"the feature extractor counts one audio embedding per "
                              f"{feature_extractor.audio_compression_rate * feature_extractor.audio_downsample_rate} "
                              f"frames but the encoder emits one per {reduction}")
        self.model = model.eval()
        self.weights = weights  # whether the speech LoRA is on (interp.models.base.describe_model records it)
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.name = name
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)

    @property
    def _row_seconds(self) -> float:
        """Audio per conformer row, projector row and audio position: the fbank hop times the time reduction."""
        hop = self.feature_extractor.hop_length / self.feature_extractor.sampling_rate
        return hop * self.model.config.audio_config.time_reduction

    _typed_content = True

    @property
    def audio_markup(self) -> str:
        return self.audio_token

    def _encode(self, audio: Sequence[np.ndarray], parts: Sequence[tuple[str, str]],
                suffixes: Sequence[Sequence[int]]) -> SpeechBatch:
        """Batch with each prompt's placeholder expanded to its audio embedding count, plus optional suffix tokens."""
        clips = [np.asarray(a, dtype=np.float32) for a in audio]
        window = self.feature_extractor.win_length
        if any(len(clip) < window for clip in clips):
            raise InterpError(f"Phi-4-multimodal needs at least {window} samples of audio (one fbank window)")
        features = self.feature_extractor(clips, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        sizes = features["audio_embed_sizes"].tolist()
        texts = [before + self.audio_token * size + after for (before, after), size in zip(parts, sizes)]
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        rows = [with_bos(self.tokenizer, ids) + list(suffix) for ids, suffix in zip(encoded, suffixes)]
        input_ids, attention_mask = right_pad(rows, pad_id=self.pad_id)
        audio_mask = input_ids == self.audio_token_id
        audio_span = audio_spans(audio_mask, durations(clips), seconds_per_position=self._row_seconds)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask,
                  "audio_input_features": features["audio_input_features"],
                  "audio_embed_sizes": features["audio_embed_sizes"]}
        if "audio_attention_mask" in features:  # only returned for batches of several clips
            inputs["audio_attention_mask"] = features["audio_attention_mask"]
        return SpeechBatch(inputs=inputs, input_ids=input_ids, attention_mask=attention_mask, audio_mask=audio_mask,
                           audio_span=audio_span)

    def sites(self) -> dict[str, Site]:
        speech, llm = self.model.model.embed_tokens_extend.audio_embed, self.model.model
        table = {f"audio.layers.{i}": Site(f"audio.layers.{i}", layer, seconds_per_row=self._row_seconds)
                 for i, layer in enumerate(speech.encoder.encoders)}
        table["projector"] = Site("projector", speech.down_proj_for_speech, seconds_per_row=self._row_seconds)
        table.update(llm_sites(llm.layers))
        return table
