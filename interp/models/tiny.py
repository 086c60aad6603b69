"""Tiny random instances of the real architectures, built offline, for unit tests (seconds, no download) and,
saved as checkpoint folders (save_tiny_checkpoints), for rehearsing a real study (scripts/reproduce_paper.py).

Each has the real classes and the real wiring (placeholder spans, sites, chat template); only sizes
and weights are made up. The tokenizers are small byte-level BPEs trained here on a fixed text, with
each model's special tokens and chat template.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    Phi4MultimodalAudioConfig,
    Phi4MultimodalConfig,
    Phi4MultimodalFeatureExtractor,
    Phi4MultimodalForCausalLM,
    Phi4MultimodalVisionConfig,
    PreTrainedTokenizerFast,
    Qwen2AudioConfig,
    Qwen2AudioEncoderConfig,
    Qwen2AudioForConditionalGeneration,
    Qwen2AudioProcessor,
    Qwen2Config,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)

from interp.models.phi4mm import Phi4MMSpeechLM
from interp.models.qwen2_audio import Qwen2AudioSpeechLM
from interp.models.base import build_seeded
from interp.models.text_lm import TextLM
from interp.models.ultravox import UltravoxConfig, UltravoxModel
from interp.models.ultravox_lm import UltravoxSpeechLM

__all__ = ["tiny_tokenizer", "tiny_ultravox_config", "tiny_ultravox", "tiny_text_lm", "tiny_qwen2_audio_tokenizer",
           "tiny_qwen2_audio_config", "tiny_qwen2_audio", "tiny_phi4mm_tokenizer", "tiny_phi4mm_config", "tiny_phi4mm",
           "tiny_whisper", "save_tiny_checkpoints", "TINY_MODELS"]

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


def tiny_text_lm(*, seed: int = 0) -> TextLM:
    """`tiny-llama`: the text LLM of tiny-ultravox alone, for cascade and oracle tests."""
    tokenizer = tiny_tokenizer()
    config = tiny_ultravox_config(vocab_size=len(tokenizer)).text_config
    return TextLM(build_seeded(lambda: LlamaForCausalLM(config), seed=seed), tokenizer, name="tiny-llama")


def tiny_ultravox(*, seed: int = 0) -> UltravoxSpeechLM:
    """`tiny-ultravox`: 2 encoder layers, the real projector, a 3-layer Llama; seeded random weights."""
    tokenizer = tiny_tokenizer()
    model = build_seeded(lambda: UltravoxModel(tiny_ultravox_config(vocab_size=len(tokenizer))), seed=seed)
    return UltravoxSpeechLM(model, tokenizer, WhisperFeatureExtractor(feature_size=80), name="tiny-ultravox")


_PHI4MM_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)


def _tiny_bpe(special_tokens: list[str], **tokens: str | dict[str, str]) -> PreTrainedTokenizerFast:
    """tiny_tokenizer's 400-token byte-level BPE with other special tokens (ids in list order, from 0);
    `tokens` are the wrapper's named tokens (bos_token=..., extra_special_tokens={...})."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **tokens)


def tiny_qwen2_audio_tokenizer() -> PreTrainedTokenizerFast:
    """The tiny BPE with Qwen2-Audio's audio tokens (named, as Qwen2AudioProcessor looks them up) and ChatML."""
    wrapped = _tiny_bpe(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"],
        bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<|endoftext|>",
        extra_special_tokens={"audio_token": "<|AUDIO|>", "audio_bos_token": "<|audio_bos|>",
                              "audio_eos_token": "<|audio_eos|>"})
    wrapped.chat_template = _CHAT_TEMPLATE
    return wrapped


def tiny_qwen2_audio_config(*, vocab_size: int, audio_token_id: int) -> Qwen2AudioConfig:
    audio = Qwen2AudioEncoderConfig(num_mel_bins=80, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                                    d_model=32, max_source_positions=1500)
    text = Qwen2Config(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=1024, pad_token_id=0,
                       bos_token_id=1, eos_token_id=2)
    return Qwen2AudioConfig(audio_config=audio, text_config=text, audio_token_index=audio_token_id)


