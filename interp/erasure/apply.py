"""Apply an eraser in the forward pass, so in every generation step: checks, then activations' edit hooks.

`apply_eraser(model, eraser)` is a context manager that edits the fitted sites (activations.hooks.edit): the
site's output (`llm.layers.{i}`: the residual stream after decoder layer i; `llm.embed`: the input of layer 0) is
replaced by its erased value at AUDIO positions (``positions="audio"``, the default: the rows the eraser was
fitted on) or at every position (``positions="all"``), in every forward pass. Audio-only sites (`projector`,
`audio.layers.{i}`) are erased on every row. The erased values are computed in float32 (float64 for float64
activations) and cast back to the hooked tensor's dtype and device; the other positions are passed through bit
for bit. Sites of rank 0 get no hook.

Where the audio is comes from the batches the adapter announces (activations.audio_positions; no adapter method
is wrapped): the prefill pass of a generation erases the prompt's audio positions, cached decoding steps and
choices scored from the prompt's KV cache hold only text and are left alone. Under ``positions="all"`` every
position of every pass is erased, generated tokens included: fitting on audio rows and applying to text rows is
out of distribution, so that must be asked for. A forward pass that reaches an audio-position hook without an
announced batch (e.g. `model.model(**batch.inputs)` called directly, or another system sharing the same LLM
modules, as the mini stack's cascades do) raises InterpError; use ``with active.batch(batch):`` for direct calls.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor

from activations.audio_positions import AudioPositions
from activations.hooks import Edit, edit
from interp.erasure.eraser import Eraser, SiteEraser
from interp.errors import InterpError
from interp.models.base import Site, SpeechBatch, SpeechLM
from interp.sites import SiteError, describe_sites, expand_sites

__all__ = ["Positions", "ActiveErasure", "apply_eraser", "checked_edit"]

_log = logging.getLogger(__name__)

Positions = Literal["audio", "all"]


@dataclass(frozen=True)
class ActiveErasure:
    """What `apply_eraser` yields: the eraser in force, its sites and positions, and `batch(...)` for direct calls."""

    model: SpeechLM
    eraser: Eraser
    sites: list[str]
    positions: Positions
    audio: AudioPositions = field(default_factory=AudioPositions, repr=False)

    def batch(self, batch_or_mask: SpeechBatch | Tensor) -> AbstractContextManager[None]:
        """Within the block, direct forward passes (not through the adapter) use this batch's audio mask
        ((batch, seq) bool, or a SpeechBatch)."""
        return self.audio.batch(batch_or_mask)


def _name(model: SpeechLM) -> str:
    return getattr(model, "name", type(model).__name__)


def _chosen_sites(eraser: Eraser, sites: Sequence[str] | str | None) -> list[str]:
    fitted = list(eraser.sites)
    if isinstance(sites, str):
        return expand_sites(sites, fitted)
    chosen = fitted if sites is None else list(sites)
    unknown = [s for s in chosen if s not in eraser.sites]
    if unknown or not chosen:
        raise SiteError(f"the eraser has no site {unknown[0] if unknown else '(none given)'!r}: it was fitted on "
                        f"{describe_sites(fitted)}")
    return chosen


def _llm_width(model: SpeechLM) -> int | None:
    """Width of the LLM's residual stream: the unembedding's input size (None when the model hides it)."""
    try:
        return int(model.unembed.weight.shape[-1])
    except (AttributeError, TypeError, IndexError):
        return None


def _check_model(model: SpeechLM, eraser: Eraser, chosen: list[str], table: dict[str, Site]) -> None:
    """Refuse a model that lacks a site or whose width differs from the eraser's; warn about another model."""
    name = _name(model)
    absent = [s for s in chosen if s not in table]
    if absent:
        raise InterpError(f"model {name} has no site {absent[0]!r} (it has {describe_sites(list(table))}); the eraser "
                          f"was fitted on {eraser.model}")
    width = _llm_width(model)
    for site in chosen:
        if site.startswith("llm.") and width is not None and width != eraser.sites[site].d:
            raise InterpError(f"site {site} of model {name} is {width} wide but the eraser was fitted on "
                              f"{eraser.sites[site].d} (model {eraser.model}); use an eraser fitted on this model")
    if eraser.model and eraser.model != name:
        _log.warning("applying an eraser fitted on %s to %s", eraser.model, name)
    fitted_weights = eraser.meta.get("model_info", {}).get("weights")
    if fitted_weights is not None and fitted_weights != getattr(model, "weights", None):
        _log.warning("applying an eraser fitted on %s with weights %s to weights %s", eraser.model, fitted_weights,
                     getattr(model, "weights", None))


def checked_edit(name: str, site: SiteEraser, model: str | None) -> Edit:
    """The site's eraser as an edit that first checks the activation's width (one line naming the fix)."""
    def erase(x: Tensor) -> Tensor:
        if x.shape[-1] != site.d:
            raise InterpError(f"site {name}: the model's activations are {x.shape[-1]} wide but the eraser was "
                              f"fitted on {site.d} (model {model}); use an eraser fitted on this model")
        return site(x)
    return erase


@contextmanager
def apply_eraser(model: SpeechLM, eraser: Eraser, *, sites: Sequence[str] | str | None = None,
                 positions: Positions = "audio") -> Iterator[ActiveErasure]:
    """Within the block, `model`'s forward passes (and so every generation step) have `eraser` applied at
    `sites` (default: every fitted site; a list or a site spec) at ``audio`` positions or ``all`` positions.

    Raises InterpError (one line) when the model lacks a site, a site's width differs from the eraser's, or
    positions is unknown. Hooks and listeners are removed on exit, also when the block raises.
    """
    if positions not in ("audio", "all"):
        raise InterpError(f"positions must be audio or all, got {positions!r}")
    if not hasattr(model, "sites"):
        raise InterpError(f"{_name(model)!r} has no hook sites (a cascade or an endpoint): erasure needs a model "
                          "whose activations it can reach")
    chosen = _chosen_sites(eraser, sites)
    table = model.sites()
    _check_model(model, eraser, chosen, table)
    if positions == "audio" and not hasattr(model, "prepare"):
        raise InterpError(f"{_name(model)} reads no audio: use positions='all' to erase a text model's every position")
    active = ActiveErasure(model, eraser, chosen, positions)
    edits = {name: checked_edit(name, eraser.sites[name], eraser.model) for name in chosen
             if eraser.sites[name].rank > 0}
    with ExitStack() as stack:
        audio = None
        if positions == "audio" and any(table[name].seconds_per_row is None for name in edits):
            first = table.get("llm.embed") or table.get("llm.layers.0")
            if first is None:
                raise InterpError("erasure at audio positions needs the model's first decoder layer (site llm.embed)")
            audio = stack.enter_context(active.audio.track(model, first.module))
        stack.enter_context(edit(table, edits, audio=audio))
        yield active
