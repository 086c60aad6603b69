"""Write a spoken set so that a crash or a bad input never leaves a broken set behind.

Items go into a hidden `.NAME.partial/` folder beside the target; the folder is renamed to NAME only
when every item is written. A rerun with the same config resumes the partial folder, skipping ids it
already holds (SAELens and lhotse do the same); a user error discards it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from interp.data.audio import write_wav
from interp.data.manifest import AUDIO_DIR, MANIFEST, Item
from interp.errors import DataError, InterpError

__all__ = ["SetWriter", "PROVENANCE"]

PROVENANCE = "provenance.json"
_CONFIG = "config.json"
_log = logging.getLogger(__name__)


class SetWriter:
    """Context manager that writes items of one spoken set, resumably and atomically.

    config: the arguments that determine the set's content; a partial folder made with another
    config is discarded rather than resumed.
    """

    def __init__(self, out: Path, *, config: dict[str, Any], overwrite: bool = False) -> None:
        self.out = out
        self.partial = out.parent / f".{out.name}.partial"
        self._config = json.loads(json.dumps(config))
        self._overwrite = overwrite
        self._done: set[str] = set()
        self._ids: set[str] = set()

    def __enter__(self) -> SetWriter:
        if self.out.exists() and not self._overwrite:
            raise DataError(f"{self.out} already exists; pass --overwrite to replace it or choose another --out")
        if self.partial.exists() and self._read_config() == self._config:
            self._done = self._resume()
            _log.info("resuming %s: %d items already written", self.partial, len(self._done))
        else:
            shutil.rmtree(self.partial, ignore_errors=True)
            (self.partial / AUDIO_DIR).mkdir(parents=True)
            (self.partial / _CONFIG).write_text(json.dumps(self._config, indent=2), encoding="utf-8")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if isinstance(error, InterpError):
            shutil.rmtree(self.partial, ignore_errors=True)
        elif error is not None:
            _log.warning("interrupted: %s keeps %d finished items; rerun the same command to resume",
                         self.partial, len(self._done))

    def has(self, item_id: str) -> bool:
        """True when a resumed run already wrote this item; it then counts as written by this run."""
        if item_id not in self._done:
            return False
        self._claim(item_id)
        return True

    def add(self, item: Item, samples: np.ndarray) -> None:
        """Write the item's wav, then append its manifest line (flushed, so a kill loses at most this item)."""
        self._claim(item.id)
        item.validate()
        write_wav(self.partial / item.audio, samples, sample_rate=item.sample_rate)
        with (self.partial / MANIFEST).open("a", encoding="utf-8") as manifest:
            manifest.write(json.dumps(item.to_dict(), ensure_ascii=False) + "\n")
            manifest.flush()
            os.fsync(manifest.fileno())
        self._done.add(item.id)

    def _claim(self, item_id: str) -> None:
        if item_id in self._ids:
            raise DataError(f"duplicate id {item_id!r}; ids must be unique in a set")
        self._ids.add(item_id)

    def commit(self, provenance: dict[str, Any]) -> Path:
        """Write provenance, then move the finished set into place (replacing `out` when overwriting)."""
        if not self._ids:
            raise DataError(f"no items to write to {self.out}")
        stale = self._done - self._ids
        if stale:
            raise DataError(f"{self.partial} holds ids this run did not make ({sorted(stale)[:3]}…); "
                            "delete it and rerun")
        (self.partial / PROVENANCE).write_text(json.dumps(provenance, indent=2, ensure_ascii=False), encoding="utf-8")
        (self.partial / _CONFIG).unlink()
        if self.out.exists():
            trash = self.out.parent / f".{self.out.name}.old"
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(self.out, trash)
            os.replace(self.partial, self.out)
            shutil.rmtree(trash)
        else:
            os.replace(self.partial, self.out)
        return self.out

    def _read_config(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.partial / _CONFIG).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None

    def _resume(self) -> set[str]:
        """Ids of complete manifest lines; a torn last line (killed mid-write) is cut off."""
        manifest = self.partial / MANIFEST
        if not manifest.exists():
            return set()
        done: set[str] = set()
        good: list[str] = []
        for line in manifest.read_text(encoding="utf-8").splitlines(keepends=True):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break
            if not line.endswith("\n") or not (self.partial / record["audio"]).exists():
                break
            done.add(record["id"])
            good.append(line)
        manifest.write_text("".join(good), encoding="utf-8")
        return done
