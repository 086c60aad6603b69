"""The tiny models written as the real releases lay out their folders, so that a study can be rehearsed on them.

scripts/reproduce_paper.py --dry-run loads these folders through the checkpoint specs a real run uses
(interp.models.checkpoints), so each folder copies what its release does that the loader must cope with:
fixie-ai's Ultravox names its frozen parts by hub id and stores only what it trained; Qwen2-Audio's hub
safetensors, written by transformers 4.x, use other key names than the 5.x module tree, in shards with an
index; Phi-4-multimodal-instruct keeps its speech LoRA as a peft adapter in `speech-lora/`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from torch import Tensor
from transformers import Phi4MultimodalForCausalLM

from interp.models.phi4mm import Phi4MMSpeechLM
from interp.models.tiny import tiny_phi4mm, tiny_qwen2_audio, tiny_ultravox, tiny_whisper

__all__ = ["ULTRAVOX_AUDIO_ID", "ULTRAVOX_TEXT_ID", "QWEN2_AUDIO_HUB_KEYS", "add_tiny_speech_lora",
           "save_tiny_phi4mm", "save_tiny_checkpoints"]

ULTRAVOX_AUDIO_ID = "openai/whisper-large-v3-turbo"
ULTRAVOX_TEXT_ID = "meta-llama/Llama-3.1-8B-Instruct"
"""The ids fixie-ai's ultravox-v0_6-llama-3_1-8b names its frozen parts by (config.json)."""

QWEN2_AUDIO_HUB_KEYS = (("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
                        ("model.audio_tower.", "audio_tower."),
                        ("model.multi_modal_projector.", "multi_modal_projector."))
"""transformers 5.x module path prefix → the key prefix of Qwen2-Audio-7B-Instruct's hub safetensors (written by
transformers 4.x), which 5.x's conversion_mapping ("qwen2_audio") renames back on load."""

_SPEECH_LORA_TARGETS = r"model\.layers\.\d+\.(self_attn\.(qkv|o)_proj|mlp\.(gate_up|down)_proj)"
"""Where Phi-4-multimodal-instruct's speech LoRA sits (its remote-code config: `layers.*self_attn.(qkv|o)_proj`
and `layers.*mlp.(gate_up|down)_proj`): the decoder layers only, not the conformer's like-named projections."""
_SHARDS = 2


def add_tiny_speech_lora(model: Phi4MultimodalForCausalLM, *, seed: int) -> PeftModel:
    """Put a rank-4 speech LoRA with seeded random weights into `model` (in place; peft's wrapper returned).

    peft starts lora_B at zero, which would make the adapter a no-op and every with/without test vacuous, so
    every LoRA weight is drawn from N(0, 0.1²) here.
    """
    adapted = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.01,
                                               target_modules=_SPEECH_LORA_TARGETS))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if ".lora_" in name:
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    return adapted.eval()


def save_tiny_phi4mm(folder: Path, *, seed: int = 0, speech_lora: bool = True) -> Phi4MMSpeechLM:
    """tiny-phi4mm as the release: model, tokenizer and feature extractor, and (speech_lora) the speech LoRA of
    add_tiny_speech_lora in `speech-lora/`. Returns the model as saved, without the LoRA."""
    folder = Path(folder)
    phi4mm = tiny_phi4mm(seed=seed)
    phi4mm.model.save_pretrained(folder)
    phi4mm.tokenizer.save_pretrained(folder)
    phi4mm.feature_extractor.save_pretrained(folder)
    if speech_lora:
        add_tiny_speech_lora(tiny_phi4mm(seed=seed).model, seed=seed).save_pretrained(folder / "speech-lora")
    return phi4mm


def save_tiny_checkpoints(root: Path, *, seed: int = 0) -> dict[str, str]:
    """Write the tiny checkpoints as their releases are laid out. Returns the folder of each part, by role:

    ultravox        fixie-ai's layout: config.json names its parts by hub id (no audio_config, no text_config)
                    and only the projector's weights are stored; it loads with its bases passed
                    (ultravox:PATH,audio=<ultravox-audio>,llm=<llama>)
    ultravox-audio  Ultravox's Whisper, in ROOT/openai/whisper-large-v3-turbo (its encoder is tiny-ultravox's)
    llama           Ultravox's LLM with its tokenizer, in ROOT/meta-llama/Llama-3.1-8B-Instruct (every
                    cascade's LLM in a rehearsal)
    whisper         the cascades' ASR
    whisper-weak    another seed: the weak cascade's ASR
    qwen2-audio     hub key names in two shards + index, processor (tokenizer, feature extractor, template)
    phi4mm          model, tokenizer, feature extractor and speech-lora/
    """
    root = Path(root)
    folders = {"ultravox": root / "ultravox", "ultravox-audio": root / ULTRAVOX_AUDIO_ID,
               "llama": root / ULTRAVOX_TEXT_ID, "whisper": root / "whisper", "whisper-weak": root / "whisper-weak",
               "qwen2-audio": root / "qwen2-audio", "phi4mm": root / "phi4mm"}
    _save_ultravox(folders, seed=seed)
    for role, offset in (("whisper", 0), ("whisper-weak", 1)):
        whisper, processor = tiny_whisper(seed=seed + offset)
        whisper.save_pretrained(folders[role])
        processor.save_pretrained(folders[role])
    _save_qwen2_audio(folders["qwen2-audio"], seed=seed)
    save_tiny_phi4mm(folders["phi4mm"], seed=seed)
    return {role: str(folder) for role, folder in folders.items()}


