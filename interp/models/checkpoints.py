"""Real checkpoints from local folders: `qwen2-audio:PATH`, `ultravox:PATH`, `phi4mm:PATH`, `cascade:asr=PATH,llm=PATH`.

Users with a GPU box keep their checkpoints in local folders; nothing here reaches a model hub
(`local_files_only=True` everywhere) or runs remote code. Weights are read from safetensors only (no pickle).
Every load is strict: a weight the model lacks, a checkpoint key the model does not use, or a shape that
does not fit raises one clear error, because a silently random-initialised weight would make every
analysis of the model meaningless.

fixie-ai's Ultravox releases usually store only what they trained (the projector, often the Whisper
encoder with its LoRA merged) and name the frozen parts in `audio_model_id` / `text_model_id`. As in
fixie-ai's `UltravoxModel`, those parts come from their base folders (the ids when they are local folders,
or `audio=PATH` / `llm=PATH` in the spec) and the checkpoint's own keys are written over them; a part
without a base folder must be in the checkpoint entirely.

Phi-4-multimodal-instruct answers audio through its speech LoRA (the release's `speech-lora/` peft adapter,
which its own code switches on for audio input), so `phi4mm:PATH` loads it and keeps it on; a folder without
it is refused unless the spec says `phi4mm:PATH,speech_lora=off`.

An own-backbone cascade, `cascade:asr=PATH,llm=self,speech=SPEC`, reads the transcript with the speech LLM's
own language model (interp.models.own_backbone): the speech model SPEC names is taken from `loaded` when it is
there, so both share one copy of the weights. `speech=` comes last: everything after it is SPEC, commas too.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors import safe_open
from torch import Tensor
from transformers import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    Phi4MultimodalFeatureExtractor,
    Phi4MultimodalForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2AudioForConditionalGeneration,
    Qwen2AudioProcessor,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
)

from interp.errors import InterpError
from interp.models.cascade import Cascade
from interp.models.own_backbone import own_text_lm
from interp.models.phi4mm import Phi4MMSpeechLM
from interp.models.qwen2_audio import Qwen2AudioSpeechLM
from interp.models.text_lm import TextLM
from interp.models.ultravox import UltravoxConfig, UltravoxModel
from interp.models.ultravox_lm import UltravoxSpeechLM
from interp.models.weights import WeightsMissing
from interp.models.whisper_ct2 import transcribe

__all__ = ["Dtype", "LoadOptions", "load_checkpoint", "load_checkpoint_tokenizer", "CHECKPOINT_SPECS",
           "WhisperCheckpointASR"]

_log = logging.getLogger(__name__)

Dtype = Literal["float32", "bfloat16", "float16"]
_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

CHECKPOINT_SPECS = {
    "qwen2-audio": "qwen2-audio:PATH",
    "ultravox": "ultravox:PATH[,audio=PATH][,llm=PATH]",
    "phi4mm": "phi4mm:PATH[,speech_lora=off]",
    "cascade": "cascade:asr=PATH,llm=PATH | cascade:asr=PATH,llm=self,speech=SPEC",
}
"""The model spec of each checkpoint kind, as `--model` takes it."""

_CONFIG = "config.json"
_SAFETENSORS = "model.safetensors"
_SAFETENSORS_INDEX = "model.safetensors.index.json"
_SHOWN_KEYS = 3
"""How many offending keys an error names."""


@dataclass(frozen=True)
class LoadOptions:
    """Where and in which precision to load a checkpoint.

    device: one torch device ("cpu", "cuda", "cuda:1"). device_map: "auto" (or "balanced", "sequential")
    spreads a model too large for one GPU over all of them, through accelerate; when given, it replaces
    `device`. dtype: the precision of every weight.
    """

    device: str = "cpu"
    dtype: Dtype = "float32"
    device_map: str | None = None

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise InterpError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(_DTYPES)}")
        try:
            torch.device(self.device)
        except RuntimeError as error:
            raise InterpError(f"{self.device!r} is not a torch device (cpu, cuda, cuda:1, ...)") from error

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    def torch_device(self) -> torch.device:
        """The device, checked to exist here (CUDA present, index in range)."""
        device = torch.device(self.device)
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise InterpError(f"device {self.device!r} asked for, but this torch ({torch.__version__}) sees no "
                                  "CUDA GPU")
            if device.index is not None and device.index >= torch.cuda.device_count():
                raise InterpError(f"device {self.device!r} asked for, but only {torch.cuda.device_count()} CUDA "
                                  "GPU(s) are visible")
        return device

    @property
    def placement(self) -> str:
        """What `from_pretrained(device_map=...)` gets: the device map if given, else the one device."""
        return self.device_map or self.device


def load_checkpoint(spec: str, *, options: LoadOptions, loaded: Mapping[str, object] | None = None) -> object:
    """The system a checkpoint spec names (see CHECKPOINT_SPECS), named by the spec itself.

    loaded: systems already loaded, by spec; an own-backbone cascade takes its speech model from here rather
    than loading a second copy of its weights. Raises InterpError for an unknown kind or a malformed spec,
    WeightsMissing for a path that is not a checkpoint folder or a checkpoint whose keys do not fit its model.
    """
    kind, colon, rest = spec.partition(":")
    if not colon or kind not in _LOADERS:
        raise InterpError(f"unknown checkpoint kind {kind!r} in {spec!r}; the kinds are "
                          f"{', '.join(CHECKPOINT_SPECS.values())}")
    if not rest.strip():
        raise InterpError(f"{spec!r} names no path; write {CHECKPOINT_SPECS[kind]}")
    options.torch_device()
    if kind == "cascade":
        return _load_cascade(spec, rest, options, loaded or {})
    return _LOADERS[kind](spec, rest, options)


def load_checkpoint_tokenizer(spec: str) -> PreTrainedTokenizerBase:
    """The tokenizer of the speech LLM a checkpoint spec names, read without its weights: what erasure's text
    concept needs to align words to tokens (loading a 7B model for it would take minutes and tens of GB).

    Raises InterpError for a spec that names no speech LLM, WeightsMissing for a folder without a tokenizer.
    """
    kind, colon, rest = spec.partition(":")
    if kind == "qwen2-audio" and rest.strip():
        return _tokenizer(_checkpoint(_path(rest), "Qwen2-Audio"))
    if kind == "phi4mm" and rest.strip():
        return _tokenizer(_checkpoint(_path(_phi4mm_fields(spec, rest)[0]), "Phi-4-multimodal"))
    if kind == "ultravox":
        head, fields = _fields(spec, rest, allowed=(_AUDIO.option, _TEXT.option))
        if head is not None:
            folder = _checkpoint(_path(head), "fixie-ai Ultravox")
            return _ultravox_tokenizer(folder, _base_folder(_TEXT, _config_dict(folder), fields))
    raise InterpError(f"{spec!r} names no speech LLM checkpoint; write {CHECKPOINT_SPECS['qwen2-audio']}, "
                      f"{CHECKPOINT_SPECS['ultravox']} or {CHECKPOINT_SPECS['phi4mm']}")


class WhisperCheckpointASR:
    """A transformers Whisper checkpoint folder as the ASR half of a cascade.

    It holds what `whisper_ct2.transcribe` reads (`model`, `processor`), so it decodes exactly as
    mini-whisper does: greedy, no timestamps, English (a multilingual model is told the language rather
    than guessing it from audio that may be noisy).
    """

    def __init__(self, model: WhisperForConditionalGeneration, processor: WhisperProcessor, *, name: str,
                 source: str) -> None:
        self.model = model.eval()
        self.processor = processor
        self.name = name
        self.source = source
        generation = model.generation_config
        if getattr(generation, "is_multilingual", False) and getattr(generation, "language", None) is None:
            _log.info("%s: multilingual; transcribing as English", name)
            generation.language, generation.task = "en", "transcribe"

    def transcribe(self, audio: Sequence[np.ndarray]) -> list[str]:
        return transcribe(self, list(audio))


# Spec parsing and folder checks


def _path(text: str) -> Path:
    return Path(text.strip()).expanduser()


def _fields(spec: str, rest: str, *, allowed: Collection[str]) -> tuple[str | None, dict[str, Path]]:
    """(leading positional entry or None, {key: path}) of a comma-separated `PATH,key=PATH,...` tail."""
    entries = [entry.strip() for entry in rest.split(",")]
    head = None if "=" in entries[0] else entries.pop(0)
    fields: dict[str, Path] = {}
    for entry in entries:
        key, equals, value = (part.strip() for part in entry.partition("="))
        if not equals or key not in allowed or not value:
            raise InterpError(f"cannot read {entry!r} in {spec!r}: expected one of "
                              f"{', '.join(f'{name}=PATH' for name in allowed)}")
        if key in fields:
            raise InterpError(f"{key}= appears twice in {spec!r}")
        fields[key] = _path(value)
    return head, fields


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder: model.safetensors, or the shards its index lists."""
    if (folder / _SAFETENSORS).is_file():
        return [folder / _SAFETENSORS]
    index = folder / _SAFETENSORS_INDEX
    if index.is_file():
        try:
            shards = list(dict.fromkeys(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, AttributeError) as error:
            raise WeightsMissing(f"{index} is not a safetensors index (no weight_map): {error}") from error
        for shard in shards:
            if not (folder / shard).is_file():
                raise WeightsMissing(f"{folder}: shard {shard}, listed in {_SAFETENSORS_INDEX}, is missing")
        return [folder / shard for shard in shards]
    if any(folder.glob("pytorch_model*.bin")):
        raise WeightsMissing(f"{folder} holds only pickle weights (pytorch_model*.bin); this toolkit reads "
                             f"safetensors only: re-save it with save_pretrained, which writes {_SAFETENSORS}")
    raise WeightsMissing(f"{folder} has no weights: expected {_SAFETENSORS} or {_SAFETENSORS_INDEX} beside "
                         f"{_CONFIG}")


def _checkpoint(path: Path, what: str) -> Path:
    """`path` resolved, once it is a folder with config.json and safetensors weights; else WeightsMissing."""
    expected = f"a {what} checkpoint folder ({_CONFIG} + {_SAFETENSORS}, as save_pretrained writes them)"
    if not path.exists():
        raise WeightsMissing(f"{path} does not exist; expected {expected}")
    if not path.is_dir():
        raise WeightsMissing(f"{path} is a file; expected {expected}")
    if not (path / _CONFIG).is_file():
        raise WeightsMissing(f"{path} has no {_CONFIG}, so it is not {expected}")
    _weight_files(path)
    return path.resolve()


def _config_dict(folder: Path) -> dict:
    try:
        raw = json.loads((folder / _CONFIG).read_text(encoding="utf-8"))
    except ValueError as error:
        raise WeightsMissing(f"{folder / _CONFIG} is not valid JSON: {error}") from error
    if not isinstance(raw, dict):
        raise WeightsMissing(f"{folder / _CONFIG} is not a JSON object")
    return raw


def _expect_model_type(folder: Path, expected: str, *, what: str) -> None:
    found = _config_dict(folder).get("model_type")
    if found != expected:
        raise InterpError(f"{folder} holds a model_type {found!r} model, not {expected!r}: expected {what}")


def _listed(keys: Iterable[object]) -> str:
    """The first few keys, sorted, and how many there are in all."""
    keys = sorted(map(str, keys))
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > _SHOWN_KEYS else "")


