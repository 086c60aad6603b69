"""The cache reader: float32 reads of sites and row metadata, in a fixed order, from a folder or an export.

It exists apart from the writer because reading only needs the shard files on disk (never locks or
manifests), so it can follow a cache while extraction is still writing it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import h5py
import numpy as np

from activations.codec import _STORED, _decode
from activations.format import (
    _ROW_FIELDS,
    CacheError,
    CacheHeader,
    ItemMeta,
    _describe_mismatch,
    _parse_header,
)
from activations.shards import _folder_header, _list_shards, _open_h5, _str_array

__all__ = ["ActivationCache"]


@dataclass
class _ShardIndex:
    """A shard's item table, read once; shards are immutable."""

    path: Path
    ids: list[str]
    index: np.ndarray
    transcript: list[str]
    label: list[str]
    duration: np.ndarray
    offsets: np.ndarray
    bytes: int


def _load_shard_index(path: Path, header: CacheHeader, digest: str) -> _ShardIndex:
    with _open_h5(path) as f:
        if str(f.attrs.get("header_hash", "")) != digest:
            found = _parse_header(str(f.attrs.get("header", "{}")), path)
            raise CacheError(f"{path} belongs to another cache configuration ({_describe_mismatch(found, header)}); "
                             "reopen the cache")
        try:
            index = _ShardIndex(path, _str_array(f["items/id"]), np.asarray(f["items/index"][()], dtype=np.int64),
                                _str_array(f["items/transcript"]), _str_array(f["items/label"]),
                                np.asarray(f["items/duration"][()], dtype=np.float32),
                                np.asarray(f["items/offset"][()], dtype=np.int64), path.stat().st_size)
            sites = {name: f["sites"][name].shape[1] for name in f["sites"]}
        except KeyError as exc:
            raise CacheError(f"{path} is not a cache shard (missing {exc})") from exc
    if sites != header.sites:
        raise CacheError(f"{path} holds sites {sites}, the header says {header.sites}")
    return index


def _cat(parts: Iterable[np.ndarray]) -> np.ndarray:
    """Concatenated int64 arrays; empty when there are none."""
    return np.concatenate([np.zeros(0, dtype=np.int64), *parts])


