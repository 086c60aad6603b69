"""The on-disk format of an activation cache, shared by the writer, the reader and the maintenance tools.

It exists so that the layout, the header, the dtype codecs and the file helpers are defined once. A cache
is a directory::

    manifest.json                     header + one entry per shard (items, rows, bytes, sha256)
    manifest.r<k>of<N>.json           the same, per writer rank, until `finalize` merges them
    shard-<tag>-<seq>.h5              immutable; tag = writer rank ("r0of1", "r1of2"), seq = 00000, 00001, ...

A shard is written under a hidden temporary name (``.shard-....h5.tmp``), flushed, fsynced and renamed,
so readers only ever see complete shards and a killed run loses at most the shard in progress. Inside a
shard (T rows, one per kept sequence position; items are ragged, delimited by offsets)::

    /items/id (N, str)  /items/index (N, int64: position in the dataset)  /items/offset (N+1, int64)
    /items/transcript (N, str)  /items/label (N, str, "" for none)  /items/duration (N, float32 s)
    /rows/item (T, int32: index into /items)  /rows/pos (T, int32)  /rows/kind (T, uint8 enum audio=0 text=1)
    /rows/t_start, /rows/t_end (T, float32 s; NaN for text rows)  /rows/token_id (T, int64; -1 for audio rows)
    /sites/<name> (T, d)  float32 | float16 | uint16 holding bfloat16 bits; attribute dtype names which

Shard attributes: format_version, header_hash (sha256 of the header without provenance), header (JSON).
Hidden ``.lock-<tag>`` files hold each writer's advisory lock (one writer per rank; freed when it dies).
The reader lists shards from the files on disk, never from the manifest, so it sees new shards while
extraction runs (`ActivationCache.refresh`); the manifest is the checksum record that `verify` checks.

Policies: non-finite activations are refused for every dtype (`NonFiniteActivation`): a NaN in a cache
would silently poison every probe fitted on it. float16 refuses any |x| > 65504 (`Float16Overflow`):
storing it would clip or produce inf. Reads are ordered by the item's dataset index (then id), then by
sequence position, whatever order items were added in or shards were written.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from interp.errors import InterpError

__all__ = [
    "FORMAT_VERSION", "MANIFEST", "DTYPES", "POSITIONS", "KIND_NAMES", "AUDIO", "TEXT",
    "CacheError", "CacheMismatch", "StorageOverflow", "Float16Overflow", "NonFiniteActivation",
    "ItemMeta", "ItemRows", "CacheHeader",
]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DTYPES = ("float32", "float16", "bfloat16")
POSITIONS = ("audio", "text", "all")
KIND_NAMES = ("audio", "text")
AUDIO, TEXT = 0, 1

_KIND_CODES = {"audio": AUDIO, "text": TEXT}
_ROW_FIELDS = {"pos": np.int32, "kind": np.uint8, "t_start": np.float32, "t_end": np.float32, "token_id": np.int64}


class CacheError(InterpError):
    """A cache is missing, damaged, incomplete, or asked for a site or item it does not hold."""


class CacheMismatch(CacheError):
    """The directory already holds a cache written for another model, site set, dtype, positions or dataset."""


class StorageOverflow(CacheError):
    """An activation does not fit the cache's storage dtype."""


class Float16Overflow(StorageOverflow):
    """An activation exceeds float16's range (|x| > 65504); it would be stored as inf or clipped."""


class NonFiniteActivation(CacheError):
    """The model produced NaN or inf; such rows are never cached."""


# ----------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class ItemMeta:
    """One dataset item as the cache records it; index orders items on read. A label of None is stored as ""."""

    id: str
    index: int
    transcript: str
    label: str | None
    duration: float


@dataclass
class ItemRows:
    """The kept rows of one item: per-row metadata and one (T, d) array per site.

    kind is 0 (audio) or 1 (text); audio rows carry t_start/t_end in seconds and token_id -1, text rows
    carry NaN times and the input token id. Site arrays are floating numpy arrays (the caller converts
    torch tensors: ``t.float().cpu().numpy()``).
    """

    pos: np.ndarray
    kind: np.ndarray
    t_start: np.ndarray
    t_end: np.ndarray
    token_id: np.ndarray
    sites: dict[str, np.ndarray]

    @property
    def rows(self) -> int:
        return int(np.asarray(self.pos).shape[0])


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