def _check_loading(info: dict, where: str) -> None:
    """Refuse a `from_pretrained` load that left weights random, ignored checkpoint keys or hit wrong shapes."""
    problems = [(info["missing_keys"], "weights missing from the checkpoint"),
                (info["unexpected_keys"], "checkpoint keys the model does not use"),
                ({key[0] for key in info["mismatched_keys"]}, "weights of the wrong shape")]
    found = [f"{what}: {_listed(keys)}" for keys, what in problems if keys] + list(info["error_msgs"][:1])
    if found:
        raise WeightsMissing(f"{where}: {'; '.join(found)}")


def _pretrained(cls: type, folder: Path, options: LoadOptions) -> PreTrainedModel:
    """`cls.from_pretrained(folder)` in the options' dtype and placement, strictly, in eval mode."""
    model, info = cls.from_pretrained(folder, dtype=options.torch_dtype, device_map=options.placement,
                                      local_files_only=True, trust_remote_code=False, output_loading_info=True)
    _check_loading(info, str(folder))
    return model.eval()


def _tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()


# Qwen2-Audio, Phi-4-multimodal, cascades


def _load_qwen2_audio(spec: str, rest: str, options: LoadOptions) -> Qwen2AudioSpeechLM:
    folder = _checkpoint(_path(rest), "Qwen2-Audio")
    _expect_model_type(folder, "qwen2_audio", what="a Qwen2AudioForConditionalGeneration checkpoint")
    model = _pretrained(Qwen2AudioForConditionalGeneration, folder, options)
    processor = Qwen2AudioProcessor.from_pretrained(folder, local_files_only=True)
    # Qwen2-Audio-Instruct may keep its template on the processor only (chat_template.json). Without such a
    # file the processor holds its class default, which a base model (no chat) must not get.
    stored = any((folder / name).is_file() for name in ("chat_template.json", "chat_template.jinja"))
    if stored and not getattr(processor.tokenizer, "chat_template", None):
        processor.tokenizer.chat_template = processor.chat_template
    return Qwen2AudioSpeechLM(model, processor, name=spec)


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
    _check_loading(info, str(folder / _SPEECH_LORA))
    layers = [module for module in model.modules() if isinstance(module, BaseTunerLayer)]
    assert layers and all(layer.active_adapters == [_SPEECH_ADAPTER] and not layer.disable_adapters
                          for layer in layers), "the speech LoRA loaded but is not the active adapter"


