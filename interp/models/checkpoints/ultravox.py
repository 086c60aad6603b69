"""fixie-ai Ultravox checkpoints (`ultravox:PATH[,audio=PATH][,llm=PATH]`): the release, its parts and its bases.

fixie-ai's Ultravox releases usually store only what they trained (the projector, often the Whisper
encoder with its LoRA merged) and name the frozen parts in `audio_model_id` / `text_model_id`. As in
fixie-ai's `UltravoxModel`, those parts come from their base folders (the ids when they are local folders,
or `audio=PATH` / `llm=PATH` in the spec) and the checkpoint's own keys are written over them; a part
without a base folder must be in the checkpoint entirely.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from transformers import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    AutoConfig,
    AutoModelForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    WhisperConfig,
    WhisperFeatureExtractor,
)

from interp.errors import InterpError
from interp.models.checkpoints.folders import (
    check_fit,
    check_loading,
    checkpoint_folder,
    config_dict,
    expect_model_type,
    has_tokenizer,
    listed,
    pretrained,
    read_tensors,
    tokenizer_of,
    weight_files,
)
from interp.models.checkpoints.options import LoadOptions
from interp.models.checkpoints.specs import CHECKPOINT_SPECS, spec_fields, spec_path
from interp.models.ultravox import UltravoxConfig, UltravoxModel
from interp.models.ultravox_lm import UltravoxSpeechLM
from interp.models.weights import WeightsMissing

__all__ = ["load_ultravox", "load_ultravox_tokenizer"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Part:
    """A part of Ultravox that fixie-ai may leave out of its checkpoint and name by id instead."""

    prefix: str
    option: str
    id_field: str
    config_field: str


_AUDIO = _Part("audio_tower", "audio", "audio_model_id", "audio_config")
_TEXT = _Part("language_model", "llm", "text_model_id", "text_config")
_PROJECTOR = "multi_modal_projector"
_ULTRAVOX_FIELDS = ("hidden_size", "stack_factor", "norm_init", "projector_act", "projector_ln_mid", "audio_model_id",
                    "text_model_id")
"""The config.json fields of fixie-ai's UltravoxConfig that shape the model (besides the two sub-configs)."""
_WHISPER_ENCODER_PREFIXES = ("model.encoder.", "encoder.")
"""Where a Whisper checkpoint keeps its encoder: WhisperForConditionalGeneration, WhisperModel."""


def _base_folder(part: _Part, raw: dict, fields: dict[str, Path]) -> Path | None:
    """Where the part's base weights are: `option=PATH` from the spec, else the config's id when it is a
    local checkpoint folder, else None."""
    if part.option in fields:
        return checkpoint_folder(fields[part.option], f"{part.option} base model")
    model_id = raw.get(part.id_field)
    if model_id and Path(model_id).expanduser().is_dir():
        return checkpoint_folder(Path(model_id).expanduser(), f"{part.id_field} ({model_id})")
    return None


def _missing_bases(folder: Path, raw: dict, parts: dict[str, dict[str, Tensor]],
                   bases: dict[str, Path | None]) -> None:
    """Refuse, in one message, the parts that have no base folder and lack their keys or their config in the
    checkpoint."""
    lacking = [part for part in (_AUDIO, _TEXT) if bases[part.option] is None
               and not (parts[part.prefix] and isinstance(raw.get(part.config_field), dict))]
    if lacking:
        named = "; ".join(f"{part.id_field} is {raw[part.id_field]!r}, not a local folder" if raw.get(part.id_field)
                          else f"no {part.id_field}" for part in lacking)
        raise WeightsMissing(f"{folder} leaves out {' and '.join(part.prefix for part in lacking)} ({named}); pass "
                             f"local copies of the base models: ultravox:{folder},"
                             f"{','.join(f'{part.option}=PATH' for part in lacking)}")


