"""Whole-cache operations behind `interp cache`: finalize a multi-rank run, verify, export, info.

They exist apart from the writer and the reader because each works on a finished cache as a whole,
built from both sides of the format.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from activations.codec import _STORED, _decode
from activations.format import (
    _ROW_FIELDS,
    FORMAT_VERSION,
    MANIFEST,
    TEXT,
    CacheError,
    CacheHeader,
    CacheMismatch,
)
from activations.reader import ActivationCache
from activations.shards import (
    _entry,
    _folder_header,
    _known_entries,
    _list_shards,
    _manifest_header,
    _rank_manifests,
    _read_json,
    _scan_shards,
    _sha256,
    _str_array,
    _tag,
    _write_h5_atomic,
    _write_json_atomic,
    _write_layout,
)

__all__ = ["VerifyReport", "finalize", "verify", "export", "info"]

_log = logging.getLogger(__name__)

_READ_BYTES = 256 << 20


def finalize(path: str | os.PathLike[str]) -> Path:
    """Merge the rank manifests of a multi-writer run into manifest.json and remove them.

    Every rank 0..N-1 must have closed its writer; headers must agree apart from provenance; no item may be
    in two shards. Returns the manifest path (a cache with nothing to merge is left as it is).
    """
    path = Path(path)
    if not path.is_dir():
        raise CacheError(f"no activation cache at {path}")
    ranks = _rank_manifests(path)
    main = path / MANIFEST
    if not ranks:
        if main.exists():
            return main
        raise CacheError(f"{path} has no rank manifests (manifest.r<k>of<N>.json) to finalize")
    worlds = sorted({world for _, world in ranks})
    if len(worlds) > 1:
        raise CacheError(f"{path} holds rank manifests of runs with different writer counts "
                         f"({', '.join(f.name for f in ranks.values())}); remove the stale ones and finalize again")
    world = worlds[0]
    data = _closed_ranks(path, ranks, world)
    headers = {key: CacheHeader.from_dict(d.get("header", {}), source=ranks[key]) for key, d in data.items()}
    header = headers[(0, world)]
    digest = header.digest()
    others = [(ranks[k].name, h) for k, h in headers.items()]
    if main.exists():
        others.append((MANIFEST, _manifest_header(main)))
    for where, found in others:
        if found.digest() != digest:
            raise CacheMismatch(f"cannot finalize {path}: {where} was written for another configuration "
                                f"({'; '.join(found.differences(header))})")
    on_disk = _list_shards(path)
    known = _known_entries(path)
    for key, d in data.items():
        lost = [e["file"] for e in d.get("shards", []) if e["file"] not in on_disk]
        if lost:
            raise CacheError(f"cannot finalize {path}: {ranks[key].name} lists {', '.join(lost)}, missing on disk; "
                             "rerun that rank")
    entries, owner, duplicates = [], {}, []
    for scan in _scan_shards(path, header):
        entries.append(_entry(scan, known, logging.WARNING))
        for item in scan.ids:
            if item in owner:
                duplicates.append(f"{item!r} ({owner[item]}, {scan.name})")
            owner[item] = scan.name
    if duplicates:
        raise CacheError(f"cannot finalize {path}: items in two shards: {', '.join(duplicates[:5])}"
                         f"{' ...' if len(duplicates) > 5 else ''}; the ranks' item splits overlap")
    manifest = {"header": header.to_dict(), "header_hash": digest,
                "rank_provenance": {_tag(k, w): h.provenance for (k, w), h in sorted(headers.items())},
                "shards": entries}
    _write_json_atomic(main, manifest)
    for file in ranks.values():
        file.unlink()
    _log.info("%s: merged %d rank manifests (%d shards, %d items)", path, len(ranks), len(entries), len(owner))
    return main


def _closed_ranks(path: Path, ranks: dict[tuple[int, int], Path], world: int) -> dict[tuple[int, int], dict]:
    """Each rank's manifest, by (rank, world); CacheError naming the ranks missing or not closed."""
    data = {key: _read_json(file) for key, file in ranks.items()}
    missing = [_tag(k, world) for k in range(world) if (k, world) not in data]
    unfinished = [_tag(k, world) for k in range(world) if (k, world) in data and not data[(k, world)].get("complete")]
    if missing or unfinished:
        parts = []
        if missing:
            parts.append(f"rank(s) {', '.join(missing)} missing (no manifest)")
        if unfinished:
            parts.append(f"rank(s) {', '.join(unfinished)} unfinished (writer did not close)")
        raise CacheError(f"cannot finalize {path}: {'; '.join(parts)}; run them and finalize again")
    return data


