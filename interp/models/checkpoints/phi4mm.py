"""Phi-4-multimodal checkpoints (`phi4mm:PATH[,speech_lora=off]`) and the speech LoRA they hear audio through.

Phi-4-multimodal-instruct answers audio through its speech LoRA (the release's `speech-lora/` peft adapter,
which its own code switches on for audio input), so `phi4mm:PATH` loads it and keeps it on; a folder without
it is refused unless the spec says `phi4mm:PATH,speech_lora=off`.
"""

from __future__ import annotations

from pathlib import Path

from transformers import (
    Phi4MultimodalFeatureExtractor,
    Phi4MultimodalForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from interp.errors import InterpError
from interp.models.checkpoints.folders import (
    check_loading,
    checkpoint_folder,
    expect_model_type,
    pretrained,
    tokenizer_of,
)
from interp.models.checkpoints.options import LoadOptions
from interp.models.checkpoints.specs import CHECKPOINT_SPECS, spec_path
from interp.models.phi4mm import Phi4MMSpeechLM
from interp.models.weights import WeightsMissing

__all__ = ["load_phi4mm", "load_phi4mm_tokenizer"]

_SPEECH_LORA = "speech-lora"
"""The release's subfolder holding the speech LoRA (peft: adapter_config.json + adapter_model.safetensors)."""
_SPEECH_ADAPTER = "speech"
"""The adapter's name in the model, as in transformers' Phi-4-multimodal docs."""
_SPEECH_LORA_OPTIONS = {"speech_lora=on": True, "speech_lora=off": False}


def _phi4mm_fields(spec: str, rest: str) -> tuple[str, bool]:
    """(folder, whether to load the speech LoRA) of a `PATH[,speech_lora=off]` tail."""
    head, *entries = (entry.strip() for entry in rest.split(","))
    speech_lora = True
    for entry in entries:
        if entry.replace(" ", "") not in _SPEECH_LORA_OPTIONS:
            raise InterpError(f"cannot read {entry!r} in {spec!r}: expected {CHECKPOINT_SPECS['phi4mm']}")
        speech_lora = _SPEECH_LORA_OPTIONS[entry.replace(" ", "")]
    return head, speech_lora


def _load_speech_lora(model: PreTrainedModel, folder: Path) -> None:
    """Put the release's speech LoRA into `model` and leave it on, as Phi-4-multimodal-instruct does for audio.

    This is transformers' documented `load_adapter(path, adapter_name="speech", adapter_kwargs={"subfolder":
    "speech-lora"})`. Its `set_adapter("speech")` is not called: transformers 5.25 asks peft >= 0.22 for it,
    and the one adapter loaded is already the active one. A LoRA target without weights in the file is allowed
    only where it adds nothing (peft starts lora_B at zero); any other key that does not fit is refused.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    info = model.load_adapter(str(folder), adapter_name=_SPEECH_ADAPTER,
                              adapter_kwargs={"subfolder": _SPEECH_LORA, "local_files_only": True}).to_dict()
    info["missing_keys"] = {key for key in info["missing_keys"] if not _adds_nothing(model, key)}
    check_loading(info, str(folder / _SPEECH_LORA))
    layers = [module for module in model.modules() if isinstance(module, BaseTunerLayer)]
    assert layers and all(layer.active_adapters == [_SPEECH_ADAPTER] and not layer.disable_adapters
                          for layer in layers), "the speech LoRA loaded but is not the active adapter"


def _adds_nothing(model: PreTrainedModel, key: str) -> bool:
    """Whether the LoRA module holding the missing weight `key` is a no-op (every lora_B weight zero)."""
    module = model.get_submodule(key.split(".lora_")[0])
    return not any(parameter.any() for name, parameter in module.named_parameters() if "lora_B" in name
                   or "lora_embedding_B" in name)


def load_phi4mm(spec: str, rest: str, options: LoadOptions) -> Phi4MMSpeechLM:
    """The Phi-4-multimodal a spec names (`rest`: what follows `phi4mm:`), its speech LoRA on unless refused."""
    head, speech_lora = _phi4mm_fields(spec, rest)
    folder = checkpoint_folder(spec_path(head), "Phi-4-multimodal")
    expect_model_type(folder, "phi4_multimodal",
                       what="a native transformers Phi4MultimodalForCausalLM checkpoint (convert a remote-code "
                            "'phi4mm' one with transformers' convert_phi4_multimodal_weights_to_hf.py)")
    if speech_lora and not (folder / _SPEECH_LORA / "adapter_config.json").is_file():
        raise WeightsMissing(f"{folder} has no {_SPEECH_LORA}/adapter_config.json: Phi-4-multimodal-instruct hears "
                             f"audio through that speech LoRA; copy the release's {_SPEECH_LORA}/ folder there, or "
                             f"write phi4mm:{folder},speech_lora=off to study the model without it")
    tokenizer = tokenizer_of(folder)
    if getattr(tokenizer, "audio_token", None) is None:
        raise InterpError(f"{folder}: the tokenizer names no audio_token, as a native Phi-4-multimodal tokenizer "
                          "does (extra_special_tokens in tokenizer_config.json)")
    model = pretrained(Phi4MultimodalForCausalLM, folder, options)
    if speech_lora:
        _load_speech_lora(model, folder)
    # The full processor would need Pillow/torchvision for an image processor that audio never uses.
    feature_extractor = Phi4MultimodalFeatureExtractor.from_pretrained(folder, local_files_only=True)
    return Phi4MMSpeechLM(model, tokenizer, feature_extractor, name=spec,
                          weights={"speech_lora": "on" if speech_lora else "off"})


def load_phi4mm_tokenizer(spec: str, rest: str) -> PreTrainedTokenizerBase:
    """The tokenizer of the Phi-4-multimodal a spec names, no weight read."""
    return tokenizer_of(checkpoint_folder(spec_path(_phi4mm_fields(spec, rest)[0]), "Phi-4-multimodal"))
