"""Prompt rendering against the releases: each tiny speech LM renders a prompt to exactly the text its release's own
code writes (the chat template of the release, applied as its processor applies it), and Llama-3.1's BOS once."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from transformers import Qwen2AudioProcessor, WhisperFeatureExtractor

from interp.models.base import AUDIO_PLACEHOLDER
from interp.models.tiny import (
    tiny_llama3_tokenizer,
    tiny_phi4mm,
    tiny_phi4mm_tokenizer,
    tiny_qwen2_audio,
    tiny_qwen2_audio_tokenizer,
    tiny_ultravox,
)

QUESTION = "What is the sentiment of this review?"
PROMPT = f"{AUDIO_PLACEHOLDER}\n{QUESTION}"

# The human-checkable references: what each release's code makes of PROMPT, before it expands the audio.
# Ultravox (fixie-ai/ultravox, ultravox/model/ultravox_pipeline.py and ultravox_processing.py): the prompt is the
# user's string content, Llama-3.1-Instruct's template wraps it, and the processor splits the text at the literal
# `<|audio|>`, tokenising it without special tokens (the template wrote the BOS).
ULTRAVOX_TEXT = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                 "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
                 "<|start_header_id|>user<|end_header_id|>\n\n<|audio|>\nWhat is the sentiment of this review?"
                 "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
# Qwen2-Audio-7B-Instruct (Qwen2AudioProcessor.apply_chat_template with an audio part, then a text part).
QWEN2_AUDIO_TEXT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\nAudio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
                    "What is the sentiment of this review?<|im_end|>\n<|im_start|>assistant\n")
# Phi-4-multimodal-instruct (transformers' native Phi4MultimodalProcessor: one `<|audio|>` for the audio part).
PHI4MM_TEXT = "<|user|><|audio|>What is the sentiment of this review?<|end|><|assistant|>"

# Llama-3.1-8B-Instruct's tokenizer_config.json chat template (see interp/models/tiny.py for where it was read).
LLAMA31_TEMPLATE_MD5 = "81de1619b73b2fdd744897ca14b4f0ad"


def _typed_content() -> list[dict[str, object]]:
    """The user's turn as the releases' processors take it: the audio part, then the question."""
    return [{"type": "audio", "audio": np.zeros(16000, dtype=np.float32)}, {"type": "text", "text": QUESTION}]


def _ultravox_release_text() -> str:
    """fixie-ai's pipeline: the prompt with `<|audio|>` as the user's string content, through the LLM's template."""
    return tiny_llama3_tokenizer().apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False,
                                                       add_generation_prompt=True)


def _qwen2_audio_release_text() -> str:
    """Qwen2AudioProcessor.apply_chat_template, as the model card calls it."""
    processor = Qwen2AudioProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80),
                                    tokenizer=tiny_qwen2_audio_tokenizer())
    return processor.apply_chat_template([{"role": "user", "content": _typed_content()}], tokenize=False,
                                         add_generation_prompt=True)


def _phi4mm_release_text() -> str:
    """The native processor's rendering. Phi4MultimodalProcessor cannot be built here (its constructor demands a
    real image processor, which needs torchvision and Pillow); ProcessorMixin.apply_chat_template renders the same
    Jinja template over the same messages as the tokenizer's apply_chat_template does."""
    return tiny_phi4mm_tokenizer().apply_chat_template([{"role": "user", "content": _typed_content()}],
                                                       tokenize=False, add_generation_prompt=True)


RELEASES = {"tiny-ultravox": (tiny_ultravox, _ultravox_release_text, ULTRAVOX_TEXT),
            "tiny-qwen2-audio": (tiny_qwen2_audio, _qwen2_audio_release_text, QWEN2_AUDIO_TEXT),
            "tiny-phi4mm": (tiny_phi4mm, _phi4mm_release_text, PHI4MM_TEXT)}


@pytest.fixture(scope="module")
def systems() -> dict[str, object]:
    return {name: build(seed=0) for name, (build, _, _) in RELEASES.items()}


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    return 0.1 * np.random.default_rng(0).standard_normal(16000).astype(np.float32)


def test_tiny_ultravox_carries_llama31_instructs_template_verbatim() -> None:
    """The Llama-3.1 template is byte for byte the release's (md5 of the vendored copy)."""
    template = tiny_llama3_tokenizer().chat_template
    assert hashlib.md5(template.encode("utf-8")).hexdigest() == LLAMA31_TEMPLATE_MD5


def test_tiny_qwen2_audio_carries_the_processors_template() -> None:
    """Tokenizer and processor hold Qwen2-Audio-Instruct's template (transformers' class default for the release)."""
    tokenizer = tiny_qwen2_audio_tokenizer()
    processor = Qwen2AudioProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer)
    assert tokenizer.chat_template == processor.chat_template == Qwen2AudioProcessor.default_chat_template.fget(None)


@pytest.mark.parametrize("name", RELEASES)
def test_reference_text_is_what_the_release_renders(name: str) -> None:
    """The literal reference equals the release's template applied through the release's own API."""
    _, release_text, expected = RELEASES[name]
    assert release_text() == expected


@pytest.mark.parametrize("name", RELEASES)
def test_render_is_the_releases_text(name: str, systems: dict[str, object]) -> None:
    """`render` gives exactly the text the release's code gives the model, audio markup included."""
    assert systems[name].render(PROMPT) == RELEASES[name][2]


def test_ultravox_input_has_one_bos_where_the_release_has_one(systems: dict[str, object], audio: np.ndarray) -> None:
    """Llama-3.1's template writes <|begin_of_text|> and the tokenizer would add another: the input has one, as
    fixie-ai's processor (add_special_tokens=False on the template's text) gives."""
    system = systems["tiny-ultravox"]
    tokenizer = system.tokenizer
    assert tokenizer("a")["input_ids"][0] == tokenizer.bos_token_id  # the tokenizer adds BOS, as Llama-3's does
    release_ids = tokenizer(ULTRAVOX_TEXT.split(AUDIO_PLACEHOLDER)[0], add_special_tokens=False)["input_ids"]
    assert release_ids.count(tokenizer.bos_token_id) == 1
    batch = system.prepare([audio], [PROMPT])
    ids = batch.input_ids[0][batch.attention_mask[0].bool()].tolist()
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id


def test_qwen2_audio_has_no_bos_as_qwen2s_tokenizer(systems: dict[str, object]) -> None:
    """Qwen2's tokenizer has no BOS token, so none can be doubled."""
    assert systems["tiny-qwen2-audio"].tokenizer.bos_token is None