@dataclass
class VerifyReport:
    """What `verify` found; ok is True when problems is empty."""

    ok: bool
    problems: list[str]
    shards: int
    items: int
    rows: int
    bytes: int


def _check_shard(file: Path, header: CacheHeader, digest: str, problems: list[str]) -> tuple[list[str], int]:
    """Internal consistency of one shard; returns its item ids and row count."""
    name = file.name
    try:
        with h5py.File(file, "r") as f:
            if f.attrs.get("format_version") != FORMAT_VERSION:
                problems.append(f"{name}: format version {f.attrs.get('format_version')!r}")
            if str(f.attrs.get("header_hash", "")) != digest:
                problems.append(f"{name}: written for another header")
            ids = _str_array(f["items/id"])
            n = len(ids)
            offsets = np.asarray(f["items/offset"][()], dtype=np.int64)
            rows = int(f["rows/pos"].shape[0])
            for key in ("index", "transcript", "label", "duration"):
                if f[f"items/{key}"].shape != (n,):
                    problems.append(f"{name}: items/{key} has {f[f'items/{key}'].shape[0]} entries, items/id {n}")
            if offsets.shape != (n + 1,) or offsets[0] != 0 or (np.diff(offsets) < 0).any() or offsets[-1] != rows:
                problems.append(f"{name}: items/offset is inconsistent with {n} items and {rows} rows")
            else:
                item = np.asarray(f["rows/item"][()])
                if item.shape != (rows,) or (item != np.repeat(np.arange(n), np.diff(offsets))).any():
                    problems.append(f"{name}: rows/item disagrees with items/offset")
            for key in _ROW_FIELDS:
                if f[f"rows/{key}"].shape != (rows,):
                    problems.append(f"{name}: rows/{key} has shape {f[f'rows/{key}'].shape}, expected ({rows},)")
            kind = np.asarray(f["rows/kind"][()], dtype=np.uint8)
            if (kind > TEXT).any():
                problems.append(f"{name}: rows/kind holds values other than audio/text")
            sites = set(f["sites"])
            if sites != set(header.sites):
                problems.append(f"{name}: sites {sorted(sites)}, header {sorted(header.sites)}")
            for site in sorted(sites & set(header.sites)):
                ds = f["sites"][site]
                if ds.shape != (rows, header.sites[site]) or ds.dtype != _STORED[header.dtype]:
                    problems.append(f"{name}: sites/{site} is {ds.dtype}{ds.shape}, expected "
                                    f"{_STORED[header.dtype]}({rows}, {header.sites[site]})")
                    continue
                step = max(1, _READ_BYTES // max(1, ds.shape[1] * ds.dtype.itemsize))
                bad = sum(int((~np.isfinite(_decode(ds[a:a + step], header.dtype))).sum())
                          for a in range(0, rows, step))
                if bad:
                    problems.append(f"{name}: sites/{site} holds {bad} NaN/inf values")
            return ids, rows
    except Exception as exc:  # a damaged file can fail anywhere inside h5py; verify reports, never crashes
        problems.append(f"{name}: unreadable ({type(exc).__name__}: {exc})")
        return [], 0


def verify(path: str | os.PathLike[str]) -> VerifyReport:
    """Check a cache: checksums against the manifest, offsets, row counts, sites, finiteness, duplicates."""
    path = Path(path)
    if not path.is_dir():
        raise CacheError(f"no activation cache folder at {path}")
    header = _folder_header(path)
    on_disk = _list_shards(path)
    digest = header.digest()
    problems: list[str] = []
    listed: dict[str, dict[str, Any]] = {}
    main = path / MANIFEST
    if main.exists():
        manifest = _read_json(main)
        if manifest.get("header_hash") not in (None, digest):
            problems.append(f"{MANIFEST}: header_hash does not match its header")
        listed = {e["file"]: e for e in manifest.get("shards", [])}
    else:
        pending = [f.name for f in _rank_manifests(path).values()]
        problems.append(f"no {MANIFEST}" + (f" (rank manifests {', '.join(pending)} present: run finalize)"
                                             if pending else ""))
    for name in sorted(set(listed) - set(on_disk)):
        problems.append(f"{MANIFEST} lists {name}, which is missing on disk")
    if main.exists():
        for name in sorted(set(on_disk) - set(listed)):
            problems.append(f"{name} is on disk but not in {MANIFEST}")
    owner: dict[str, str] = {}
    rows = size = 0
    for name, file in on_disk.items():
        entry = listed.get(name)
        nbytes = file.stat().st_size
        size += nbytes
        if entry is not None:
            if entry.get("bytes") != nbytes:
                problems.append(f"{name}: {nbytes} bytes, manifest says {entry.get('bytes')}")
            elif _sha256(file) != entry.get("sha256"):
                problems.append(f"{name}: sha256 differs from the manifest (the file is damaged)")
        ids, count = _check_shard(file, header, digest, problems)
        rows += count
        if entry is not None and ids and (entry.get("items") != ids or entry.get("rows") != count):
            problems.append(f"{name}: items or row count differ from the manifest")
        for item in ids:
            if item in owner:
                problems.append(f"item {item!r} is in both {owner[item]} and {name}")
            owner[item] = name
    return VerifyReport(ok=not problems, problems=problems, shards=len(on_disk), items=len(owner), rows=rows,
                        bytes=size)


def export(path: str | os.PathLike[str], out_file: str | os.PathLike[str]) -> Path:
    """Write the whole cache as one self-contained .h5 (shard layout, all items in read order).

    The file carries the header as attributes, so `ActivationCache.open(out_file)` reads it.
    """
    cache = ActivationCache.open(path)
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    selection = np.arange(len(cache), dtype=np.int64)
    itemsize = _STORED[cache.dtype].itemsize

    def site_blocks(site: str) -> Iterator[np.ndarray]:
        for group in cache._batches(selection, max(1, _READ_BYTES // (cache.dims[site] * itemsize))):
            yield cache._gather(group, site, raw=True)

    def fill(f: h5py.File) -> None:
        f.attrs["exported_from"] = str(Path(path).resolve())
        _write_layout(f, cache.header, cache.items, cache._length, cache._gather_rows(selection), site_blocks)

    _write_h5_atomic(out, fill)
    _log.info("exported %s to %s (%d items, %d rows)", path, out, len(cache), cache.rows)
    return out


def info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A summary for `interp cache info`: model, sites, dtype, positions, counts, bytes, versions, git sha."""
    cache = ActivationCache.open(path)
    prov = cache.header.provenance
    folder = cache.path if cache.path.is_dir() else None
    return {
        "path": str(cache.path),
        "model": cache.model,
        "model_info": cache.header.model_info,
        "sites": cache.dims,
        "dtype": cache.dtype,
        "positions": cache.positions,
        "dataset": cache.header.dataset,
        "items": len(cache),
        "rows": cache.rows,
        "shards": len(cache.shards),
        "bytes": cache.bytes,
        "finalized": folder is None or (folder / MANIFEST).exists(),
        "pending_ranks": [] if folder is None else [f.name for f in _rank_manifests(folder).values()],
        "versions": prov.get("versions", {}),
        "git_commit": prov.get("git_commit"),
        "created": prov.get("created"),
    }
