"""Reading activations out of a forward pass: plain torch forward hooks on a model's named sites.

One idiom for every model (speech adapters, text LLMs): the adapter's site table names the module, the
hook keeps a detached reference to what passes through it, and nothing in the forward pass changes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from torch import Tensor

from interp.models.base import Site

__all__ = ["capture", "StopForward"]


class StopForward(Exception):
    """Raised by `capture(..., stop_after_last=True)` once every named site has been seen: the rest of the
    forward pass (later layers, the unembedding) is not needed for extraction."""


def _first_tensor(value: object) -> Tensor:
    """A module's activation: the tensor itself, or the first element of a tuple output."""
    return value[0] if isinstance(value, tuple) else value


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
