"""A speech LLM's own language model as a TextLM: the LLM half of the own-backbone cascade.

The paper's matched cascade reads the transcript with the public LLM a speech model started from. Reading it
with the speech model's own language model instead (Qwen2-Audio's fine-tuned Qwen2, Ultravox's Llama, Phi-4-MM's
Phi-4 without its speech LoRA) separates what the audio route changes from what fine-tuning changed. Nothing is
copied: the TextLM runs the speech model's own modules, or, for Phi-4-MM, a LoRA-free twin whose every tensor
is the speech model's. Like tuned-lens's model_surgery, this is the one table of where each architecture keeps
its language model.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, Qwen2AudioForConditionalGeneration

from interp.errors import InterpError
from interp.models.encoded import EncodedSpeechLM
from interp.models.phi4mm import Phi4MMSpeechLM
from interp.models.qwen2_audio import Qwen2AudioSpeechLM
from interp.models.text_lm import TextLM
from interp.models.ultravox_lm import UltravoxSpeechLM

__all__ = ["own_text_lm"]


def own_text_lm(speech: object) -> TextLM:
    """The language model inside `speech`, with the speech model's tokenizer (and so its chat template).

    Ultravox's LLM is a causal LM already. Qwen2-Audio's decoder and lm_head go into a causal-LM shell built
    on the meta device. Phi-4-MM's speech LoRA is on for audio (interp.models.checkpoints), and its released
    code switches it off for text-only input, so the text LLM is a twin without the LoRA layers, holding the
    base weights (each LoRA module's base_layer): the twin's text logits are exactly those of the model with
    the adapter disabled, while the speech model keeps the adapter on and no shared state is switched.
    A cascade in disguise reads with the text LLM it was built on.
    Raises InterpError for a system with no language model of its own.
    """
    name = f"{speech.name}:llm"
    if isinstance(speech, UltravoxSpeechLM):
        return TextLM(speech.model.language_model, speech.tokenizer, name=name)
    if isinstance(speech, Qwen2AudioSpeechLM):
        return TextLM(_qwen2_audio_llm(speech.model), speech.tokenizer, name=name)
    if isinstance(speech, Phi4MMSpeechLM):
        return TextLM(_without_adapters(speech.model), speech.tokenizer, name=name)
    if isinstance(speech, EncodedSpeechLM) and isinstance(getattr(speech, "llm", None), TextLM):
        return speech.llm  # a disguise (interp.models.disguise) reads with the text LLM it was built on
    raise InterpError(f"{getattr(speech, 'name', speech)!r} ({type(speech).__name__}) has no language model of "
                      "its own to read a transcript with; llm=self takes a qwen2-audio, ultravox or phi4mm speech=")


def _qwen2_audio_llm(model: Qwen2AudioForConditionalGeneration) -> PreTrainedModel:
    """Qwen2-Audio's decoder (`model.model.language_model` from transformers 5.10 on) and lm_head as the causal
    LM class of its text config (Qwen2ForCausalLM), sharing the modules themselves."""
    with torch.device("meta"):
        shell = AutoModelForCausalLM.from_config(model.config.text_config)
    shell.model = model.model.language_model
    shell.lm_head = model.lm_head
    shell.generation_config = model.generation_config
    return shell.eval()


def _without_adapters(model: PreTrainedModel) -> PreTrainedModel:
    """A twin of `model` without its peft LoRA layers whose parameters and buffers are `model`'s own tensors.

    Built on the meta device and assigned, so no weight is allocated twice. Non-persistent buffers (the rotary
    inv_freq) are not in a state dict and are handed over by name.
    """
    with torch.device("meta"):
        twin = type(model)(model.config)
    base = {key.replace(".base_layer.", "."): tensor for key, tensor in model.state_dict().items()
            if ".lora_" not in key}
    twin.load_state_dict(base, strict=True, assign=True)
    buffers = {key.replace(".base_layer.", "."): buffer for key, buffer in model.named_buffers()}
    for key, buffer in list(twin.named_buffers()):
        if buffer.is_meta:
            module, _, leaf = key.rpartition(".")
            twin.get_submodule(module)._buffers[leaf] = buffers[key]
    twin.generation_config = model.generation_config
    return twin.eval()