def _ultravox_config(folder: Path, raw: dict, audio_base: Path | None, text_base: Path | None) -> UltravoxConfig:
    """fixie-ai's config.json as our UltravoxConfig, refusing what this implementation does not compute."""
    if raw.get("llm_only_training"):
        raise InterpError(f"{folder}: an llm_only_training Ultravox has no audio tower to analyse")
    if raw.get("audio_latency_block_size"):
        raise InterpError(f"{folder}: audio_latency_block_size={raw['audio_latency_block_size']} (a streaming "
                          "encoder mask) is not implemented here")
    if raw.get("projector_act", "swiglu") != "swiglu":
        raise InterpError(f"{folder}: only the swiglu projector is implemented, not {raw['projector_act']!r}")
    # A part's config is its base folder's (as fixie-ai reads the id's), else the one stored in config.json.
    if audio_base is not None:
        expect_model_type(audio_base, "whisper", what="a Whisper checkpoint as Ultravox's audio base")
        audio_config: dict | PretrainedConfig = WhisperConfig.from_pretrained(audio_base, local_files_only=True)
    else:
        audio_config = raw[_AUDIO.config_field]
        if audio_config.get("model_type", "whisper") != "whisper":
            raise InterpError(f"{folder}: the audio tower is a {audio_config['model_type']!r} model; only Whisper "
                              "encoders are implemented")
    text_config = raw[_TEXT.config_field] if text_base is None else \
        AutoConfig.from_pretrained(text_base, local_files_only=True, trust_remote_code=False)
    return UltravoxConfig(audio_config, text_config, **{key: raw[key] for key in _ULTRAVOX_FIELDS if key in raw})


def _whisper_encoder(folder: Path) -> dict[str, Tensor]:
    """The encoder weights of a Whisper checkpoint folder, keyed as in `audio_tower` (decoder never read)."""
    files = weight_files(folder)
    for prefix in _WHISPER_ENCODER_PREFIXES:
        tensors = read_tensors(files, keep=lambda key: key.startswith(prefix))
        if tensors:
            return {key.removeprefix(prefix): value for key, value in tensors.items()}
    raise WeightsMissing(f"{folder} holds no Whisper encoder weights (no keys under "
                         f"{' or '.join(_WHISPER_ENCODER_PREFIXES)})")


def _language_model(folder: Path, config: UltravoxConfig, base: Path | None, own: dict[str, Tensor],
                    options: LoadOptions) -> PreTrainedModel:
    """The LLM: its base folder with the checkpoint's `language_model.*` keys written over it, else built from
    those keys alone (every weight must be there)."""
    if base is None:
        cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(config.text_config)]
        model, info = cls.from_pretrained(None, config=config.text_config, state_dict=own, dtype=options.torch_dtype,
                                          device_map=options.placement, output_loading_info=True)
        check_loading(info, f"{folder} (language_model.*)")
        return model.eval()
    model = pretrained(AutoModelForCausalLM, base, options)
    if own:
        _log.info("%s: %d language_model.* weights written over %s", folder, len(own), base)
        state = model.state_dict()
        check_fit(own, {key: value.shape for key, value in state.items()}, f"{folder} (language_model.* over {base})")
        with torch.no_grad():
            for key, value in own.items():
                state[key].copy_(value)
    return model


def _ultravox_parts(folder: Path) -> dict[str, dict[str, Tensor]]:
    """The checkpoint's tensors by part (audio_tower, multi_modal_projector, language_model), prefix removed."""
    parts: dict[str, dict[str, Tensor]] = {_AUDIO.prefix: {}, _PROJECTOR: {}, _TEXT.prefix: {}}
    stray = []
    for key, value in read_tensors(weight_files(folder)).items():
        prefix, _, inner = key.partition(".")
        if prefix in parts:
            parts[prefix][inner] = value
        else:
            stray.append(key)
    if stray:
        raise WeightsMissing(f"{folder}: checkpoint keys outside audio_tower, multi_modal_projector and "
                             f"language_model: {listed(stray)}")
    return parts


def _audio_and_projector(folder: Path, config: UltravoxConfig, parts: dict[str, dict[str, Tensor]],
                         audio_base: Path | None) -> dict[str, Tensor]:
    """Every audio_tower.* and multi_modal_projector.* tensor, checked against a skeleton of the model (no
    memory, no LLM weights) so that a checkpoint that does not fit fails before the LLM is loaded."""
    audio = {**(_whisper_encoder(audio_base) if audio_base is not None else {}), **parts[_AUDIO.prefix]}
    if audio_base is not None and parts[_AUDIO.prefix]:
        _log.info("%s: %d audio_tower.* weights written over %s", folder, len(parts[_AUDIO.prefix]), audio_base)
    tensors = {f"{_AUDIO.prefix}.{key}": value for key, value in audio.items()}
    tensors.update({f"{_PROJECTOR}.{key}": value for key, value in parts[_PROJECTOR].items()})
    with torch.device("meta"):
        skeleton = UltravoxModel(config)
    shapes = {key: value.shape for key, value in skeleton.state_dict().items()
              if not key.startswith(f"{_TEXT.prefix}.")}
    check_fit(tensors, shapes, str(folder))
    unfilled = shapes.keys() - tensors.keys()
    if unfilled:
        raise WeightsMissing(f"{folder}: weights in neither the checkpoint nor a base folder: {listed(unfilled)}")
    return tensors


