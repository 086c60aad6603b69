"""Cascades from checkpoint folders: `cascade:asr=PATH,llm=PATH` and the own-backbone
`cascade:asr=PATH,llm=self,speech=SPEC`.

An own-backbone cascade reads the transcript with the speech LLM's own language model
(interp.models.own_backbone): the speech model SPEC names is taken from `loaded` when it is there, so both
share one copy of the weights. `speech=` comes last: everything after it is SPEC, commas too.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from transformers import (
    AutoModelForCausalLM,
    WhisperForConditionalGeneration,
    WhisperProcessor,
)

from interp.errors import InterpError
from interp.models.base import SpeechLM
from interp.models.cascade import Cascade
from interp.models.checkpoints.folders import (
    checkpoint_folder,
    expect_model_type,
    pretrained,
    tokenizer_of,
)
from interp.models.checkpoints.options import LoadOptions
from interp.models.checkpoints.specs import CHECKPOINT_SPECS, spec_fields
from interp.models.own_backbone import own_text_lm
from interp.models.text_lm import TextLM
from interp.models.whisper_ct2 import transcribe

__all__ = ["WhisperCheckpointASR", "load_cascade", "SPEECH_KINDS"]

_log = logging.getLogger(__name__)


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


def _text_lm(folder: Path, options: LoadOptions) -> TextLM:
    """A causal LM checkpoint folder, with its tokenizer, as the LLM half of a cascade."""
    model = pretrained(AutoModelForCausalLM, folder, options)
    return TextLM(model, tokenizer_of(folder), name=folder.name)


_OWN_LLM = "self"
"""`llm=self`: the cascade's LLM is the language model of the speech LLM that `speech=` names."""
SPEECH_KINDS = ("qwen2-audio", "ultravox", "phi4mm")


def load_cascade(spec: str, rest: str, options: LoadOptions, *, loaded: Mapping[str, object],
                 load_speech: Callable[[str], SpeechLM]) -> Cascade:
    """The cascade a `cascade:` spec names (`rest`: what follows the colon). An own-backbone cascade takes its
    speech LLM from `loaded` (by spec) when it is there, else loads it with `load_speech(spec)`."""
    parts, *after = re.split(r"(?:^|,)\s*speech=", rest, maxsplit=1)
    speech_spec = after[0].strip() if after else ""
    head, fields = spec_fields(spec, parts, allowed=("asr", "llm"))
    if head is not None or set(fields) != {"asr", "llm"}:
        raise InterpError(f"{spec!r} must name both parts: {CHECKPOINT_SPECS['cascade']}")
    is_own = str(fields["llm"]) == _OWN_LLM
    if is_own != bool(speech_spec) or (is_own and speech_spec.partition(":")[0] not in SPEECH_KINDS):
        raise InterpError(f"{spec!r}: llm=self goes with speech=SPEC last, SPEC one of "
                          f"{', '.join(CHECKPOINT_SPECS[kind] for kind in SPEECH_KINDS)} (write ./self for a "
                          "folder called self)")
    asr_folder = checkpoint_folder(fields["asr"], "Whisper")
    expect_model_type(asr_folder, "whisper", what="a WhisperForConditionalGeneration checkpoint as asr=")
    whisper = pretrained(WhisperForConditionalGeneration, asr_folder, options)
    asr = WhisperCheckpointASR(whisper, WhisperProcessor.from_pretrained(asr_folder, local_files_only=True),
                               name=f"whisper:{asr_folder.name}", source=str(asr_folder))
    if not is_own:
        return Cascade(asr, _text_lm(checkpoint_folder(fields["llm"], "causal LM"), options), name=spec)
    speech = loaded.get(speech_spec)
    if speech is None:
        _log.info("%s: loading %s for its language model", spec, speech_spec)
        speech = load_speech(speech_spec)
    return Cascade(asr, own_text_lm(speech), name=spec)
