"""The implicit cascade: a speech LLM's own text LLM reading what its logit lens reads off the audio.

If an end-to-end model were a cascade in disguise, the text its logit lens reads at the audio positions of one
layer would be a rough transcript. The implicit cascade tests that: it answers each item from that text (the
item's lens text, made by interp.lens.implicit) with the model's own text LLM, in the task prompt, where the real
cascade puts its ASR transcript and the oracle the gold transcript. It answers `score_choices` / `generate` as
the Oracle does, so the behaviour harness (interp.behavior.run_system) runs it like any other system and
`interp stats RUN` compares it with the real cascade.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from interp.data.manifest import Item, SpokenSet
from interp.errors import InterpError
from interp.models.base import SpeechLM
from interp.models.text_lm import TextLM
from interp.models.ultravox_lm import UltravoxSpeechLM

__all__ = ["ImplicitCascade", "implicit_cascade_llm"]


@dataclass(frozen=True)
class ImplicitCascade:
    """A text LLM reading each item's logit-lens text instead of its audio or its transcript.

    texts: item id -> the lens text of that item at `layer` of the speech LLM `model`, read from the cache
    `cache` (made with `cache_model`), with the final norm (`norm`) or without, by the rule `text_rule`.
    """

    llm: TextLM
    texts: Mapping[str, str]
    model: str
    cache: str
    cache_model: str
    layer: int
    norm: bool
    text_rule: str

    input: ClassVar[str] = "logit-lens text"
    """What a run's config records as the system's input."""

    @property
    def name(self) -> str:
        """The system's name (its folder in a run): implicit-cascade-L<layer>[-nonorm]."""
        return f"implicit-cascade-L{self.layer}" + ("" if self.norm else "-nonorm")

    @property
    def weights(self) -> str:
        """Fingerprint of the lens texts (sha256, 16 hex digits): what this system knows besides its text LLM,
        so that a run resumed with the texts of another cache or model is refused instead of mixed in."""
        blob = json.dumps(sorted(self.texts.items()), ensure_ascii=False).encode("utf-8")
        return hashlib.sha256(blob).hexdigest()[:16]

    def text_for(self, item: Item) -> str:
        """The lens text of `item`; InterpError when the lens did not read it."""
        try:
            return self.texts[item.id]
        except KeyError:
            raise InterpError(f"item {item.id!r} is not in the cache {self.cache}: answer only the items the lens "
                              "read (ImplicitCascade.restrict)") from None

    def restrict(self, spoken_set: SpokenSet) -> SpokenSet:
        """The set with only the items this system has a lens text for, in set order."""
        return replace(spoken_set, items=tuple(item for item in spoken_set.items if item.id in self.texts))

    def describe(self) -> dict[str, Any]:
        """What a run's config records about this system beside its name and class."""
        return {"model": self.model, "llm": self.llm.name, "cache": self.cache, "cache_model": self.cache_model,
                "layer": self.layer, "norm": self.norm, "lens_text": self.text_rule}

    def score_choices(self, text: str, prompt: str, choices: Sequence[str]) -> np.ndarray:
        """(choices,) float64, scored by the text LLM with the lens text in the prompt's slot."""
        return self.llm.score_choices(text, prompt, choices)

    def generate(self, text: str, prompt: str, *, max_new_tokens: int = 32) -> str:
        return self.llm.generate(text, prompt, max_new_tokens=max_new_tokens)


def implicit_cascade_llm(model: SpeechLM | TextLM) -> TextLM:
    """The text LLM inside a speech LLM, as a TextLM: SmolLM2 for mini-ultravox, the language model of any
    Ultravox adapter; InterpError for other architectures (their LLM has no stand-alone causal-LM head here)."""
    name = str(getattr(model, "name", type(model).__name__))
    if isinstance(model, TextLM):
        return model
    if isinstance(model, UltravoxSpeechLM):
        if name == "mini-ultravox":
            from interp.models.mini import _smollm2

            llm = _smollm2()
            if llm.model is model.model.language_model:
                return llm
        return TextLM(model.model.language_model, model.tokenizer, name=f"{name}.language_model")
    raise InterpError(f"the implicit cascade needs the text LLM inside {name}; it is supported for Ultravox models "
                      "(mini-ultravox, tiny-ultravox, ultravox:PATH) only")