def tiny_qwen2_audio(*, seed: int = 0) -> Qwen2AudioSpeechLM:
    """`tiny-qwen2-audio`: 2 Whisper-style encoder layers (the real 30 s window, 80 mel bins), the real
    projector and a 3-layer Qwen2, behind the real Qwen2AudioProcessor; seeded random weights."""
    tokenizer = tiny_qwen2_audio_tokenizer()
    config = tiny_qwen2_audio_config(vocab_size=len(tokenizer), audio_token_id=tokenizer.audio_token_id)
    model = build_seeded(lambda: Qwen2AudioForConditionalGeneration(config), seed=seed)
    processor = Qwen2AudioProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer)
    return Qwen2AudioSpeechLM(model, processor, name="tiny-qwen2-audio")


def tiny_phi4mm_tokenizer() -> PreTrainedTokenizerFast:
    """The tiny BPE with Phi-4-multimodal's role tokens and its named `<|image|>` / `<|audio|>` tokens."""
    wrapped = _tiny_bpe(
        ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|image|>", "<|audio|>"],
        bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>", unk_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<|image|>", "audio_token": "<|audio|>"})
    wrapped.chat_template = _PHI4MM_CHAT_TEMPLATE
    return wrapped


def tiny_phi4mm_config(*, vocab_size: int, image_token_id: int, audio_token_id: int,
                       eos_token_ids: list[int]) -> Phi4MultimodalConfig:
    audio = Phi4MultimodalAudioConfig(hidden_size=32, intermediate_size=64, num_blocks=2, num_attention_heads=2,
                                      ext_pw_out_channel=32, depthwise_separable_out_channel=32, nemo_conv_channels=32,
                                      bias_max_distance=50, input_size=80, audio_token_id=audio_token_id)
    vision = Phi4MultimodalVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, image_size=28, patch_size=14, crop_size=28,
                                        image_token_id=image_token_id)
    return Phi4MultimodalConfig(vocab_size=vocab_size, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                                original_max_position_embeddings=1024, bos_token_id=0, pad_token_id=0,
                                eos_token_id=eos_token_ids, audio_config=audio, vision_config=vision)


def tiny_phi4mm(*, seed: int = 0) -> Phi4MMSpeechLM:
    """`tiny-phi4mm`: a 2-block conformer (8x time reduction), the real speech projection, a 1-layer vision
    tower that audio never uses and a 3-layer Phi-4 decoder, with the real feature extractor; seeded random
    weights."""
    tokenizer = tiny_phi4mm_tokenizer()
    config = tiny_phi4mm_config(vocab_size=len(tokenizer), image_token_id=tokenizer.image_token_id,
                                audio_token_id=tokenizer.audio_token_id,
                                eos_token_ids=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|end|>")])
    model = build_seeded(lambda: Phi4MultimodalForCausalLM(config), seed=seed)
    return Phi4MMSpeechLM(model, tokenizer, Phi4MultimodalFeatureExtractor(), name="tiny-phi4mm")


def tiny_whisper(*, seed: int = 0) -> tuple[WhisperForConditionalGeneration, WhisperProcessor]:
    """A random 2+1-layer Whisper whose tokens are printable ASCII characters; it writes a few of them.
    Its encoder has tiny-ultravox's shape, so it can also stand in for Ultravox's audio base model."""
    vocab = {chr(code): index for index, code in enumerate(range(33, 127))}
    tokenizer = WhisperTokenizer(vocab=vocab, merges=[], extra_special_tokens=["<|startoftranscript|>",
                                                                               "<|notimestamps|>"])
    eot, sot, no_timestamps = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|startoftranscript|>",
                                                               "<|notimestamps|>"])
    config = WhisperConfig(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                           decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, num_mel_bins=80,
                           vocab_size=len(tokenizer), max_source_positions=1500, max_target_positions=32,
                           pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot)
    model = build_seeded(lambda: WhisperForConditionalGeneration(config), seed=seed).eval()
    model.generation_config = GenerationConfig(decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot,
                                               pad_token_id=eot, no_timestamps_token_id=no_timestamps, max_length=6,
                                               suppress_tokens=[sot, no_timestamps], begin_suppress_tokens=[eot],
                                               is_multilingual=False, return_timestamps=False)
    return model, WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer)


