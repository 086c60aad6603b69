"""Where the audio is in each forward pass, for hooks that edit audio positions only.

A hook sees a (batch, seq, d) tensor, not the batch it came from. The adapter knows: every `SpeechBatch` carries
its (batch, seq) `audio_mask`. `AudioPositions` joins the two without touching the adapter's methods:

* the adapter announces every batch it builds or runs (`EncodedSpeechLM.observe_batches`); the announced mask
  belongs to the next pass that starts a sequence (past length 0) and to the cached passes that continue it;
* inside `with positions.batch(batch):` a pass that starts a sequence, with no newer announcement, uses that
  batch's mask (for direct calls such as `model.model(**batch.inputs)`);
* a pass that starts a sequence with neither has no mask, and asking for its audio positions raises InterpError.

A pre-hook on the first decoder layer reads the pass's past length (`cache.get_seq_length()` of the KV cache it
gets; 0 without one), so a pass over positions [past, past + seq) uses columns past … past + seq of the mask, and
positions beyond the mask are text. Hence the prefill pass of a generation has the prompt's audio positions;
cached decoding steps and choices scored from the prompt's repeated KV cache (past ≥ prompt length) hold only
text; a loop re-running the whole sequence without a cache has the same audio positions at every step.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from interp.errors import InterpError
from interp.models.base import SpeechBatch
from interp.models.encoded import EncodedSpeechLM

__all__ = ["AudioPositions"]


class AudioPositions:
    """The audio mask of the forward pass in progress; `track` keeps it up to date within a block."""

    def __init__(self) -> None:
        self._explicit: list[Tensor] = []
        self._announced: Tensor | None = None
        self._current: Tensor | None = None
        self._past = 0
        self._chunk_key: tuple | None = None
        self._chunk_mask: Tensor | None = None
        self._chunk: Tensor | None = None

    @contextmanager
    def track(self, model: object, first_layer: nn.Module) -> Iterator[AudioPositions]:
        """Within the block, follow the batches `model` announces and the passes through `first_layer` (the
        LLM's first decoder layer). A model that is no EncodedSpeechLM announces nothing: only `batch` works."""
        handle = first_layer.register_forward_pre_hook(self._start_pass, with_kwargs=True)
        try:
            if isinstance(model, EncodedSpeechLM):
                with model.observe_batches(self._announce):
                    yield self
            else:
                yield self
        finally:
            handle.remove()

    @contextmanager
    def batch(self, batch_or_mask: SpeechBatch | Tensor) -> Iterator[None]:
        """Within the block, passes that start a sequence use this batch's audio mask ((batch, seq) bool, or a
        SpeechBatch), unless the adapter announces a newer batch."""
        mask = getattr(batch_or_mask, "audio_mask", batch_or_mask)
        if not isinstance(mask, Tensor) or mask.dim() != 2:
            raise InterpError("an audio mask is a (batch, seq) bool tensor or a SpeechBatch")
        self._explicit.append(mask.detach().bool().cpu())
        self._announced = None  # the block is the newer word
        try:
            yield
        finally:
            self._explicit.pop()

    def _announce(self, batch: SpeechBatch) -> None:
        self._announced = batch.audio_mask.detach().bool().cpu()

    def _start_pass(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        self._past = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
        if self._past > 0 and self._current is not None:
            return  # a cached pass continues the sequence in progress
        if self._announced is not None:
            self._current, self._announced = self._announced, None
        else:
            self._current = self._explicit[-1] if self._explicit else None

    def mask(self, batch: int, seq: int, device: torch.device) -> Tensor:
        """(batch, seq) bool on `device`: the audio positions of the pass in progress.

        Raises InterpError when the pass has no known batch, or its batch size differs from the mask's."""
        mask = self._current
        if mask is None:
            raise InterpError("an erasure hook at audio positions ran without knowing where the audio is: call the "
                              "model through its adapter (logits, score_choices, generate) inside apply_eraser, or "
                              "wrap direct calls in `with active.batch(batch):`; systems sharing the hooked modules "
                              "must not run inside the block")
        if self._past >= mask.shape[1]:  # a pass past the prompt (cached decoding, choices after the prompt)
            return torch.zeros(batch, seq, dtype=torch.bool, device=device)
        if mask.shape[0] != batch:
            raise InterpError(f"the audio mask in force covers {mask.shape[0]} sequences but the forward pass has "
                              f"{batch}; erasure at audio positions follows the batch the adapter prepared")
        key = (self._past, seq, batch, device)
        if mask is not self._chunk_mask or key != self._chunk_key:  # one slice per forward pass, not per site
            chunk = torch.zeros(batch, seq, dtype=torch.bool)
            part = mask[:, self._past:self._past + seq]
            chunk[:, :part.shape[1]] = part
            self._chunk_mask, self._chunk_key, self._chunk = mask, key, chunk.to(device)
        return self._chunk
