"""Provenance of every result file: config, seed, package versions, git commit, time.

One helper builds it so every writer records the same fields.
"""

from __future__ import annotations

import datetime as _dt
import platform
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["provenance", "package_versions"]

_PACKAGES = (
    "cascade-interp", "numpy", "scipy", "soundfile", "torch", "transformers",
    "piper-tts", "espeakng-loader", "praat-parselmouth", "h5py",
)


def _git_commit() -> str | None:
    """Commit of the source tree this package runs from, or None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = out.stdout.strip()
    if out.returncode != 0 or not commit:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True, text=True, timeout=5, check=False,
    ).stdout.strip()
    return commit + ("-dirty" if dirty else "")


def package_versions(names: Sequence[str] = _PACKAGES) -> dict[str, str]:
    """The installed version of each named distribution; one that is not installed is left out."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _versions() -> dict[str, str]:
    return {"python": platform.python_version(), **package_versions()}


def _torch_threads() -> int | None:
    """Torch's intra-op threads (they change the order of float sums), or None where torch was never loaded."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def provenance(*, command: str, config: dict[str, Any], seed: int | None) -> dict[str, Any]:
    """The provenance block written beside (or inside) a result.

    command: what made the result (e.g. "interp data synth"); config: its arguments, JSON-serialisable.
    """
    return {
        "command": command,
        "config": config,
        "seed": seed,
        "versions": _versions(),
        "torch_threads": _torch_threads(),
        "git_commit": _git_commit(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
