"""The stages of a study and their markers: OUT/stages/<stage>.json, written atomically when a stage finishes,
holding its seconds, its outputs and its provenance. A stage with a marker is finished and is reused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from interp.io import write_json_atomic

__all__ = ["STAGES", "marker_path", "read_marker", "write_marker", "stage_times"]

STAGES = ("sets", "behaviour", "ablations", "caches", "probes", "lens", "compare_text", "erasure", "stats",
          "report")


def marker_path(out: Path, stage: str) -> Path:
    """Where the marker of `stage` of the study in `out` lives."""
    return Path(out) / "stages" / f"{stage}.json"


def read_marker(out: Path, stage: str) -> dict[str, Any] | None:
    """The marker of a finished stage, or None for a stage not finished."""
    path = marker_path(out, stage)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def write_marker(out: Path, stage: str, *, seconds: float, outputs: list[str], provenance: dict[str, Any]) -> Path:
    """Mark `stage` finished in `seconds`, having written `outputs`."""
    path = marker_path(out, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json_atomic(path, {"stage": stage, "seconds": seconds, "outputs": outputs,
                                    "provenance": provenance}, indent=1)


def stage_times(out: Path) -> dict[str, float]:
    """Seconds each finished stage of the study in `out` took (from its marker), in stage order."""
    markers = {stage: read_marker(out, stage) for stage in STAGES}
    return {stage: float(marker["seconds"]) for stage, marker in markers.items() if marker is not None}
