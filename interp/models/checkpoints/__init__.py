"""Real checkpoints from local folders: `qwen2-audio:PATH`, `ultravox:PATH`, `phi4mm:PATH`, `cascade:asr=PATH,llm=PATH`
(and the spec of `disguise:asr=…,llm=…`, which interp.models.mini loads: interp.models.disguise).

Users with a GPU box keep their checkpoints in local folders; nothing here reaches a model hub
(`local_files_only=True` everywhere) or runs remote code. Weights are read from safetensors only (no pickle),
and every load is strict (interp.models.checkpoints.folders). One module per kind: `ultravox` (a fixie-ai
release and its base models), `qwen2_audio`, `phi4mm` (with its speech LoRA) and `cascade` (an ASR and an
LLM folder, or the speech LLM's own LLM); `options` holds LoadOptions and `specs` the spec of each kind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from transformers import PreTrainedTokenizerBase

from interp.errors import InterpError
from interp.models.base import SpeechLM
from interp.models.cascade import Cascade
from interp.models.checkpoints.cascade import (
    SPEECH_KINDS,
    WhisperCheckpointASR,
    load_cascade,
)
from interp.models.checkpoints.options import Dtype, LoadOptions
from interp.models.checkpoints.phi4mm import load_phi4mm, load_phi4mm_tokenizer
from interp.models.checkpoints.qwen2_audio import (
    load_qwen2_audio,
    load_qwen2_audio_tokenizer,
)
from interp.models.checkpoints.specs import CHECKPOINT_SPECS
from interp.models.checkpoints.ultravox import load_ultravox, load_ultravox_tokenizer

__all__ = ["Dtype", "LoadOptions", "load_checkpoint", "load_checkpoint_tokenizer", "CHECKPOINT_SPECS",
           "WhisperCheckpointASR"]

_SPEECH_LOADERS: dict[str, Callable[[str, str, LoadOptions], SpeechLM]] = {
    "qwen2-audio": load_qwen2_audio,
    "ultravox": load_ultravox,
    "phi4mm": load_phi4mm,
}
_TOKENIZERS: dict[str, Callable[[str, str], PreTrainedTokenizerBase | None]] = {
    "qwen2-audio": load_qwen2_audio_tokenizer,
    "ultravox": load_ultravox_tokenizer,
    "phi4mm": load_phi4mm_tokenizer,
}
assert set(_SPEECH_LOADERS) == set(SPEECH_KINDS) == set(_TOKENIZERS)


def load_checkpoint(spec: str, *, options: LoadOptions,
                    loaded: Mapping[str, object] | None = None) -> SpeechLM | Cascade:
    """The system a checkpoint spec names (see CHECKPOINT_SPECS), named by the spec itself.

    loaded: systems already loaded, by spec; an own-backbone cascade takes its speech model from here rather
    than loading a second copy of its weights. Raises InterpError for an unknown kind or a malformed spec,
    WeightsMissing for a path that is not a checkpoint folder or a checkpoint whose keys do not fit its model.
    """
    kind, colon, rest = spec.partition(":")
    if not colon or kind not in CHECKPOINT_SPECS:
        raise InterpError(f"unknown checkpoint kind {kind!r} in {spec!r}; the kinds are "
                          f"{', '.join(CHECKPOINT_SPECS.values())}")
    if not rest.strip():
        raise InterpError(f"{spec!r} names no path; write {CHECKPOINT_SPECS[kind]}")
    options.torch_device()
    if kind == "disguise":  # its parts may be model names, which only interp.models.mini knows
        raise InterpError(f"{spec!r}: a disguise is loaded by interp.models.mini.load_model")
    if kind == "cascade":
        return load_cascade(spec, rest, options, loaded=loaded or {},
                            load_speech=lambda speech: load_checkpoint(speech, options=options))
    return _SPEECH_LOADERS[kind](spec, rest, options)


def load_checkpoint_tokenizer(spec: str) -> PreTrainedTokenizerBase:
    """The tokenizer of the speech LLM a checkpoint spec names, read without its weights: what erasure's text
    concept needs to align words to tokens (loading a 7B model for it would take minutes and tens of GB).

    Raises InterpError for a spec that names no speech LLM, WeightsMissing for a folder without a tokenizer.
    """
    kind, _, rest = spec.partition(":")
    tokenizer = None
    if kind == "ultravox" or (kind in _TOKENIZERS and rest.strip()):
        tokenizer = _TOKENIZERS[kind](spec, rest)
    if tokenizer is None:
        raise InterpError(f"{spec!r} names no speech LLM checkpoint; write {CHECKPOINT_SPECS['qwen2-audio']}, "
                          f"{CHECKPOINT_SPECS['ultravox']} or {CHECKPOINT_SPECS['phi4mm']}")
    return tokenizer
