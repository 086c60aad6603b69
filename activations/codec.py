"""How activations are stored: float32 as is, float16 refusing overflow, bfloat16 as the top 16 bits of float32.

Non-finite activations are refused for every dtype: a NaN in a cache would silently poison every probe fitted
on it. float16 refuses any |x| > 65504: storing it would clip or produce inf.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from activations.format import Float16Overflow, NonFiniteActivation, StorageOverflow

__all__: list[str] = []  # the package's writer, reader and maintenance share _encode, _decode and _STORED

_STORED = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16), "bfloat16": np.dtype(np.uint16)}
"""The numpy dtype each cache dtype is stored in (bfloat16 as its uint16 bits)."""
_FLOAT16_MAX = 65504.0


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
