"""Tiny random instances of the real architectures, built offline, for unit tests (seconds, no download).

Each has the real classes and the real wiring (placeholder spans, sites, chat template); only sizes
and weights are made up. The tokenizer is a small byte-level BPE trained here on a fixed text, with a
ChatML template like SmolLM2's.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, WhisperConfig, WhisperFeatureExtractor

from interp.models.text_lm import TextLM
from interp.models.ultravox import UltravoxConfig, UltravoxModel
from interp.models.ultravox_lm import UltravoxSpeechLM

__all__ = ["tiny_tokenizer", "tiny_ultravox_config", "tiny_ultravox", "tiny_text_lm", "TINY_MODELS"]

_CORPUS = (
    "the movie was wonderful and i loved it . the service was terrible . is a dog an animal ? yes no "
    "positive negative world sports business sci/tech answer with one word . what did you hear ? "
    "shares rose after the report . the team won the cup final . researchers unveiled a new chip . "
)
_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A 400-token byte-level BPE with ChatML special tokens; eos is <|im_end|> as in SmolLM2-Instruct."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                      pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    wrapped.chat_template = _CHAT_TEMPLATE
    return wrapped


def tiny_ultravox_config(*, vocab_size: int) -> UltravoxConfig:
    audio = WhisperConfig(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                          decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, num_mel_bins=80,
                          vocab_size=vocab_size, max_source_positions=1500, pad_token_id=0, bos_token_id=0,
                          eos_token_id=0, decoder_start_token_id=0)
    text = LlamaConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=1024,
                       tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return UltravoxConfig(audio, text, hidden_size=64, stack_factor=8, projector_ln_mid=True)


def _seeded(build, seed: int):
    """Build a model with torch's global generator seeded, then restore it (module initialisers draw
    from the global generator; library code must not leave it changed)."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return build()
    finally:
        torch.random.set_rng_state(state)


def tiny_text_lm(*, seed: int = 0) -> TextLM:
    """`tiny-llama`: the text LLM of tiny-ultravox alone, for cascade and oracle tests."""
    tokenizer = tiny_tokenizer()
    config = tiny_ultravox_config(vocab_size=len(tokenizer)).text_config
    return TextLM(_seeded(lambda: LlamaForCausalLM(config), seed), tokenizer, name="tiny-llama")


def tiny_ultravox(*, seed: int = 0) -> UltravoxSpeechLM:
    """`tiny-ultravox`: 2 encoder layers, the real projector, a 3-layer Llama; seeded random weights."""
    tokenizer = tiny_tokenizer()
    model = _seeded(lambda: UltravoxModel(tiny_ultravox_config(vocab_size=len(tokenizer))), seed)
    return UltravoxSpeechLM(model, tokenizer, WhisperFeatureExtractor(feature_size=80), name="tiny-ultravox")


TINY_MODELS = {"tiny-ultravox": tiny_ultravox, "tiny-llama": tiny_text_lm}
