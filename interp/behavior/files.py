"""The files of a behaviour run: `<out>/<system>/<set>.jsonl` (predictions) + `<set>.json` (sidecar), `run.json`.

A run under an audio ablation (interp.data.ablation) is its own run, in `<out>/<system>+<ablation>/` (`+` never
occurs in a system name); its sidecar's config records the ablation.

One JSON line per item (interp.behavior.prediction.Prediction), appended (and flushed) as soon as the item is
answered, so a killed run loses at most the item in progress; a rerun keeps the finished lines (a torn last line
is dropped) and answers only the rest. When every item is answered the file is rewritten atomically in set order,
and the sidecar gets status "done" (interp.behavior.harness). A set is named after its folder; the per-SNR
folders of `interp data noise` (`snr10`) get their parent's name in front.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from interp.behavior.prediction import Prediction
from interp.errors import DataError
from interp.io import write_json_atomic, write_text_atomic
from interp.provenance import provenance

__all__ = ["PREDICTIONS_SUFFIX", "SIDECAR_SUFFIX", "set_name", "system_folder", "read_predictions",
           "append_prediction", "write_predictions", "read_sidecar", "sidecar_ablation", "run_summary", "record_run"]

_log = logging.getLogger(__name__)

PREDICTIONS_SUFFIX = ".jsonl"
SIDECAR_SUFFIX = ".json"
_NOISY_FOLDER = re.compile(r"^snr-?[0-9.]+$")


def set_name(root: Path) -> str:
    """Name of a set's predictions file: the folder name, with the parent folder in front for the per-SNR
    folders that `interp data noise` writes (`sentiment-noise/snr10` -> `sentiment-noise-snr10`)."""
    root = Path(root).resolve()
    if _NOISY_FOLDER.match(root.name):
        return f"{root.parent.name}-{root.name}"
    return root.name


def system_folder(system_name: str, ablation: str | None = None) -> str:
    """The folder of a system's predictions in a run: its name, with `+<ablation>` for an ablated run."""
    return f"{system_name}+{ablation}" if ablation else system_name


def _line(prediction: Prediction) -> str:
    return json.dumps(prediction.to_dict(), ensure_ascii=False) + "\n"


def _whole_lines(path: Path, *, repair: bool) -> bytes:
    """The file's bytes up to its last whole line. A last line without its newline is kept when it is a whole
    JSON object and otherwise dropped (a run killed while writing it); with repair=True the file is mended."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end == len(data):
        return data
    try:
        whole = isinstance(json.loads(data[end:]), dict)
    except (json.JSONDecodeError, UnicodeDecodeError):
        whole = False
    if whole:
        if repair:
            with path.open("ab") as out:
                out.write(b"\n")
        return data + b"\n"
    _log.warning("%s: dropping a torn last line (%d bytes) left by an interrupted run", path, len(data) - end)
    if repair:
        os.truncate(path, end)
    return data[:end]


def read_predictions(path: Path, *, repair: bool = False) -> list[Prediction]:
    """The finished lines of a predictions file ([] when there is none). A torn last line is dropped (see
    `_whole_lines`); any other malformed line raises DataError naming the file and line."""
    if not path.is_file():
        return []
    predictions = []
    for number, line in enumerate(_whole_lines(path, repair=repair).decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{number}: not valid JSON ({error.msg}); delete the file to start it "
                            "again") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number}: not a predictions line (no id)")
        try:
            predictions.append(Prediction.from_dict(record))
        except DataError as error:
            raise DataError(f"{path}:{number}: {error}") from None
    return predictions


def append_prediction(out: IO[str], prediction: Prediction) -> None:
    """Append one line to an open predictions file and flush it, so a killed run keeps it."""
    out.write(_line(prediction))
    out.flush()


def write_predictions(path: Path, predictions: Iterable[Prediction]) -> Path:
    """The whole predictions file, atomically (a reader never sees half of it)."""
    return write_text_atomic(path, "".join(_line(prediction) for prediction in predictions))


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """The sidecar `<set>.json` of a predictions file, or None when there is none."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error.msg})") from None


def sidecar_ablation(info: dict[str, Any]) -> str | None:
    """The ablation a sidecar's run was made under (None: the items' own audio)."""
    recorded = info.get("config", {}).get("ablation")
    return recorded.get("ablation") if isinstance(recorded, dict) else None


def run_summary(run_dir: Path) -> list[dict[str, Any]]:
    """One row per finished predictions file of a run: system (its folder), set, items, accuracy, wer (or None),
    unparsed, ablation (or None)."""
    rows = []
    for sidecar in sorted(Path(run_dir).glob(f"*/*{SIDECAR_SUFFIX}")):
        info = read_sidecar(sidecar)
        if not info or info.get("status") != "done" or "counts" not in info:
            continue
        counts = info["counts"]
        rows.append({"system": sidecar.parent.name, "set": sidecar.stem, "items": counts["items"],
                     "accuracy": info.get("accuracy"), "wer": counts.get("wer"), "unparsed": counts["unparsed"],
                     "ablation": sidecar_ablation(info)})
    return rows


def record_run(run_dir: Path, *, systems: Sequence[str], sets: Sequence[str], config: dict[str, Any]) -> Path:
    """Write (or extend) `RUN/run.json`: the systems and sets in the order they were given, and provenance.
    `interp stats` lists systems and sets in this order."""
    path = Path(run_dir) / "run.json"
    previous = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    merged_systems = list(dict.fromkeys([*previous.get("systems", []), *systems]))
    merged_sets = list(dict.fromkeys([*previous.get("sets", []), *sets]))
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return write_json_atomic(path, {"systems": merged_systems, "sets": merged_sets,
                                    "provenance": provenance(command="interp behave", config=config, seed=None)})
