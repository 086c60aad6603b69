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

import contextlib
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import h5py
import numpy as np

from interp.errors import InterpError

__all__ = [
    "FORMAT_VERSION", "MANIFEST", "DTYPES", "POSITIONS", "KIND_NAMES", "AUDIO", "TEXT",
    "CacheError", "CacheMismatch", "StorageOverflow", "Float16Overflow", "NonFiniteActivation",
    "ItemMeta", "ItemRows", "CacheHeader",
]

_log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DTYPES = ("float32", "float16", "bfloat16")
POSITIONS = ("audio", "text", "all")
KIND_NAMES = ("audio", "text")
AUDIO, TEXT = 0, 1

_KIND_CODES = {"audio": AUDIO, "text": TEXT}
_FLOAT16_MAX = 65504.0
_SHARD_RE = re.compile(r"^shard-(r(\d+)of(\d+))-(\d{5,})\.h5$")
_RANK_MANIFEST_RE = re.compile(r"^manifest\.r(\d+)of(\d+)\.json$")
_STR = h5py.string_dtype()
_KIND_DTYPE = h5py.enum_dtype(_KIND_CODES, basetype="u1")
_STORED = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16), "bfloat16": np.dtype(np.uint16)}
_ROW_FIELDS = {"pos": np.int32, "kind": np.uint8, "t_start": np.float32, "t_end": np.float32, "token_id": np.int64}
_CHUNK_BYTES = 1 << 20


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


# ------------------------------------------------------------------------------------------- file helpers


def _tag(rank: int, world: int) -> str:
    return f"r{rank}of{world}"


def _list_shards(path: Path) -> dict[str, Path]:
    """Complete shards on disk, by file name (sorted)."""
    try:
        names = sorted(e.name for e in os.scandir(path) if e.is_file() and _SHARD_RE.match(e.name))
    except FileNotFoundError:
        return {}
    return {name: path / name for name in names}


def _rank_manifests(path: Path) -> dict[tuple[int, int], Path]:
    out = {}
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        match = _RANK_MANIFEST_RE.match(entry.name)
        if match:
            out[(int(match.group(1)), int(match.group(2)))] = Path(entry.path)
    return out


def _manifest_files(path: Path) -> list[Path]:
    """manifest.json (if present), then the rank manifests."""
    main = path / MANIFEST
    return ([main] if main.exists() else []) + list(_rank_manifests(path).values())


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CacheError(f"cannot read {path}: {exc}") from exc


def _manifest_header(file: Path) -> CacheHeader:
    return CacheHeader.from_dict(_read_json(file).get("header", {}), source=file)


def _known_entries(path: Path) -> dict[str, dict[str, Any]]:
    """Shard entries recorded by any manifest in the folder, by file name."""
    return {entry["file"]: entry for file in _manifest_files(path) for entry in _read_json(file).get("shards", [])}


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        _fsync_file(path)


def _write_json_atomic(target: Path, data: dict[str, Any]) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, target)
    _fsync_dir(target.parent)