@dataclass(frozen=True)
class CacheHeader:
    """What a cache holds. Two caches are the same configuration when everything but provenance agrees."""

    model: str
    sites: dict[str, int]
    dtype: str
    positions: str
    dataset: str
    model_info: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise CacheError(f"unknown cache dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.positions not in POSITIONS:
            raise CacheError(f"unknown positions {self.positions!r}; choose one of {', '.join(POSITIONS)}")
        if not self.sites:
            raise CacheError("a cache needs at least one site")
        sites: dict[str, int] = {}
        for name, dim in self.sites.items():
            if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
                raise CacheError(f"site name {name!r} cannot be stored (empty, '.', '..' or containing '/')")
            if isinstance(dim, bool) or int(dim) != dim or int(dim) < 1:
                raise CacheError(f"site {name!r} has width {dim!r}; expected a positive integer")
            sites[name] = int(dim)
        object.__setattr__(self, "sites", sites)
        # A JSON round trip now, so a header equals itself read back from disk (tuples become lists).
        try:
            for name in ("model_info", "provenance"):
                object.__setattr__(self, name, json.loads(json.dumps(dict(getattr(self, name)), allow_nan=False)))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"model_info and provenance must be JSON-serialisable: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "model": self.model, "model_info": self.model_info,
                "sites": dict(self.sites), "dtype": self.dtype, "positions": self.positions,
                "dataset": self.dataset, "provenance": self.provenance}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: object = "header") -> CacheHeader:
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise CacheError(f"{source}: cache format version {version!r}; this version of the package reads "
                             f"version {FORMAT_VERSION} (re-extract the cache)")
        try:
            return cls(model=data["model"], sites=data["sites"], dtype=data["dtype"], positions=data["positions"],
                       dataset=data["dataset"], model_info=data.get("model_info", {}),
                       provenance=data.get("provenance", {}))
        except (KeyError, TypeError, AttributeError) as exc:
            raise CacheError(f"{source}: malformed cache header ({exc!r})") from exc

    def identity(self) -> dict[str, Any]:
        """The fields that make two caches interchangeable (all but provenance)."""
        out = self.to_dict()
        del out["provenance"]
        return out

    def digest(self) -> str:
        return hashlib.sha256(_canonical(self.identity()).encode()).hexdigest()

    def differences(self, other: CacheHeader) -> list[str]:
        """Human-readable differences of self (on disk) from other (requested)."""
        diffs = []
        for name in ("model", "dtype", "positions", "dataset"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                diffs.append(f"{name} {mine!r} (cache) vs {theirs!r} (requested)")
        if self.sites != other.sites:
            only_cache = [f"{n}[{d}]" for n, d in self.sites.items() if other.sites.get(n) != d]
            only_req = [f"{n}[{d}]" for n, d in other.sites.items() if self.sites.get(n) != d]
            diffs.append(f"sites {', '.join(only_cache) or '-'} (cache) vs {', '.join(only_req) or '-'} (requested)")
        if _canonical(self.model_info) != _canonical(other.model_info):
            keys = sorted(k for k in set(self.model_info) | set(other.model_info)
                          if _canonical(self.model_info.get(k)) != _canonical(other.model_info.get(k)))
            diffs.append(f"model_info differs in {', '.join(keys)}")
        return diffs


def _parse_header(raw: str, source: object) -> CacheHeader | None:
    """A header stored as JSON, or None when it cannot be read."""
    try:
        return CacheHeader.from_dict(json.loads(raw), source=source)
    except (CacheError, ValueError):
        return None


def _describe_mismatch(found: CacheHeader | None, wanted: CacheHeader) -> str:
    return "; ".join(found.differences(wanted)) if found is not None else "unreadable header"


def _mismatch(path: Path, where: str, found: CacheHeader | None, wanted: CacheHeader) -> CacheMismatch:
    return CacheMismatch(f"{path} already holds a different cache ({where}: {_describe_mismatch(found, wanted)}); "
                         "use --overwrite to replace it or choose another output folder")