def save_tiny_checkpoints(root: Path, *, seed: int = 0) -> dict[str, str]:
    """Write tiny random checkpoints laid out as the real releases are, so that the checkpoint specs of a real
    study (`ultravox:PATH,audio=PATH,llm=PATH`, `qwen2-audio:PATH`, `phi4mm:PATH`, `cascade:asr=PATH,llm=PATH`)
    can be rehearsed on them. Returns the folder of each part, by role:

    ultravox      fixie-ai's layout: config.json naming hub ids and only the projector's weights, so it loads
                  only with its base models passed (audio=<whisper>, llm=<llama>)
    whisper       the cascade's ASR and Ultravox's audio base (its encoder is tiny-ultravox's)
    whisper-weak  another seed: the weak cascade's ASR
    llama         tiny-ultravox's own language model with its tokenizer (Ultravox's LLM base; a cascade's LLM)
    qwen2-audio   model + processor (tokenizer, feature extractor, chat template)
    phi4mm        model + tokenizer + feature extractor
    """
    root = Path(root)
    folders = {role: root / role for role in ("ultravox", "whisper", "whisper-weak", "llama", "qwen2-audio",
                                              "phi4mm")}
    ultravox = tiny_ultravox(seed=seed)
    whisper, processor = tiny_whisper(seed=seed)
    whisper.model.encoder.load_state_dict(ultravox.model.audio_tower.state_dict(), strict=True)
    whisper.save_pretrained(folders["whisper"])
    processor.save_pretrained(folders["whisper"])
    weak, weak_processor = tiny_whisper(seed=seed + 1)
    weak.save_pretrained(folders["whisper-weak"])
    weak_processor.save_pretrained(folders["whisper-weak"])
    ultravox.model.language_model.save_pretrained(folders["llama"])
    ultravox.tokenizer.save_pretrained(folders["llama"])
    config = ultravox.model.config
    folders["ultravox"].mkdir(parents=True, exist_ok=True)
    (folders["ultravox"] / "config.json").write_text(json.dumps({
        "model_type": "ultravox", "architectures": ["UltravoxModel"], "hidden_size": config.hidden_size,
        "stack_factor": config.stack_factor, "norm_init": config.norm_init, "projector_act": config.projector_act,
        "projector_ln_mid": config.projector_ln_mid, "audio_model_id": "openai/whisper-large-v3-turbo",
        "text_model_id": "meta-llama/Llama-3.1-8B-Instruct"}, indent=1), encoding="utf-8")
    save_file({f"multi_modal_projector.{key}": value.contiguous()
               for key, value in ultravox.model.multi_modal_projector.state_dict().items()},
              folders["ultravox"] / "model.safetensors", metadata={"format": "pt"})
    qwen2_audio = tiny_qwen2_audio(seed=seed)
    # The processor saves its own template (the class default, Qwen2-Audio-Instruct's) over the tokenizer's.
    qwen2_audio.processor.chat_template = qwen2_audio.tokenizer.chat_template
    qwen2_audio.model.save_pretrained(folders["qwen2-audio"])
    qwen2_audio.processor.save_pretrained(folders["qwen2-audio"])
    phi4mm = tiny_phi4mm(seed=seed)
    phi4mm.model.save_pretrained(folders["phi4mm"])
    phi4mm.tokenizer.save_pretrained(folders["phi4mm"])
    phi4mm.feature_extractor.save_pretrained(folders["phi4mm"])
    return {role: str(folder) for role, folder in folders.items()}


TINY_MODELS = {"tiny-ultravox": tiny_ultravox, "tiny-llama": tiny_text_lm, "tiny-qwen2-audio": tiny_qwen2_audio,
               "tiny-phi4mm": tiny_phi4mm}