def _save_ultravox(folders: dict[str, Path], *, seed: int) -> None:
    """tiny-ultravox split as fixie-ai releases it: the projector with a config naming its bases by id, and the
    bases in folders of their own."""
    ultravox = tiny_ultravox(seed=seed)
    whisper, processor = tiny_whisper(seed=seed)
    whisper.model.encoder.load_state_dict(ultravox.model.audio_tower.state_dict(), strict=True)
    whisper.save_pretrained(folders["ultravox-audio"])
    processor.save_pretrained(folders["ultravox-audio"])
    ultravox.model.language_model.save_pretrained(folders["llama"])
    ultravox.tokenizer.save_pretrained(folders["llama"])
    config = ultravox.model.config
    no_lora = {"r": 0, "lora_alpha": 8, "target_modules": ["k_proj", "q_proj", "linear_k", "linear_q"],
               "unfreeze_layers": None}
    # What fixie-ai's UltravoxConfig.to_diff_dict writes when both ids are set (ultravox/model/ultravox_config.py).
    folders["ultravox"].mkdir(parents=True, exist_ok=True)
    (folders["ultravox"] / "config.json").write_text(json.dumps({
        "architectures": ["UltravoxModel"], "model_type": "ultravox", "audio_latency_block_size": None,
        "audio_model_id": ULTRAVOX_AUDIO_ID, "text_model_id": ULTRAVOX_TEXT_ID, "audio_model_lora_config": no_lora,
        "text_model_lora_config": no_lora, "auto_map": {"AutoConfig": "ultravox_config.UltravoxConfig",
                                                        "AutoModel": "ultravox_model.UltravoxModel"},
        "hidden_size": config.hidden_size, "ignore_index": -100, "initializer_range": 0.02,
        "norm_init": config.norm_init, "projector_act": config.projector_act,
        "projector_ln_mid": config.projector_ln_mid, "stack_factor": config.stack_factor,
        "torch_dtype": "bfloat16", "vocab_size": config.text_config.vocab_size}, indent=1), encoding="utf-8")
    save_file({f"multi_modal_projector.{key}": value.contiguous()
               for key, value in ultravox.model.multi_modal_projector.state_dict().items()},
              folders["ultravox"] / "model.safetensors", metadata={"format": "pt"})


def _save_qwen2_audio(folder: Path, *, seed: int) -> None:
    """tiny-qwen2-audio under the hub's key names (QWEN2_AUDIO_HUB_KEYS), sharded with an index as the release
    is, written here rather than by save_pretrained so the layout does not depend on its reverse renaming."""
    qwen2_audio = tiny_qwen2_audio(seed=seed)
    tensors = {}
    for key, value in qwen2_audio.model.state_dict().items():
        prefix, hub = next((prefix, hub) for prefix, hub in QWEN2_AUDIO_HUB_KEYS if key.startswith(prefix))
        tensors[hub + key.removeprefix(prefix)] = value.contiguous()
    _save_shards(tensors, folder)
    qwen2_audio.model.config.save_pretrained(folder)
    qwen2_audio.model.generation_config.save_pretrained(folder)
    # The processor saves its own template (the class default, Qwen2-Audio-Instruct's) over the tokenizer's.
    qwen2_audio.processor.chat_template = qwen2_audio.tokenizer.chat_template
    qwen2_audio.processor.save_pretrained(folder)


def _save_shards(tensors: dict[str, Tensor], folder: Path) -> None:
    """`_SHARDS` safetensors files named as transformers names them, and model.safetensors.index.json."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = sorted(tensors)
    weight_map = {}
    for index in range(_SHARDS):
        name = f"model-{index + 1:05d}-of-{_SHARDS:05d}.safetensors"
        shard = keys[index::_SHARDS]
        save_file({key: tensors[key] for key in shard}, folder / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(value.numel() * value.element_size() for value in tensors.values())
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1), encoding="utf-8")