class ActivationCache:
    """Read access to a cache folder (or an exported .h5 file). Open with `ActivationCache.open`.

    Reads are float32, ordered by item dataset index (then id), then sequence position. Shards are
    discovered from the files on disk; `refresh` picks up shards written since.
    """

    def __init__(self, path: Path, header: CacheHeader, *, single_file: bool) -> None:
        self.path = path
        self.header = header
        self._digest = header.digest()
        self._single = single_file
        self._loaded: dict[str, _ShardIndex] = {}
        self._shards: list[_ShardIndex] = []
        self._items: tuple[ItemMeta, ...] = ()
        self._position: dict[str, int] = {}
        self._shard_of = np.zeros(0, dtype=np.int64)
        self._start = np.zeros(0, dtype=np.int64)
        self._length = np.zeros(0, dtype=np.int64)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> ActivationCache:
        path = Path(path)
        if not path.exists():
            raise CacheError(f"no activation cache at {path}")
        if path.is_file():
            with _open_h5(path) as f:
                raw = f.attrs.get("header")
            if raw is None:
                raise CacheError(f"{path} is not an activation cache file (no header attribute)")
            cache = cls(path, CacheHeader.from_dict(json.loads(str(raw)), source=path), single_file=True)
        else:
            cache = cls(path, _folder_header(path), single_file=False)
        cache.refresh()
        return cache

    # -- table

    def refresh(self) -> ActivationCache:
        """Re-list the shard files (complete shards only) so shards written since opening become visible."""
        files = {self.path.name: self.path} if self._single else _list_shards(self.path)
        self._loaded = {name: self._loaded.get(name) or _load_shard_index(file, self.header, self._digest)
                        for name, file in files.items()}
        shards = self._shards = list(self._loaded.values())
        ids = [i for s in shards for i in s.ids]
        shard_of = _cat(np.full(len(s.ids), k, dtype=np.int64) for k, s in enumerate(shards))
        local = _cat(np.arange(len(s.ids)) for s in shards)
        order = np.lexsort((np.array(ids, dtype=str), _cat(s.index for s in shards)))
        self._shard_of = shard_of[order]
        self._start = _cat(s.offsets[:-1] for s in shards)[order]
        self._length = _cat(np.diff(s.offsets) for s in shards)[order]
        items: list[ItemMeta] = []
        self._position = {}
        duplicates = []
        for p, raw in enumerate(order):
            shard, j = shards[shard_of[raw]], int(local[raw])
            meta = ItemMeta(shard.ids[j], int(shard.index[j]), shard.transcript[j], shard.label[j] or None,
                            float(shard.duration[j]))
            if meta.id in self._position:
                duplicates.append(meta.id)
            self._position[meta.id] = p
            items.append(meta)
        self._items = tuple(items)
        if duplicates:
            raise CacheError(f"{self.path}: items {duplicates[:5]} are in more than one shard; run verify")
        return self

    @property
    def model(self) -> str:
        return self.header.model

    @property
    def sites(self) -> list[str]:
        return list(self.header.sites)

    @property
    def dims(self) -> dict[str, int]:
        return dict(self.header.sites)

    @property
    def dtype(self) -> str:
        return self.header.dtype

    @property
    def positions(self) -> str:
        return self.header.positions

    @property
    def items(self) -> tuple[ItemMeta, ...]:
        """Items sorted by dataset index (then id): the order of every read."""
        return self._items

    @property
    def rows(self) -> int:
        return int(self._length.sum())

    @property
    def shards(self) -> list[Path]:
        return [s.path for s in self._shards]

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self._shards)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return (f"ActivationCache({str(self.path)!r}, model={self.model!r}, sites={len(self.sites)}, "
                f"items={len(self)}, rows={self.rows}, dtype={self.dtype})")

    # -- reads

    def read(self, site: str, items: Iterable[str] | None = None) -> np.ndarray:
        """One site's rows as float32 (rows, d), for all items or the given ids, in cache order."""
        self._check_site(site)
        return self._gather(self._select(items), site)

    def row_table(self, items: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Row metadata in the order of `read`: item (index into `items`), pos, kind, t_start, t_end, token_id."""
        return self._gather_rows(self._select(items))

    def iter_batches(self, site: str, batch_rows: int = 65536, items: Iterable[str] | None = None
                     ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Stream (float32 rows, row_table) batches of whole items, about batch_rows rows each, in `read` order.

        An item longer than batch_rows is a batch of its own; concatenating the batches gives `read`.
        """
        self._check_site(site)
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
        return self._stream(site, batch_rows, self._select(items))

    def _stream(self, site: str, batch_rows: int, selection: np.ndarray
                ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        handles: dict[int, h5py.File] = {}
        try:
            for group in self._batches(selection, batch_rows):
                yield self._gather(group, site, handles), self._gather_rows(group, handles)
        finally:
            for handle in handles.values():
                handle.close()

    def _batches(self, selection: np.ndarray, batch_rows: int) -> Iterator[np.ndarray]:
        start, count = 0, 0
        for k, length in enumerate(self._length[selection].tolist()):
            if count and count + length > batch_rows:
                yield selection[start:k]
                start, count = k, 0
            count += length
        if start < len(selection):
            yield selection[start:]

    def _check_site(self, site: str) -> None:
        if site not in self.header.sites:
            raise CacheError(f"unknown site {site!r}; this cache holds {', '.join(self.header.sites)}")

    def _select(self, items: Iterable[str] | None) -> np.ndarray:
        if items is None:
            return np.arange(len(self._items), dtype=np.int64)
        if isinstance(items, str):
            items = [items]
        wanted = list(items)
        unknown = [i for i in wanted if i not in self._position]
        if unknown:
            raise CacheError(f"{len(unknown)} item(s) not in the cache {self.path}: "
                             f"{', '.join(map(repr, unknown[:5]))}{' ...' if len(unknown) > 5 else ''}")
        return np.unique(np.array([self._position[i] for i in wanted], dtype=np.int64))

    def _plan(self, selection: np.ndarray) -> list[tuple[int, list[tuple[int, int]], np.ndarray]]:
        """For each shard: the contiguous row runs to read and where their rows go in the output."""
        lengths = self._length[selection]
        out_offset = np.concatenate([[0], np.cumsum(lengths)])[:-1]
        shard_of = self._shard_of[selection]
        plan = []
        for shard in np.unique(shard_of).tolist():
            member = np.flatnonzero((shard_of == shard) & (lengths > 0))
            if not len(member):
                continue
            starts, lens, dests = self._start[selection[member]], lengths[member], out_offset[member]
            order = np.argsort(starts, kind="stable")
            starts, lens, dests = starts[order], lens[order], dests[order]
            ends = starts + lens
            new_run = np.concatenate([[True], starts[1:] != ends[:-1]])
            run_id = np.cumsum(new_run) - 1
            run_a = starts[new_run]
            run_b = np.concatenate([ends[:-1][new_run[1:]], ends[-1:]])
            run_base = np.concatenate([[0], np.cumsum(run_b - run_a)])[:-1]
            source = run_base[run_id] + starts - run_a[run_id]
            dest = np.repeat(dests - source, lens) + np.arange(int(lens.sum()))
            plan.append((shard, list(zip(run_a.tolist(), run_b.tolist())), dest))
        return plan

    def _fill(self, selection: np.ndarray, dataset: str, dtype: Any, convert: Any,
              handles: dict[int, h5py.File] | None, width: tuple[int, ...] = ()) -> np.ndarray:
        """The rows of the selected items from one dataset of every shard, converted, in selection order."""
        out = np.empty((int(self._length[selection].sum()), *width), dtype=dtype)
        for shard, runs, dest in self._plan(selection):
            handle = handles.get(shard) if handles is not None else None
            own = handle is None
            if own:
                handle = _open_h5(self._shards[shard].path)
                if handles is not None:
                    handles[shard], own = handle, False
            try:
                ds = handle[dataset]
                parts = [ds[a:b] for a, b in runs]
            finally:
                if own:
                    handle.close()
            data = convert(parts[0] if len(parts) == 1 else np.concatenate(parts))
            if dest[-1] - dest[0] == len(dest) - 1:  # contiguous and in order: a slice assignment
                out[dest[0]:dest[-1] + 1] = data
            else:
                out[dest] = data
        return out

    def _gather(self, selection: np.ndarray, site: str, handles: dict[int, h5py.File] | None = None,
                *, raw: bool = False) -> np.ndarray:
        """One site's rows as float32, or (raw) in the stored dtype."""
        width = (self.header.sites[site],)
        if raw:
            return self._fill(selection, f"sites/{site}", _STORED[self.header.dtype], lambda x: x, handles, width)
        return self._fill(selection, f"sites/{site}", np.float32, lambda x: _decode(x, self.header.dtype), handles,
                          width)

    def _gather_rows(self, selection: np.ndarray, handles: dict[int, h5py.File] | None = None
                     ) -> dict[str, np.ndarray]:
        table = {"item": np.repeat(selection, self._length[selection])}
        for key, dtype in _ROW_FIELDS.items():
            table[key] = self._fill(selection, f"rows/{key}", dtype, lambda x, d=dtype: np.asarray(x, dtype=d),
                                    handles)
        return table