def _adds_nothing(model: PreTrainedModel, key: str) -> bool:
    """Whether the LoRA module holding the missing weight `key` is a no-op (every lora_B weight zero)."""
    module = model.get_submodule(key.split(".lora_")[0])
    return not any(parameter.any() for name, parameter in module.named_parameters() if "lora_B" in name
                   or "lora_embedding_B" in name)


def _load_phi4mm(spec: str, rest: str, options: LoadOptions) -> Phi4MMSpeechLM:
    head, speech_lora = _phi4mm_fields(spec, rest)
    folder = _checkpoint(_path(head), "Phi-4-multimodal")
    _expect_model_type(folder, "phi4_multimodal",
                       what="a native transformers Phi4MultimodalForCausalLM checkpoint (convert a remote-code "
                            "'phi4mm' one with transformers' convert_phi4_multimodal_weights_to_hf.py)")
    if speech_lora and not (folder / _SPEECH_LORA / "adapter_config.json").is_file():
        raise WeightsMissing(f"{folder} has no {_SPEECH_LORA}/adapter_config.json: Phi-4-multimodal-instruct hears "
                             f"audio through that speech LoRA; copy the release's {_SPEECH_LORA}/ folder there, or "
                             f"write phi4mm:{folder},speech_lora=off to study the model without it")
    tokenizer = _tokenizer(folder)
    if getattr(tokenizer, "audio_token", None) is None:
        raise InterpError(f"{folder}: the tokenizer names no audio_token, as a native Phi-4-multimodal tokenizer "
                          "does (extra_special_tokens in tokenizer_config.json)")
    model = _pretrained(Phi4MultimodalForCausalLM, folder, options)
    if speech_lora:
        _load_speech_lora(model, folder)
    # The full processor would need Pillow/torchvision for an image processor that audio never uses.
    feature_extractor = Phi4MultimodalFeatureExtractor.from_pretrained(folder, local_files_only=True)
    return Phi4MMSpeechLM(model, tokenizer, feature_extractor, name=spec,
                          weights={"speech_lora": "on" if speech_lora else "off"})


