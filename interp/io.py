"""Atomic writes: every result file appears whole or not at all.

A writer writes under a temporary name beside the target and renames it into place (os.replace is atomic on
one file system), so a killed run never leaves half a file where a reader or a resumed run would trust it.
With `fsync=True` the file and then its folder are also flushed to disk, so that a power cut after the call
returns cannot lose or truncate it: for files that a checksum or a manifest vouches for (activation caches).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

__all__ = ["write_atomic", "write_text_atomic", "write_json_atomic"]


def write_atomic(path: Path, write: Callable[[Path], None], *, fsync: bool = False) -> Path:
    """Call write(tmp) on a temporary path beside `path`, then rename it to `path`; on failure remove the
    temporary file and leave `path` as it was. fsync: flush the file before the rename and the folder after
    it. Returns `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        if fsync:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if fsync:
        with suppress(OSError):  # some file systems cannot fsync a folder; the rename itself is still atomic
            _fsync(path.parent)
    return path


def write_text_atomic(path: Path, text: str, *, fsync: bool = False) -> Path:
    """`text` (UTF-8) to `path`, atomically."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), fsync=fsync)


def write_json_atomic(path: Path, data: Any, *, indent: int = 2, fsync: bool = False) -> Path:
    """`data` as JSON (UTF-8, non-ASCII kept) to `path`, atomically, ending in a newline."""
    return write_text_atomic(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n", fsync=fsync)


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's) data to disk: fsync works through any descriptor of it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
