"""The files of a cache folder: shards, manifests and their entries, written atomically and fsynced.

A shard is written under a hidden temporary name, fsynced and renamed (interp.io), so readers only ever see
complete shards; the folder lists them by file name, and each manifest entry records a shard's items, rows,
bytes and sha256. See activations.format for the layout.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import h5py
import numpy as np

from activations.codec import _STORED
from activations.format import (
    _KIND_CODES,
    _ROW_FIELDS,
    FORMAT_VERSION,
    MANIFEST,
    CacheError,
    CacheHeader,
    ItemMeta,
    _canonical,
    _mismatch,
    _parse_header,
)
from interp.io import write_atomic, write_json_atomic

__all__: list[str] = []  # helpers of the package's writer, reader and maintenance

_log = logging.getLogger(__name__)

_SHARD_RE = re.compile(r"^shard-(r(\d+)of(\d+))-(\d{5,})\.h5$")
_RANK_MANIFEST_RE = re.compile(r"^manifest\.r(\d+)of(\d+)\.json$")
_STR = h5py.string_dtype()
_KIND_DTYPE = h5py.enum_dtype(_KIND_CODES, basetype="u1")
_CHUNK_BYTES = 1 << 20


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


def _write_json_atomic(target: Path, data: dict[str, Any]) -> None:
    """A manifest, atomically and fsynced."""
    write_json_atomic(target, data, indent=1, fsync=True)


def _write_h5_atomic(target: Path, fill: Callable[[h5py.File], None]) -> None:
    """Write an HDF5 file under a hidden temporary name, fsync it and rename it into place."""
    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            fill(f)

    write_atomic(target, write, fsync=True)


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