def _text_lm(folder: Path, options: LoadOptions) -> TextLM:
    model = _pretrained(AutoModelForCausalLM, folder, options)
    return TextLM(model, _tokenizer(folder), name=folder.name)


_OWN_LLM = "self"
"""`llm=self`: the cascade's LLM is the language model of the speech LLM that `speech=` names."""
_SPEECH_KINDS = ("qwen2-audio", "ultravox", "phi4mm")


def _load_cascade(spec: str, rest: str, options: LoadOptions, loaded: Mapping[str, object]) -> Cascade:
    parts, *after = re.split(r"(?:^|,)\s*speech=", rest, maxsplit=1)
    speech_spec = after[0].strip() if after else ""
    head, fields = _fields(spec, parts, allowed=("asr", "llm"))
    if head is not None or set(fields) != {"asr", "llm"}:
        raise InterpError(f"{spec!r} must name both parts: {CHECKPOINT_SPECS['cascade']}")
    is_own = str(fields["llm"]) == _OWN_LLM
    if is_own != bool(speech_spec) or (is_own and speech_spec.partition(":")[0] not in _SPEECH_KINDS):
        raise InterpError(f"{spec!r}: llm=self goes with speech=SPEC last, SPEC one of "
                          f"{', '.join(CHECKPOINT_SPECS[kind] for kind in _SPEECH_KINDS)} (write ./self for a "
                          "folder called self)")
    asr_folder = _checkpoint(fields["asr"], "Whisper")
    _expect_model_type(asr_folder, "whisper", what="a WhisperForConditionalGeneration checkpoint as asr=")
    whisper = _pretrained(WhisperForConditionalGeneration, asr_folder, options)
    asr = WhisperCheckpointASR(whisper, WhisperProcessor.from_pretrained(asr_folder, local_files_only=True),
                               name=f"whisper:{asr_folder.name}", source=str(asr_folder))
    if not is_own:
        return Cascade(asr, _text_lm(_checkpoint(fields["llm"], "causal LM"), options), name=spec)
    speech = loaded.get(speech_spec)
    if speech is None:
        _log.info("%s: loading %s for its language model", spec, speech_spec)
        speech = load_checkpoint(speech_spec, options=options)
    return Cascade(asr, own_text_lm(speech), name=spec)


# Ultravox


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


