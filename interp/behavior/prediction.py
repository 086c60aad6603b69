"""One system's answer to one item: the `Prediction` record, one line of a predictions file.

Fields of a line, in the order they are written: id, task, parent_id (clean item of a noisy one), snr_db (None when
clean), label (gold index, or accepted answers), n_choices, asr_transcript (cascades only), scores (one per
choice, or None), raw_prediction, prediction (index, -1 unparseable; the answer text for open tasks),
calibration, correct, wer and ref_words (transcribe only), reply (generated text, when the system generated),
latency_s, lens_text (the implicit cascade only), audio_from (runs under `--ablate swap` only: the id of the item
whose audio was heard). A field marked "only" is left out of the line where it does not apply, so
`Prediction.from_dict(line).to_dict() == line` for every line the harness writes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

from interp.errors import DataError
from interp.task_prompts import Calibration

__all__ = ["Prediction", "corpus_wer"]

_SNR_SUFFIX = re.compile(r"\.snr-?[0-9.]+$")
_REQUIRED = ("id", "task", "label", "n_choices", "prediction", "correct")


@dataclass(frozen=True)
class Prediction:
    """One predictions line (see the module docstring for the fields).

    Lines written by hand (tests, other tools) may leave out the fields `interp stats` does not read: parent_id,
    snr_db, scores, raw_prediction and latency_s default to None, calibration to "none".
    """

    id: str
    task: str
    label: int | tuple[str, ...]
    n_choices: int
    prediction: int | str
    correct: bool
    parent_id: str | None = None
    snr_db: float | None = None
    scores: tuple[float, ...] | None = None
    raw_prediction: int | None = None
    calibration: Calibration = "none"
    latency_s: float | None = None
    asr_transcript: str | None = None
    wer: float | None = None
    ref_words: int | None = None
    reply: str | None = None
    lens_text: str | None = None
    audio_from: str | None = None

    @property
    def base_id(self) -> str:
        """The clean item this line belongs to: parent_id, else the id without its `.snr<N>` suffix."""
        return self.parent_id or _SNR_SUFFIX.sub("", self.id)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the line, keys in file order; fields that do not apply are left out."""
        line: dict[str, Any] = {
            "id": self.id, "task": self.task, "parent_id": self.parent_id, "snr_db": self.snr_db,
            "label": self.label if isinstance(self.label, int) else list(self.label), "n_choices": self.n_choices,
        }
        if self.asr_transcript is not None:
            line["asr_transcript"] = self.asr_transcript
        line.update(scores=None if self.scores is None else list(self.scores), raw_prediction=self.raw_prediction,
                    prediction=self.prediction, calibration=self.calibration, correct=self.correct)
        if self.wer is not None:
            line.update(wer=self.wer, ref_words=self.ref_words)
        if self.reply is not None:
            line["reply"] = self.reply
        line["latency_s"] = self.latency_s
        if self.lens_text is not None:
            line["lens_text"] = self.lens_text
        if self.audio_from is not None:
            line["audio_from"] = self.audio_from
        return line

    @classmethod
    def from_dict(cls, line: dict[str, Any]) -> Prediction:
        """The record of one line; DataError naming a missing or unknown field."""
        missing = [key for key in _REQUIRED if key not in line]
        if missing:
            raise DataError(f"not a predictions line (no {missing[0]})")
        known = [field.name for field in fields(cls)]
        unknown = [key for key in line if key not in known]
        if unknown:
            raise DataError(f"not a predictions line: unknown field {unknown[0]!r} (known: {', '.join(known)})")
        values = dict(line)
        if not isinstance(values["label"], int):
            values["label"] = tuple(values["label"])
        if values.get("scores") is not None:
            values["scores"] = tuple(values["scores"])
        return cls(**values)


def corpus_wer(predictions: Iterable[Prediction]) -> float | None:
    """Pooled WER of transcribe lines: sum of per-item edits (wer x ref_words) over the reference words; None
    without reference words. Lines without a WER are skipped."""
    edits = words = 0.0
    for prediction in predictions:
        if prediction.wer is None:
            continue
        edits += prediction.wer * prediction.ref_words
        words += prediction.ref_words
    return edits / words if words else None
