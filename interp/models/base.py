"""The one protocol every analysis talks to: `SpeechLM` (hears audio) and the pieces it shares.

A site is a named activation (`audio.layers.{i}`, `projector`, `llm.embed`, `llm.layers.{i}`): the key
used by hooks, caches, figures and results. Only an adapter's site table knows the module behind a name
(as pyvene's per-architecture tables do), because HF module paths move between transformers versions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Literal, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["AUDIO_PLACEHOLDER", "Site", "SpeechBatch", "SpeechLM", "describe_model", "other_weights", "llm_sites",
           "build_seeded", "CausalLMReadout"]

AUDIO_PLACEHOLDER = "<|audio|>"
"""Where the audio goes in a prompt. An end-to-end model puts its audio embeddings there; a cascade
puts the transcript there, so both read the same prompt."""


@dataclass(frozen=True)
class Site:
    """A named activation: the `output` (or the first positional `input`) of one module, shape (batch, seq, d)."""

    name: str
    module: nn.Module
    take: Literal["input", "output"] = "output"
    seconds_per_row: float | None = None
    """Audio covered by one row of an audio-only site (encoder frame, projector token); None for sites
    on the LLM's sequence, whose rows are token positions (see SpeechBatch.audio_span)."""


@dataclass(frozen=True)
class SpeechBatch:
    """Inputs of one batch, right-padded, and where each item's audio sits.

    inputs: keyword arguments of the adapter's forward. input_ids, attention_mask: (batch, seq) int64.
    audio_mask: (batch, seq) bool, True at audio positions. audio_span: (batch, seq, 2) float64 seconds
    (t_start, t_end) of the original audio covered by each audio position, NaN elsewhere.
    """

    inputs: dict[str, Tensor]
    input_ids: Tensor
    attention_mask: Tensor
    audio_mask: Tensor
    audio_span: np.ndarray


@runtime_checkable
class SpeechLM(Protocol):
    """An end-to-end speech LLM behind the project's protocol."""

    name: str

    def prepare(self, audio: Sequence[np.ndarray], prompts: Sequence[str]) -> SpeechBatch:
        """(16 kHz mono float32 audio, prompt with one AUDIO_PLACEHOLDER) pairs → a batch."""

    def logits(self, batch: SpeechBatch) -> Tensor:
        """(batch, seq, vocab) float32 next-token logits."""

    def sites(self) -> dict[str, Site]:
        """Every hookable site, by name, in forward order."""

    @property
    def final_norm(self) -> nn.Module:
        """The LLM's final norm (applied before the unembedding), for the logit lens."""

    @property
    def unembed(self) -> nn.Module:
        """The LLM's unembedding (lm_head)."""

    def score_choices(self, audio: np.ndarray, prompt: str, choices: Sequence[str]) -> np.ndarray:
        """(choices,) float64: summed log-probability of each choice's tokens after the prompt."""

    def generate(self, audio: np.ndarray, prompt: str, *, max_new_tokens: int = 32) -> str:
        """Greedy answer to the prompt."""


def describe_model(system: object, spec: str | None) -> dict[str, Any]:
    """What identifies a loaded system in a cache header or a run's config: the spec it was loaded from, its
    class and, where one name covers weights that change between versions of the package (mini-ultravox's
    trained projector), their fingerprint (`system.weights`), so that work made with other weights is refused
    on resume instead of mixed in."""
    described: dict[str, Any] = {"spec": spec, "class": type(system).__name__}
    weights = getattr(system, "weights", None)
    if weights is not None:
        described["weights"] = weights
    return described


def other_weights(recorded: dict[str, Any], system: object, spec: str | None) -> bool:
    """Whether `recorded` (a cache header's model_info) names other weights than `system` has."""
    return recorded.get("weights") != describe_model(system, spec).get("weights")


def llm_sites(layers: Sequence[nn.Module]) -> dict[str, Site]:
    """`llm.embed` (input of decoder layer 0) and `llm.layers.{i}` (output of layer i) of a decoder stack."""
    table = {"llm.embed": Site("llm.embed", layers[0], take="input")}
    table.update({f"llm.layers.{i}": Site(f"llm.layers.{i}", layer) for i, layer in enumerate(layers)})
    return table


class CausalLMReadout:
    """`final_norm` and `unembed` of a transformers *ForCausalLM whose decoder sits at `.model` (Llama, Qwen2,
    Phi-3/4, Gemma-3): what the logit lens reads, for adapters that hold such a model as `self.model`."""

    model: nn.Module

    @property
    def final_norm(self) -> nn.Module:
        return self.model.model.norm

    @property
    def unembed(self) -> nn.Module:
        return self.model.lm_head


_Built = TypeVar("_Built")


def build_seeded(build: Callable[[], _Built], *, seed: int) -> _Built:
    """Call `build` with torch's global generator seeded, then restore the generator.

    Module initialisers draw from the global generator; library code must not leave it changed.
    """
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return build()
    finally:
        torch.random.set_rng_state(state)
