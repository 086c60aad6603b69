"""Atomic writes: every result file appears whole or not at all.

A writer writes under a temporary name beside the target and renames it into place (os.replace is atomic on
one file system), so a killed run never leaves half a file where a reader or a resumed run would trust it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

__all__ = ["write_atomic", "write_text_atomic", "write_json_atomic"]


def write_atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp) on a temporary path beside `path`, then rename it to `path`; on failure remove the
    temporary file and leave `path` as it was. Returns `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    """`text` (UTF-8) to `path`, atomically."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: Path, data: Any, *, indent: int = 2) -> Path:
    """`data` as JSON (UTF-8, non-ASCII kept) to `path`, atomically, ending in a newline."""
    return write_text_atomic(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")
