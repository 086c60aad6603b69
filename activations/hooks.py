"""Plain torch forward hooks on a model's named sites: read activations out of a forward pass, or edit them.

One idiom for every model (speech adapters, text LLMs): the adapter's site table names the module. `capture`
keeps a detached reference to what passes through it and changes nothing; `edit` replaces it by an edit of it
(at every position, or at the audio positions `activations.audio_positions` finds). Hooks go in through a
context manager and are removed in `finally`; no model method is ever wrapped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from activations.audio_positions import AudioPositions
from interp.models.base import Site

__all__ = ["capture", "StopForward", "Edit", "edit"]

Edit = Callable[[Tensor], Tensor]
"""An edit of a site's activation: (..., d) in, (..., d) out, same dtype and device (e.g. a LEACE eraser)."""


class StopForward(Exception):
    """Raised by `capture(..., stop_after_last=True)` once every named site has been seen: the rest of the
    forward pass (later layers, the unembedding) is not needed for extraction."""


def _first_tensor(value: object) -> Tensor:
    """A module's activation: the tensor itself, or the first element of a tuple output."""
    return value[0] if isinstance(value, tuple) else value


def _with_first(value: object, tensor: Tensor) -> object:
    """`value` with its activation replaced: the tensor itself, or a tuple with a new first element."""
    return (tensor, *value[1:]) if isinstance(value, tuple) else tensor


@contextmanager
def capture(sites: Mapping[str, Site], names: Sequence[str], *,
            stop_after_last: bool = False) -> Iterator[dict[str, Tensor]]:
    """Within the block, every forward pass stores each named site's tensor (batch, seq, d) in the yielded
    dict (the last pass wins). With stop_after_last, the pass raises StopForward as soon as all sites are
    stored (the caller catches it). Hooks are removed on exit, also when the block raises."""
    captured: dict[str, Tensor] = {}
    handles = []

    def keep(name: str, value: object) -> None:
        captured[name] = _first_tensor(value).detach()
        if stop_after_last and len(captured) == len(names):
            raise StopForward

    try:
        for name in names:
            site = sites[name]
            if site.take == "output":
                handles.append(site.module.register_forward_hook(
                    lambda module, args, output, name=name: keep(name, output)))
            else:
                handles.append(site.module.register_forward_pre_hook(
                    lambda module, args, name=name: keep(name, args[0])))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def _edited(x: Tensor, change: Edit, audio: AudioPositions | None) -> Tensor:
    """change(x) where `audio` is None (every position), else at the audio positions only; the other positions
    are passed through bit for bit (torch.where)."""
    changed = change(x)
    if audio is None:
        return changed
    return torch.where(audio.mask(x.shape[0], x.shape[1], x.device)[..., None], changed, x)


def _edit_hook(site: Site, change: Edit, audio: AudioPositions | None) -> torch.utils.hooks.RemovableHandle:
    module: nn.Module = site.module
    if site.take == "output":
        return module.register_forward_hook(
            lambda module, args, output: _with_first(output, _edited(_first_tensor(output), change, audio)))

    def before(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (_edited(args[0], change, audio), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": _edited(kwargs["hidden_states"], change, audio)}

    return module.register_forward_pre_hook(before, with_kwargs=True)


@contextmanager
def edit(sites: Mapping[str, Site], edits: Mapping[str, Edit], *,
         audio: AudioPositions | None = None) -> Iterator[None]:
    """Within the block, every forward pass replaces each named site's tensor x (batch, seq, d) by edits[name](x):
    at every position where `audio` is None or the site is audio-only (`seconds_per_row` set: all its rows are
    audio), else at the audio positions `audio` gives for the pass. Hooks are removed on exit, also when the block
    raises. `audio` must already be tracking (AudioPositions.track), so its pre-hook runs before these."""
    handles = []
    try:
        for name, change in edits.items():
            site = sites[name]
            handles.append(_edit_hook(site, change, None if site.seconds_per_row is not None else audio))
        yield
    finally:
        for handle in handles:
            handle.remove()
