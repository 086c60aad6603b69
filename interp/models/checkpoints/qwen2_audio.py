"""Qwen2-Audio checkpoints (`qwen2-audio:PATH`): Qwen2AudioForConditionalGeneration with its processor."""

from __future__ import annotations

from transformers import (
    PreTrainedTokenizerBase,
    Qwen2AudioForConditionalGeneration,
    Qwen2AudioProcessor,
)

from interp.models.checkpoints.folders import (
    checkpoint_folder,
    expect_model_type,
    pretrained,
    tokenizer_of,
)
from interp.models.checkpoints.options import LoadOptions
from interp.models.checkpoints.specs import spec_path
from interp.models.qwen2_audio import Qwen2AudioSpeechLM

__all__ = ["load_qwen2_audio", "load_qwen2_audio_tokenizer"]


def load_qwen2_audio(spec: str, rest: str, options: LoadOptions) -> Qwen2AudioSpeechLM:
    """The Qwen2-Audio a spec names (`rest`: the folder), with its processor's chat template."""
    folder = checkpoint_folder(spec_path(rest), "Qwen2-Audio")
    expect_model_type(folder, "qwen2_audio", what="a Qwen2AudioForConditionalGeneration checkpoint")
    model = pretrained(Qwen2AudioForConditionalGeneration, folder, options)
    processor = Qwen2AudioProcessor.from_pretrained(folder, local_files_only=True)
    # Qwen2-Audio-Instruct may keep its template on the processor only (chat_template.json). Without such a
    # file the processor holds its class default, which a base model (no chat) must not get.
    stored = any((folder / name).is_file() for name in ("chat_template.json", "chat_template.jinja"))
    if stored and not getattr(processor.tokenizer, "chat_template", None):
        processor.tokenizer.chat_template = processor.chat_template
    return Qwen2AudioSpeechLM(model, processor, name=spec)


def load_qwen2_audio_tokenizer(spec: str, rest: str) -> PreTrainedTokenizerBase:
    """The tokenizer of the Qwen2-Audio a spec names, no weight read."""
    return tokenizer_of(checkpoint_folder(spec_path(rest), "Qwen2-Audio"))
