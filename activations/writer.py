"""The cache writer: appends items as immutable shards, resumes interrupted runs, one writer per rank.

It exists apart from the reader because writing owns the locking, the resume bookkeeping and the
--overwrite cleanup, none of which a reader needs.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from activations.codec import _encode
from activations.format import (
    _KIND_CODES,
    _ROW_FIELDS,
    AUDIO,
    MANIFEST,
    TEXT,
    CacheError,
    CacheHeader,
    CacheMismatch,
    ItemMeta,
    ItemRows,
    _mismatch,
)
from activations.shards import (
    _RANK_MANIFEST_RE,
    _SHARD_RE,
    _entry,
    _known_entries,
    _list_shards,
    _manifest_files,
    _manifest_header,
    _new_entry,
    _rank_manifests,
    _scan_shard,
    _scan_shards,
    _tag,
    _write_h5_atomic,
    _write_json_atomic,
    _write_layout,
)

__all__ = ["CacheWriter"]

_log = logging.getLogger(__name__)


@dataclass
class _Pending:
    meta: ItemMeta
    rows: dict[str, np.ndarray]
    sites: dict[str, np.ndarray]


class CacheWriter:
    """Appends items to a cache, one immutable shard per `items_per_shard` items.

    Use `CacheWriter.open` (or it as a context manager). `done` holds the ids already in complete shards
    of every rank, so a rerun skips them; an exception inside ``with`` drops the unwritten buffer, so a
    crash never leaves a shard with a half item.
    """

    def __init__(self, path: Path, header: CacheHeader, *, rank: int, world: int, items_per_shard: int,
                 done: set[str], entries: dict[str, dict[str, Any]], next_seq: int, lock: int | None) -> None:
        self.path = path
        self.header = header
        self.rank = rank
        self.world = world
        self.items_per_shard = items_per_shard
        self.done = done
        self._tag = _tag(rank, world)
        self._hash = header.digest()
        self._entries = entries
        self._seq = next_seq
        self._lock = lock
        self._buffer: list[_Pending] = []
        self._closed = False

    @classmethod
    def open(cls, path: str | os.PathLike[str], header: CacheHeader, *, rank: int = 0, world: int = 1,
             items_per_shard: int = 64, overwrite: bool = False) -> CacheWriter:
        """Create the cache at path, or resume the one there; raise CacheMismatch if it holds another config.

        overwrite removes the cache's own files first (shards, manifests, temporaries; nothing else). With
        world > 1 it removes only files of another configuration and this rank's own, since the other
        ranks may already be writing.
        """
        path = Path(path)
        if not isinstance(header, CacheHeader):
            raise TypeError(f"header must be a CacheHeader, not {type(header).__name__}")
        if world < 1 or not 0 <= rank < world:
            raise CacheError(f"writer rank {rank} of {world} is not valid: expected 0 <= rank < world")
        if items_per_shard < 1:
            raise ValueError(f"items_per_shard must be >= 1, got {items_per_shard}")
        if path.exists() and not path.is_dir():
            raise CacheError(f"{path} is a file, not a cache folder")
        path.mkdir(parents=True, exist_ok=True)
        tag = _tag(rank, world)
        lock = _acquire_lock(path, tag)
        try:
            if overwrite:
                _remove_for_overwrite(path, header, tag, world)
            for entry in os.scandir(path):
                if _tmp_belongs(entry.name, None if world == 1 else tag):
                    _log.warning("%s: removing %s left by an interrupted writer", path, entry.name)
                    os.remove(entry.path)
            digest = header.digest()
            try:
                headers = [(file.name, _manifest_header(file)) for file in _manifest_files(path)]
                for where, found in headers:
                    if found.digest() != digest:
                        raise _mismatch(path, where, found, header)
                known = _known_entries(path)
                scans = _scan_shards(path, header)
            except CacheMismatch:
                raise
            except CacheError as exc:
                raise CacheMismatch(f"{exc}; use --overwrite to replace the cache") from exc
            done: set[str] = set()
            entries: dict[str, dict[str, Any]] = {}
            next_seq = 0
            for scan in scans:
                done.update(scan.ids)
                match = _SHARD_RE.match(scan.name)
                assert match is not None
                if match.group(1) == tag:
                    next_seq = max(next_seq, int(match.group(4)) + 1)
                if world == 1 or match.group(1) == tag:
                    entries[scan.name] = _entry(scan, known, logging.INFO)
            writer = cls(path, header, rank=rank, world=world, items_per_shard=items_per_shard, done=done,
                         entries=entries, next_seq=next_seq, lock=lock)
            writer._write_manifest(complete=False)
        except BaseException:
            _release_lock(lock)
            raise
        if done:
            _log.info("%s: resuming; %d items already cached", path, len(done))
        return writer

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        _release_lock(getattr(self, "_lock", None))

    def add(self, item: ItemMeta, rows: ItemRows) -> None:
        """Buffer one item; writes a shard when items_per_shard items are buffered."""
        if self._closed:
            raise ValueError(f"the writer of {self.path} is closed")
        if not isinstance(item.id, str) or not item.id:
            raise ValueError(f"item id must be a non-empty string, got {item.id!r}")
        if item.id in self.done or any(p.meta.id == item.id for p in self._buffer):
            raise ValueError(f"item {item.id!r} is already in the cache {self.path}; skip items in writer.done")
        if not np.isfinite(item.duration) or item.duration < 0:
            raise ValueError(f"item {item.id!r}: duration {item.duration!r} is not a non-negative number")
        n = rows.rows
        fields = {}
        for name, dtype in _ROW_FIELDS.items():
            value = np.asarray(getattr(rows, name))
            if value.shape != (n,):
                raise ValueError(f"item {item.id!r}: rows.{name} has shape {value.shape}, expected ({n},)")
            if np.dtype(dtype).kind in "iu" and value.size and value.dtype.kind not in "iub":
                raise ValueError(f"item {item.id!r}: rows.{name} must be integers, got {value.dtype}")
            fields[name] = np.array(value, dtype=dtype, copy=True)
        if n:
            if fields["kind"].max() > TEXT:
                raise ValueError(f"item {item.id!r}: rows.kind must be 0 (audio) or 1 (text)")
            audio = fields["kind"] == AUDIO
            wanted = _KIND_CODES.get(self.header.positions)
            if wanted is not None and (fields["kind"] != wanted).any():
                raise ValueError(f"item {item.id!r}: the cache keeps {self.header.positions} rows only")
            if (fields["token_id"][audio] != -1).any():
                raise ValueError(f"item {item.id!r}: audio rows must have token_id -1")
            if (~np.isnan(fields["t_start"][~audio])).any() or (~np.isnan(fields["t_end"][~audio])).any():
                raise ValueError(f"item {item.id!r}: text rows must have NaN t_start/t_end")
            if (fields["pos"] < 0).any():
                raise ValueError(f"item {item.id!r}: negative row positions")
            order = np.argsort(fields["pos"], kind="stable")
            if (np.diff(fields["pos"][order]) == 0).any():
                raise ValueError(f"item {item.id!r}: repeated row positions")
        else:
            order = np.arange(0)
        unknown = sorted(set(rows.sites) - set(self.header.sites))
        missing = [s for s in self.header.sites if s not in rows.sites]
        if unknown or missing:
            raise ValueError(f"item {item.id!r}: sites {unknown} are not in the cache header and {missing} are "
                             f"missing; the cache holds {list(self.header.sites)}")
        sites = {}
        for site, dim in self.header.sites.items():
            sites[site] = _encode(site, item.id, rows.sites[site], self.header.dtype, (n, dim))
        if n and (np.diff(order) != 1).any():
            fields = {k: v[order] for k, v in fields.items()}
            sites = {k: v[order] for k, v in sites.items()}
        self._buffer.append(_Pending(item, fields, sites))
        if len(self._buffer) >= self.items_per_shard:
            self._write_shard()

    def close(self) -> None:
        """Write the buffered items as a last shard and the manifest; release the writer."""
        if self._closed:
            return
        try:
            if self._buffer:
                self._write_shard()
            self._write_manifest(complete=True)
            if self.world == 1:
                for file in _rank_manifests(self.path).values():
                    _log.info("%s: %s is covered by %s now; removing it", self.path, file.name, MANIFEST)
                    file.unlink()
        finally:
            self._release()

    def abort(self) -> None:
        """Drop the buffered items without writing them (complete shards stay); release the writer."""
        if self._buffer:
            _log.warning("%s: %d buffered items dropped; a rerun extracts them", self.path, len(self._buffer))
        self._buffer = []
        self._release()

    def _release(self) -> None:
        self._closed = True
        _release_lock(self._lock)
        self._lock = None

    def _write_shard(self) -> None:
        """Write the (non-empty) buffer as the next shard and record it in the manifest."""
        items, self._buffer = self._buffer, []
        file = self.path / f"shard-{self._tag}-{self._seq:05d}.h5"
        self._seq += 1
        lengths = np.array([p.rows["pos"].shape[0] for p in items], dtype=np.int64)
        total = int(lengths.sum())
        if total > np.iinfo(np.int32).max:
            raise ValueError(f"{total} rows do not fit one shard; lower items_per_shard")
        rows = {key: np.concatenate([p.rows[key] for p in items]) for key in _ROW_FIELDS}
        _write_h5_atomic(file, lambda f: _write_layout(
            f, self.header, [p.meta for p in items], lengths, rows,
            lambda site: [np.concatenate([p.sites[site] for p in items])]))
        entry = _new_entry(file, [p.meta.id for p in items], total)
        self._entries[file.name] = entry
        self.done.update(entry["items"])
        self._write_manifest(complete=False)
        _log.debug("%s: wrote %s (%d items, %d rows)", self.path, file.name, len(items), total)

    def _write_manifest(self, *, complete: bool) -> None:
        data: dict[str, Any] = {"header": self.header.to_dict(), "header_hash": self._hash}
        if self.world == 1:
            target = self.path / MANIFEST
        else:
            target = self.path / f"manifest.{self._tag}.json"
            data.update(rank=self.rank, world=self.world, complete=complete)
        data["shards"] = [self._entries[name] for name in sorted(self._entries)]
        _write_json_atomic(target, data)


def _acquire_lock(path: Path, tag: str) -> int | None:
    """An advisory lock per writer rank, released by the kernel when the process dies."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return None
    fd = os.open(path / f".lock-{tag}", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise CacheError(f"another writer is writing {path} as rank {tag}; wait for it or stop it") from exc
    return fd


def _release_lock(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def _tmp_belongs(name: str, tag: str | None) -> bool:
    """Whether a hidden temporary file is a writer's leftover (tag None: any writer's)."""
    if not name.endswith(".tmp"):
        return False
    if tag is None:
        return name.startswith((".shard-", ".manifest"))
    return name.startswith((f".shard-{tag}-", f".manifest.{tag}.json"))


def _is_own_file(name: str) -> bool:
    return bool(_SHARD_RE.match(name) or name == MANIFEST or _RANK_MANIFEST_RE.match(name)) or _tmp_belongs(name, None)


def _remove_for_overwrite(path: Path, header: CacheHeader, tag: str, world: int) -> None:
    if world == 1:
        victims = [Path(e.path) for e in os.scandir(path) if e.is_file() and _is_own_file(e.name)]
    else:
        digest = header.digest()
        victims = [path / MANIFEST] if (path / MANIFEST).exists() else []
        for (rank, world_), file in _rank_manifests(path).items():
            try:
                foreign = _manifest_header(file).digest() != digest
            except CacheError:
                foreign = True
            if foreign or _tag(rank, world_) == tag:
                victims.append(file)
        for name, file in _list_shards(path).items():
            try:
                foreign = _scan_shard(file).header_hash != digest
            except CacheError:
                foreign = True
            if foreign or name.startswith(f"shard-{tag}-"):
                victims.append(file)
    if victims:
        _log.warning("%s: --overwrite removes %d cache files", path, len(victims))
    for victim in victims:
        with contextlib.suppress(FileNotFoundError):
            os.remove(victim)
