"""Site names: one spelling everywhere (`audio.layers.{i}`, `projector`, `llm.embed`, `llm.layers.{i}`), parsed here.

Hooks, caches' `/sites/<name>`, `--sites`, `--layers`, figures and results all key on these names; this module is
the one place that reads a site or layer spec a user typed, and the one place that orders and groups sites.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Literal

from interp.errors import InterpError

__all__ = ["SiteError", "LLM_LAYER_PREFIX", "describe_sites", "expand_sites", "llm_layers", "describe_layers",
           "parse_layers", "sort_sites", "site_group"]

LLM_LAYER_PREFIX = "llm.layers."
"""The residual stream after decoder layer i is `llm.layers.{i}`."""


class SiteError(InterpError):
    """A site name or pattern that the model (or cache) does not have."""


def describe_sites(available: Sequence[str]) -> str:
    """Compact listing such as 'audio.layers.0–5, projector, llm.embed, llm.layers.0–29'."""
    groups: dict[str, list[int]] = {}
    order: list[str] = []
    for name in available:
        head, _, tail = name.rpartition(".")
        key = head if tail.isdigit() else name
        if key not in groups:
            groups[key] = []
            order.append(key)
        if tail.isdigit():
            groups[key].append(int(tail))
    parts = []
    for key in order:
        indices = sorted(groups[key])
        parts.append(f"{key}.{indices[0]}–{indices[-1]}" if indices else key)
    return ", ".join(parts)


def expand_sites(spec: str, available: Sequence[str]) -> list[str]:
    """Expand a site spec against the sites a model or cache has, keeping forward order.

    `llm.layers.0,4,8,12`, `llm.layers.*`, `audio.layers.*,projector`: comma-separated entries; an entry
    that is only digits continues the previous entry's prefix. Raises SiteError naming the unknown site
    and listing what exists.
    """
    wanted: set[str] = set()
    prefix = ""
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        if entry.isdigit() and prefix:
            entry = f"{prefix}.{entry}"
        if entry.endswith(".*"):
            prefix = entry[:-2]
            matches = [s for s in available if s.rpartition(".")[0] == prefix and s.rpartition(".")[2].isdigit()]
        else:
            head, _, tail = entry.rpartition(".")
            prefix = head if tail.isdigit() else prefix
            matches = [entry] if entry in available else []
        if not matches:
            raise SiteError(f"unknown site {entry!r}: available sites are {describe_sites(available)}")
        wanted.update(matches)
    if not wanted:
        raise SiteError(f"no site in {spec!r}: available sites are {describe_sites(available)}")
    return [s for s in available if s in wanted]


def llm_layers(sites: Iterable[str]) -> list[int]:
    """The layer numbers of the `llm.layers.{i}` sites among `sites`, ascending."""
    return sorted(int(s[len(LLM_LAYER_PREFIX):]) for s in sites
                  if s.startswith(LLM_LAYER_PREFIX) and s[len(LLM_LAYER_PREFIX):].isdigit())


def describe_layers(layers: Sequence[int], sep: str = ",") -> str:
    """Ascending layers as runs: [0..14, 20] → '0-14,20' (sep '_' gives a file-safe label)."""
    if not layers:
        return "none"
    runs, start = [], layers[0]
    for previous, current in zip(layers, [*layers[1:], None]):
        if current is None or current != previous + 1:
            runs.append(str(start) if start == previous else f"{start}-{previous}")
            start = current
    return sep.join(runs)


def parse_layers(spec: str | None, available: Sequence[int], *, option: str = "--layers",
                 holder: str = "this cache") -> list[int]:
    """Layers chosen by `spec` among `available` (ascending, unique).

    `all` / `*` / None: every available layer; otherwise comma-separated entries, each a layer `20`, an
    inclusive range `20-29`, or a site name `llm.layers.20`. Raises InterpError for a malformed spec or a layer
    `holder` does not hold (naming what it holds); `option` names the spec in the message.
    """
    available = sorted(available)
    if not available:
        raise InterpError(f"no {LLM_LAYER_PREFIX}N site: the logit lens reads LLM layer outputs; extract them with "
                          "--sites llm.layers.*")
    if spec is None or spec.strip() in ("", "all", "*", f"{LLM_LAYER_PREFIX}*"):
        return list(available)
    wanted: list[int] = []
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        text = entry[len(LLM_LAYER_PREFIX):] if entry.startswith(LLM_LAYER_PREFIX) else entry
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", text)
        if match is None:
            raise InterpError(f"{option} {spec!r}: cannot read {entry!r}; write layers like 20,25,29 or a range "
                              f"20-29 or all ({holder} holds layers {describe_layers(available)})")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise InterpError(f"{option} {spec!r}: the range {entry!r} runs backwards")
        wanted.extend(range(first, last + 1))
    if not wanted:
        raise InterpError(f"{option} {spec!r}: no layer given")
    missing = sorted(set(wanted) - set(available))
    if missing:
        raise InterpError(f"{option} {spec!r}: layer(s) {describe_layers(missing)} are not in {holder}; it holds "
                          f"layers {describe_layers(available)}")
    return sorted(set(wanted))


_LAYER_SITE = re.compile(r"^(audio|llm)\.layers\.(\d+)$")


def _site_key(site: str) -> tuple[int, int, str]:
    layer = _LAYER_SITE.match(site)
    if layer:
        return (0 if layer.group(1) == "audio" else 3, int(layer.group(2)), site)
    return ({"projector": 1, "llm.embed": 2}.get(site, 4), 0, site)


def sort_sites(sites: Sequence[str]) -> list[str]:
    """Sites in the order audio flows: audio.layers.N, projector, llm.embed, llm.layers.N (N numeric), others."""
    return sorted(sites, key=_site_key)


def site_group(site: str) -> Literal["audio encoder", "LLM"]:
    """Which half of the model a site is in: audio.* is the audio encoder, the rest (projector on) feeds the LLM."""
    return "audio encoder" if site.startswith("audio.") else "LLM"