def _write_h5_atomic(target: Path, fill: Callable[[h5py.File], None]) -> None:
    """Write an HDF5 file under a hidden temporary name, fsync it and rename it into place."""
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            fill(f)
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(target.parent)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _open_h5(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise CacheError(f"cannot read shard {path}: {exc} (it vanished or is damaged; run verify)") from exc


def _str_array(ds: h5py.Dataset) -> list[str]:
    return [str(s) for s in ds.asstr()[()]]


# ------------------------------------------------------------------------------------------------ shards


@dataclass(frozen=True)
class _ShardScan:
    """What a writer or finalize needs to know of a shard: its header and its item ids."""

    path: Path
    header_hash: str
    header_json: str
    ids: list[str]
    rows: int
    bytes: int

    @property
    def name(self) -> str:
        return self.path.name


def _scan_shard(path: Path) -> _ShardScan:
    with _open_h5(path) as f:
        return _ShardScan(path, str(f.attrs.get("header_hash", "")), str(f.attrs.get("header", "{}")),
                          _str_array(f["items/id"]), int(f["rows/pos"].shape[0]), path.stat().st_size)


def _scan_shards(path: Path, header: CacheHeader) -> list[_ShardScan]:
    """Every complete shard in the folder; CacheMismatch if one was written for another configuration."""
    scans = [_scan_shard(file) for file in _list_shards(path).values()]
    digest = header.digest()
    for scan in scans:
        if scan.header_hash != digest:
            raise _mismatch(path, scan.name, _parse_header(scan.header_json, scan.name), header)
    return scans


def _new_entry(file: Path, ids: list[str], rows: int) -> dict[str, Any]:
    """A shard's manifest entry, checksumming the file."""
    return {"file": file.name, "items": ids, "rows": rows, "bytes": file.stat().st_size, "sha256": _sha256(file)}


def _entry(scan: _ShardScan, known: dict[str, dict[str, Any]], level: int) -> dict[str, Any]:
    """The manifest entry recorded for a shard if it still matches the file; else a new one (logged at level)."""
    old = known.get(scan.name)
    if old is not None and old.get("bytes") == scan.bytes and old.get("items") == scan.ids:
        return old
    _log.log(level, "%s: %s is in no manifest; checksumming it", scan.path.parent, scan.name)
    return _new_entry(scan.path, scan.ids, scan.rows)


def _folder_header(path: Path) -> CacheHeader:
    """A cache folder's header: from its manifests, or else from its first shard."""
    manifests = _manifest_files(path)
    if manifests:
        return _manifest_header(manifests[0])
    shards = _list_shards(path)
    if not shards:
        raise CacheError(f"{path} is not an activation cache (no {MANIFEST} and no shard-*.h5 files)")
    scan = _scan_shard(next(iter(shards.values())))
    header = _parse_header(scan.header_json, scan.name)
    if header is None:
        raise CacheError(f"{path}: {scan.name} has no readable header")
    return header


def _chunks(rows: int, dim: int, itemsize: int) -> tuple[int, int] | None:
    """Row chunks of about 1 MiB (at most 1024 rows), so a row range reads whole chunks."""
    if rows == 0:
        return None
    return (max(1, min(rows, 1024, _CHUNK_BYTES // (dim * itemsize))), dim)


def _write_layout(f: h5py.File, header: CacheHeader, items: Sequence[ItemMeta], lengths: np.ndarray,
                  rows: dict[str, np.ndarray], site_blocks: Callable[[str], Iterable[np.ndarray]]) -> None:
    """Lay out a shard (or an exported cache) in an open file: header attributes, /items, /rows, /sites.

    lengths holds each item's row count, rows the _ROW_FIELDS of all rows in order, and site_blocks(site)
    yields the site's rows, already in the stored dtype, as consecutive blocks.
    """
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["header_hash"] = header.digest()
    f.attrs["header"] = _canonical(header.to_dict())
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    total = int(offsets[-1])
    g = f.create_group("items")
    g.create_dataset("id", data=[i.id for i in items], dtype=_STR)
    g.create_dataset("index", data=np.array([i.index for i in items], dtype=np.int64))
    g.create_dataset("offset", data=offsets)
    g.create_dataset("transcript", data=[i.transcript for i in items], dtype=_STR)
    g.create_dataset("label", data=[i.label or "" for i in items], dtype=_STR)
    g.create_dataset("duration", data=np.array([i.duration for i in items], dtype=np.float32))
    r = f.create_group("rows")
    r.create_dataset("item", data=np.repeat(np.arange(len(items), dtype=np.int32), lengths))
    for key, dtype in _ROW_FIELDS.items():
        r.create_dataset(key, data=np.asarray(rows[key], dtype=dtype), dtype=_KIND_DTYPE if key == "kind" else dtype)
    stored = _STORED[header.dtype]
    s = f.create_group("sites")
    for site, dim in header.sites.items():
        ds = s.create_dataset(site, shape=(total, dim), dtype=stored, chunks=_chunks(total, dim, stored.itemsize))
        ds.attrs["dtype"] = header.dtype
        at = 0
        for block in site_blocks(site):
            ds[at:at + len(block)] = block
            at += len(block)


# ----------------------------------------------------------------------------------------------- encoding


def _to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits, round to nearest even (what torch does); x must be finite."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def _decode(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Stored values as float32."""
    if dtype == "bfloat16":
        return (np.asarray(raw, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)
    return np.asarray(raw, dtype=np.float32)


def _encode(site: str, item_id: str, values: Any, dtype: str, shape: tuple[int, int]) -> np.ndarray:
    """One item's site array in the stored dtype, refusing non-finite values and overflow."""
    array = np.asarray(values)
    if array.dtype.kind != "f":
        raise ValueError(f"site {site!r}, item {item_id!r}: expected a floating array, got dtype {array.dtype}")
    if array.shape != shape:
        raise ValueError(f"site {site!r}, item {item_id!r}: shape {array.shape}, expected {shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        as32 = np.array(array, dtype=np.float32, copy=True)
    finite = np.isfinite(as32)
    if not finite.all():
        if np.isfinite(array).all():
            raise StorageOverflow(f"site {site!r}, item {item_id!r}: values beyond float32's range; "
                                  "they cannot be stored")
        raise NonFiniteActivation(
            f"site {site!r}, item {item_id!r}: {int((~finite).sum())} of {as32.size} activations are NaN or inf; "
            "the forward pass overflowed (run the model in float32 or bfloat16); non-finite values are never cached")
    if dtype == "float32":
        return as32
    peak = float(np.abs(as32).max()) if as32.size else 0.0
    if dtype == "float16":
        if peak > _FLOAT16_MAX:
            raise Float16Overflow(f"site {site!r}, item {item_id!r}: |x| reaches {peak:.6g}, beyond float16's "
                                  f"{_FLOAT16_MAX:g}; rerun with --dtype float32 or --dtype bfloat16")
        return as32.astype(np.float16)
    bits = _to_bfloat16_bits(as32)
    if ((bits & np.uint16(0x7F80)) == np.uint16(0x7F80)).any():
        raise StorageOverflow(f"site {site!r}, item {item_id!r}: |x| reaches {peak:.6g}, which rounds to inf in "
                              "bfloat16; rerun with --dtype float32")
    return bits