def _read_tensors(files: Sequence[Path], *, keep: Callable[[str], bool] = lambda key: True) -> dict[str, Tensor]:
    """The tensors of safetensors files whose key passes `keep` (others are never read)."""
    tensors: dict[str, Tensor] = {}
    for file in files:
        with safe_open(file, framework="pt") as handle:
            for key in handle.keys():
                if keep(key):
                    tensors[key] = handle.get_tensor(key)
    return tensors


def _base_folder(part: _Part, raw: dict, fields: dict[str, Path]) -> Path | None:
    """Where the part's base weights are: `option=PATH` from the spec, else the config's id when it is a
    local checkpoint folder, else None."""
    if part.option in fields:
        return _checkpoint(fields[part.option], f"{part.option} base model")
    model_id = raw.get(part.id_field)
    if model_id and Path(model_id).expanduser().is_dir():
        return _checkpoint(Path(model_id).expanduser(), f"{part.id_field} ({model_id})")
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
        _expect_model_type(audio_base, "whisper", what="a Whisper checkpoint as Ultravox's audio base")
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
    files = _weight_files(folder)
    for prefix in _WHISPER_ENCODER_PREFIXES:
        tensors = _read_tensors(files, keep=lambda key: key.startswith(prefix))
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
        _check_loading(info, f"{folder} (language_model.*)")
        return model.eval()
    model = _pretrained(AutoModelForCausalLM, base, options)
    if own:
        _log.info("%s: %d language_model.* weights written over %s", folder, len(own), base)
        state = model.state_dict()
        _check_fit(own, {key: value.shape for key, value in state.items()}, f"{folder} (language_model.* over {base})")
        with torch.no_grad():
            for key, value in own.items():
                state[key].copy_(value)
    return model


def _check_fit(tensors: dict[str, Tensor], shapes: dict[str, torch.Size], where: str) -> None:
    """Every checkpoint tensor has a place of the same shape in the model."""
    unexpected = tensors.keys() - shapes.keys()
    if unexpected:
        raise WeightsMissing(f"{where}: checkpoint keys the model does not use: {_listed(unexpected)}")
    wrong = [f"{key} {tuple(value.shape)} ≠ {tuple(shapes[key])}" for key, value in tensors.items()
             if value.shape != shapes[key]]
    if wrong:
        raise WeightsMissing(f"{where}: weights of the wrong shape: {_listed(wrong)}")


def _ultravox_parts(folder: Path) -> dict[str, dict[str, Tensor]]:
    """The checkpoint's tensors by part (audio_tower, multi_modal_projector, language_model), prefix removed."""
    parts: dict[str, dict[str, Tensor]] = {_AUDIO.prefix: {}, _PROJECTOR: {}, _TEXT.prefix: {}}
    stray = []
    for key, value in _read_tensors(_weight_files(folder)).items():
        prefix, _, inner = key.partition(".")
        if prefix in parts:
            parts[prefix][inner] = value
        else:
            stray.append(key)
    if stray:
        raise WeightsMissing(f"{folder}: checkpoint keys outside audio_tower, multi_modal_projector and "
                             f"language_model: {_listed(stray)}")
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
    _check_fit(tensors, shapes, str(folder))
    unfilled = shapes.keys() - tensors.keys()
    if unfilled:
        raise WeightsMissing(f"{folder}: weights in neither the checkpoint nor a base folder: {_listed(unfilled)}")
    return tensors


def _load_ultravox(spec: str, rest: str, options: LoadOptions) -> UltravoxSpeechLM:
    head, fields = _fields(spec, rest, allowed=(_AUDIO.option, _TEXT.option))
    if head is None:
        raise InterpError(f"{spec!r} names no checkpoint folder; write {CHECKPOINT_SPECS['ultravox']}")
    folder = _checkpoint(_path(head), "fixie-ai Ultravox")
    _expect_model_type(folder, "ultravox", what="a fixie-ai Ultravox checkpoint")
    raw = _config_dict(folder)
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


def _ultravox_tokenizer(folder: Path, text_base: Path | None) -> PreTrainedTokenizerBase:
    """The checkpoint folder's tokenizer, else its LLM base folder's."""
    tokenizer_folder = folder if _has_tokenizer(folder) else text_base
    if tokenizer_folder is None:
        raise WeightsMissing(f"{folder} has no tokenizer (tokenizer.json / tokenizer_config.json) and no llm base "
                             f"folder to take one from; pass ultravox:{folder},llm=PATH")
    return _tokenizer(tokenizer_folder)


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


_LOADERS: dict[str, Callable[[str, str, LoadOptions], object]] = {
    "qwen2-audio": _load_qwen2_audio,
    "ultravox": _load_ultravox,
    "phi4mm": _load_phi4mm,
    "cascade": _load_cascade,
}
