"""The eraser: per-site rank-k edits of one concept, frozen, and the safetensors file that holds them.

`SiteEraser` is concept-erasure's `LeaceEraser` (Belrose et al. 2023, "LEACE: Perfect linear concept erasure in
closed form", §4): x ↦ x − ((x − b) Rᵀ) Lᵀ with L = proj_left (d, k), R = proj_right (k, d), b = bias (the mean
of x). Memory O(dk) per site. Its `__call__` is the one place the formula is written; the hooks call it.

File format
-----------
One safetensors file (no pickle): per site the tensors ``<site>/proj_left`` (d, k), ``<site>/proj_right``
(k, d) and ``<site>/bias`` (d,) as float32 (LeaceEraser's fields, k = stored columns), and in the file's
metadata ``format`` = ``cascade-interp eraser``, ``format_version`` and ``erasure``: one JSON document with
the concept and its definition, per-site d, rank, share of d, share of raw variance removed and rows, the
model and its info, the cache path, header digest and dataset, the fitted rows and default positions, the
fitter's settings, package versions and provenance.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from interp.errors import InterpError
from interp.io import write_atomic

if TYPE_CHECKING:
    from concept_erasure import LeaceEraser

__all__ = ["FORMAT", "FORMAT_VERSION", "SiteEraser", "Eraser"]

FORMAT = "cascade-interp eraser"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class SiteEraser:
    """The eraser of one site: x ↦ x − ((x − bias) @ proj_rightᵀ) @ proj_leftᵀ (concept-erasure's LeaceEraser).

    proj_left (d, k), proj_right (k, d), bias (d,): float32 on the CPU. rank: concept directions removed
    (≤ k); rows: rows it was fitted on; trace_constrained: the library mixed in the orthogonal projection.
    """

    proj_left: Tensor
    proj_right: Tensor
    bias: Tensor
    rank: int
    rows: int = 0
    trace_constrained: bool = False
    variance_removed: float | None = None
    """Share of the fitted rows' raw (centred) variance that the edit takes away (fitter.variance_removed): what
    rank alone does not say, e.g. a whitened random control of LEACE's rank may remove far less."""
    _moved: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor, Tensor]] = field(
        default_factory=dict, init=False, repr=False, compare=False)
    """The factors on each (device, working dtype) already met, so a hook does not copy them every pass."""

    @property
    def d(self) -> int:
        return int(self.proj_left.shape[0])

    @property
    def share(self) -> float:
        """Share of the site's d dimensions the eraser removes (rank / d)."""
        return self.rank / self.d

    def __call__(self, x: Tensor) -> Tensor:
        """Erase (..., d) rows; computed in float32 (float64 for float64 input), returned in x's dtype."""
        work = torch.promote_types(x.dtype, torch.float32)
        key = (x.device, work)
        if key not in self._moved:
            self._moved[key] = tuple(t.to(device=x.device, dtype=work)
                                     for t in (self.proj_left, self.proj_right, self.bias))
        left, right, bias = self._moved[key]
        y = x.to(work)
        return (y - ((y - bias) @ right.mT) @ left.mT).to(x.dtype)

    def as_leace(self) -> LeaceEraser:
        """The same map as a concept_erasure.LeaceEraser."""
        from concept_erasure import LeaceEraser

        return LeaceEraser(self.proj_left, self.proj_right, self.bias)


