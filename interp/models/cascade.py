"""Cascades: ASR → transcript → the same text LLM with the same prompt as the end-to-end model.

The only difference between a cascade and its matched end-to-end model is where the words in the
placeholder come from. The oracle puts the gold transcript there: the ceiling of the text route.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from interp.models.text_lm import TextLM

__all__ = ["ASR", "Cascade", "Oracle"]


class ASR(Protocol):
    name: str

    def transcribe(self, audio: Sequence[np.ndarray]) -> list[str]:
        """16 kHz mono float32 clips → transcripts."""


class Cascade:
    """An ASR system feeding a text LLM."""

    def __init__(self, asr: ASR, llm: TextLM, *, name: str) -> None:
        self.asr = asr
        self.llm = llm
        self.name = name

    def transcribe(self, audio: np.ndarray) -> str:
        return self.asr.transcribe([audio])[0]

    def score_choices(self, audio: np.ndarray, prompt: str, choices: Sequence[str]) -> np.ndarray:
        """(choices,) float64, scored by the LLM on the ASR transcript."""
        return self.llm.score_choices(self.transcribe(audio), prompt, choices)

    def generate(self, audio: np.ndarray, prompt: str, *, max_new_tokens: int = 32) -> str:
        return self.llm.generate(self.transcribe(audio), prompt, max_new_tokens=max_new_tokens)


class Oracle:
    """The text LLM reading the gold transcript: what the task allows when the words are perfect."""

    def __init__(self, llm: TextLM, *, name: str = "oracle") -> None:
        self.llm = llm
        self.name = name

    def score_choices(self, transcript: str, prompt: str, choices: Sequence[str]) -> np.ndarray:
        return self.llm.score_choices(transcript, prompt, choices)

    def generate(self, transcript: str, prompt: str, *, max_new_tokens: int = 32) -> str:
        return self.llm.generate(transcript, prompt, max_new_tokens=max_new_tokens)
