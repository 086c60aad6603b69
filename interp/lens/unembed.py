"""The model's own final norm and unembedding as one read-only bundle: logits = W_U · RMSNorm_final(h).

The shape of tuned-lens's `Unembed` (tuned_lens/nn/unembed.py), without its copy: the bundle holds the model's
own modules (Llama/SmolLM2 RMSNorm, Gemma's (1 + w) RMSNorm, whatever the adapter returns as `final_norm` and
`unembed`), so the lens reads a hidden state exactly as the model's head does. At the last layer this equals the
model's own logits (HF applies the same norm and lm_head there). Nothing is trained: every call runs under
torch.no_grad.

`norm=False` skips the norm and unembeds the raw residual stream. The argmax is invariant to the per-row scalar
1 / rms(h), so what changes is the missing elementwise norm weight (and Gemma's +1): dimensions the model scales
down before unembedding (often massive-activation dims) then dominate the logits, and the top-1 tokens of early
layers in particular are mostly junk. Logit values are also on another scale (x rms(h)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from interp.errors import InterpError
from interp.models.base import SpeechLM
from interp.models.text_lm import TextLM

__all__ = ["DEFAULT_CHUNK_ROWS", "Unembed"]

DEFAULT_CHUNK_ROWS = 2048


def _system_name(model: object) -> str:
    return str(getattr(model, "name", type(model).__name__))


@dataclass(frozen=True)
class Unembed:
    """A model's final norm and unembedding (W_U, `(vocab, d)`), read-only.

    Memory: none of its own (it holds the model's modules); a call on `rows` hidden states makes `(rows, vocab)`
    logits, so `top_k` bounds that by chunk_rows.
    """

    final_norm: nn.Module
    unembedding: nn.Module

    @classmethod
    def from_model(cls, model: SpeechLM | TextLM) -> Unembed:
        """The bundle of a speech LLM or a text LLM; InterpError when it has none (a cascade) or when its
        unembedding has no `(vocab, d)` weight."""
        try:
            final_norm, unembedding = model.final_norm, model.unembed
        except AttributeError:
            raise InterpError(f"{_system_name(model)} has no final norm and unembedding to read a logit lens with; "
                              "use the speech LLM the cache was made with") from None
        weight = getattr(unembedding, "weight", None)
        if weight is None or weight.ndim != 2:
            raise InterpError(f"the unembedding {type(unembedding).__name__} has no (vocab, d) weight")
        return cls(final_norm, unembedding)

    @property
    def weight(self) -> Tensor:
        """W_U: `(vocab, d)`, on the model's device and in its dtype."""
        return self.unembedding.weight

    @property
    def d(self) -> int:
        """Width of the hidden states the unembedding reads."""
        return int(self.weight.shape[1])

    @torch.no_grad()
    def __call__(self, h: Tensor, *, norm: bool = True) -> Tensor:
        """Logits W_U · RMSNorm_final(h) (W_U · h with norm=False).

        h: `(rows, d)` on the weight's device and in its dtype.  Returns `(rows, vocab)` in the weight's dtype.
        """
        return self.unembedding(self.final_norm(h) if norm else h)

    @torch.no_grad()
    def top_k(self, rows: np.ndarray | Tensor, *, k: int = 5, norm: bool = True,
              chunk_rows: int = DEFAULT_CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray]:
        """The k largest logits of each row and their token ids, sorted by falling logit (torch.topk).

        Rows go through in chunks of chunk_rows, so at most chunk_rows x vocab logits exist at once, on the
        device of W_U. The rows are cast to W_U's dtype before the norm; the logits are read in float32.

        rows: `(rows, d)`, any float dtype.  Returns ids `(rows, k)` int64 and logits `(rows, k)` float32.
        """
        if k < 1:
            raise InterpError(f"--top-k must be at least 1, got {k}")
        if chunk_rows < 1:
            raise InterpError(f"chunk_rows must be at least 1, got {chunk_rows}")
        weight = self.weight
        n = int(rows.shape[0])
        ids = np.empty((n, k), dtype=np.int64)
        logits = np.empty((n, k), dtype=np.float32)
        for start in range(0, n, chunk_rows):
            chunk = rows[start:start + chunk_rows]
            h = chunk if isinstance(chunk, Tensor) else torch.from_numpy(np.ascontiguousarray(chunk))
            h = h.to(device=weight.device, dtype=weight.dtype)
            values, indices = torch.topk(self(h, norm=norm).float(), k=k, dim=-1)
            ids[start:start + len(chunk)] = indices.cpu().numpy()
            logits[start:start + len(chunk)] = values.cpu().numpy()
        return ids, logits
