"""Activation caches: hooks on a model's named sites, written to sharded HDF5 (see docs/architecture.md).

The package holds the hooks, the HDF5 store and the extraction loop, so that the import layout of the
distribution is fixed from the start. The store is split by job: `activations.format` (layout, header,
codecs, errors), `activations.writer` (CacheWriter), `activations.reader` (ActivationCache) and
`activations.maintenance` (finalize, verify, export, info).
"""

from __future__ import annotations

from activations.format import (
    AUDIO,
    DTYPES,
    FORMAT_VERSION,
    KIND_NAMES,
    MANIFEST,
    POSITIONS,
    TEXT,
    CacheError,
    CacheHeader,
    CacheMismatch,
    Float16Overflow,
    ItemMeta,
    ItemRows,
    NonFiniteActivation,
    StorageOverflow,
)
from activations.maintenance import VerifyReport, export, finalize, info, verify
from activations.reader import ActivationCache
from activations.writer import CacheWriter

__all__ = [
    "FORMAT_VERSION", "MANIFEST", "DTYPES", "POSITIONS", "KIND_NAMES", "AUDIO", "TEXT",
    "CacheError", "CacheMismatch", "StorageOverflow", "Float16Overflow", "NonFiniteActivation",
    "ItemMeta", "ItemRows", "CacheHeader", "CacheWriter", "ActivationCache", "VerifyReport",
    "finalize", "verify", "export", "info",
]
