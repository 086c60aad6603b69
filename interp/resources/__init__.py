"""Benchmark files and recordings that ship with the package (sources and licences: SOURCES.md here).

They make the importers, the tests and the demo work on a clone with nothing beside it.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["resource_path"]


def resource_path(relative: str) -> Path:
    """Path of a shipped file, e.g. ``resource_path("sst2/dev.tsv")``."""
    path = Path(str(files("interp.resources").joinpath(relative)))
    if not path.exists():
        raise FileNotFoundError(f"packaged resource {relative!r} is missing from {path.parent}")
    return path