def _tensor_digest(tensors: Mapping[str, Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Eraser:
    """Per-site erasers of one concept, fitted on one model's cache; `meta` is the file's JSON metadata."""

    concept: str
    sites: dict[str, SiteEraser]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> str | None:
        return self.meta.get("model")

    def tensors(self) -> dict[str, Tensor]:
        out = {}
        for name, site in self.sites.items():
            out[f"{name}/proj_left"] = site.proj_left.float().contiguous()
            out[f"{name}/proj_right"] = site.proj_right.float().contiguous()
            out[f"{name}/bias"] = site.bias.float().contiguous()
        return out

    def digest(self) -> str:
        """sha256 of the concept and the tensors: two erasers with the same digest erase the same way."""
        return hashlib.sha256((self.concept + _tensor_digest(self.tensors())).encode()).hexdigest()

    def summary(self) -> list[dict[str, Any]]:
        """Per site: d, rank, share of d removed, share of the raw variance removed, stored columns, rows fitted,
        trace constraint."""
        return [{"site": name, "d": s.d, "rank": s.rank, "share": s.share, "variance_removed": s.variance_removed,
                 "stored_rank": int(s.proj_left.shape[1]), "rows": s.rows, "trace_constrained": s.trace_constrained}
                for name, s in self.sites.items()]

    def describe(self) -> str:
        """A text table: the concept, then per site its rank and the share of d it removes."""
        lines = [f"eraser: concept {self.concept} ({self.meta.get('method', 'leace')}), model {self.model}, "
                 f"{len(self.sites)} sites"]
        lines.append(f"{'site':<20s} {'d':>6s} {'rank':>5s} {'share of d':>10s} {'variance':>9s} {'rows':>8s}")
        for entry in self.summary():
            mark = " (trace-constrained)" if entry["trace_constrained"] else ""
            removed = "n/a" if entry["variance_removed"] is None else f"{entry['variance_removed']:.2%}"
            lines.append(f"{entry['site']:<20s} {entry['d']:6d} {entry['rank']:5d} {entry['share']:10.2%} "
                         f"{removed:>9s} {entry['rows']:8d}{mark}")
        return "\n".join(lines)

    def save(self, path: str | Path) -> Path:
        """Write the safetensors file (tensors + JSON metadata), atomically; returns the path."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {**self.meta, "concept": {**self.meta.get("concept", {}), "name": self.concept},
                "sites": {entry.pop("site"): entry for entry in self.summary()}}
        header = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
                  "erasure": json.dumps(meta, allow_nan=False, default=str)}
        return write_atomic(path, lambda tmp: save_file(self.tensors(), str(tmp), metadata=header))

    @classmethod
    def load(cls, path: str | Path) -> Eraser:
        """Read an eraser file; raises InterpError (one line) for a missing, foreign or inconsistent file."""
        path = Path(path)
        if not path.is_file():
            raise InterpError(f"no eraser file at {path}")
        header, tensors = _read_file(path)
        try:
            meta = json.loads(header["erasure"])
            sites = {name: _site_of(name, entry, tensors) for name, entry in meta["sites"].items()}
            concept = str(meta["concept"]["name"])
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as error:
            raise InterpError(f"{path}: malformed eraser file ({error})") from None
        return cls(concept, sites, meta)


def _read_file(path: Path) -> tuple[dict[str, str], dict[str, Tensor]]:
    """(metadata, tensors) of an eraser file, its format and version checked."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            if header.get("format") != FORMAT:
                raise InterpError(f"{path} is not an eraser file (no '{FORMAT}' metadata)")
            if header.get("format_version") != str(FORMAT_VERSION):
                raise InterpError(f"{path}: eraser format version {header.get('format_version')!r}; this version "
                                  f"reads {FORMAT_VERSION} (fit the eraser again)")
            return header, {key: handle.get_tensor(key) for key in handle.keys()}
    except SafetensorError as error:
        raise InterpError(f"{path} is not a readable safetensors file ({error})") from None


def _site_of(name: str, entry: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> SiteEraser:
    """One site's eraser from the file's tensors and its metadata entry; ValueError when they disagree."""
    left, right, bias = (tensors[f"{name}/{key}"] for key in ("proj_left", "proj_right", "bias"))
    d, k = left.shape
    if right.shape != (k, d) or bias.shape != (d,) or d != int(entry["d"]):
        raise ValueError(f"site {name}: tensor shapes {tuple(left.shape)}, {tuple(right.shape)}, "
                         f"{tuple(bias.shape)} disagree with d {entry['d']}")
    removed = entry.get("variance_removed")
    return SiteEraser(left, right, bias, rank=int(entry["rank"]), rows=int(entry.get("rows", 0)),
                      trace_constrained=bool(entry.get("trace_constrained", False)),
                      variance_removed=None if removed is None else float(removed))