def load_ultravox(spec: str, rest: str, options: LoadOptions) -> UltravoxSpeechLM:
    """The Ultravox a spec names (`rest`: what follows `ultravox:`), its parts checked before the LLM loads."""
    head, fields = spec_fields(spec, rest, allowed=(_AUDIO.option, _TEXT.option))
    if head is None:
        raise InterpError(f"{spec!r} names no checkpoint folder; write {CHECKPOINT_SPECS['ultravox']}")
    folder = checkpoint_folder(spec_path(head), "fixie-ai Ultravox")
    expect_model_type(folder, "ultravox", what="a fixie-ai Ultravox checkpoint")
    raw = config_dict(folder)
    parts = _ultravox_parts(folder)
    audio_base, text_base = _base_folder(_AUDIO, raw, fields), _base_folder(_TEXT, raw, fields)
    _missing_bases(folder, raw, parts, {_AUDIO.option: audio_base, _TEXT.option: text_base})
    config = _ultravox_config(folder, raw, audio_base, text_base)
    own = _audio_and_projector(folder, config, parts, audio_base)
    tokenizer = _ultravox_tokenizer(folder, text_base)
    feature_extractor = _feature_extractor(folder, audio_base, config)
    # Everything else is checked: now the (large) LLM, then the audio tower and projector around it, built
    # without memory to take the loaded tensors as they are.
    llm = _language_model(folder, config, text_base, parts[_TEXT.prefix], options)
    config.text_config = llm.config
    with torch.device("meta"):
        model = UltravoxModel(config, language_model=llm)
    device = llm.get_input_embeddings().weight.device
    model.load_state_dict({key: value.to(device=device, dtype=options.torch_dtype) for key, value in own.items()},
                          strict=False, assign=True)
    return UltravoxSpeechLM(model.eval(), tokenizer, feature_extractor, name=spec)


def load_ultravox_tokenizer(spec: str, rest: str) -> PreTrainedTokenizerBase | None:
    """The tokenizer of the Ultravox a spec names, no weight read; None when the spec names no folder."""
    head, fields = spec_fields(spec, rest, allowed=(_AUDIO.option, _TEXT.option))
    if head is None:
        return None
    folder = checkpoint_folder(spec_path(head), "fixie-ai Ultravox")
    return _ultravox_tokenizer(folder, _base_folder(_TEXT, config_dict(folder), fields))


def _ultravox_tokenizer(folder: Path, text_base: Path | None) -> PreTrainedTokenizerBase:
    """The checkpoint folder's tokenizer, else its LLM base folder's."""
    tokenizer_folder = folder if has_tokenizer(folder) else text_base
    if tokenizer_folder is None:
        raise WeightsMissing(f"{folder} has no tokenizer (tokenizer.json / tokenizer_config.json) and no llm base "
                             f"folder to take one from; pass ultravox:{folder},llm=PATH")
    return tokenizer_of(tokenizer_folder)


def _feature_extractor(folder: Path, audio_base: Path | None, config: UltravoxConfig) -> WhisperFeatureExtractor:
    """Whisper's feature extractor from the checkpoint folder, else from the audio base folder."""
    for candidate in (folder, audio_base):
        if candidate is not None and any((candidate / name).is_file()
                                         for name in ("preprocessor_config.json", "processor_config.json")):
            extractor = WhisperFeatureExtractor.from_pretrained(candidate, local_files_only=True)
            if extractor.feature_size != config.audio_config.num_mel_bins:
                raise InterpError(f"{candidate}: the feature extractor computes {extractor.feature_size} mel bins but "
                                  f"the encoder takes {config.audio_config.num_mel_bins}")
            return extractor
    raise WeightsMissing(f"{folder} has no preprocessor_config.json (Whisper's feature extractor), nor has an audio "
                         f"base folder; pass ultravox:{folder},audio=PATH with the Whisper checkpoint folder")
