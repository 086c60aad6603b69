"""Probes on activation caches: energy, pitch, CTC text decodability, bag-of-characters (see docs/architecture.md).

`run_probes` sweeps all four over the sites of a cache and returns a `ProbeReport`; `probe_figure` draws
it. The targets, the streaming ridge and the single probes are public for notebooks and erasure code.
"""

from __future__ import annotations

from probes.boc import BocResult, PooledRows, boc_probe, boc_targets, lambda_grid, r2_over_varying_outputs
from probes.ctc import (
    MAX_FRAMES_PER_ROW,
    CtcExample,
    CtcFit,
    CtcItem,
    CtcProbe,
    CtcResult,
    choose_frames_per_row,
    ctc_length,
    ctc_probe,
    edit_distance,
    fit_ctc_probe,
    greedy_decode,
)
from probes.figure import probe_figure
from probes.ridge import RidgeAccumulator, RidgeResult, fit_ridge, item_folds, r2_score_streaming
from probes.sweep import PROBES, ProbeName, ProbeReport, ProbeScore, run_probes
from probes.targets import (
    BLANK,
    CHARSET,
    PitchTrack,
    bag_of_characters,
    characters,
    encode_chars,
    energy_db,
    pitch_log_hz,
    pitch_track,
)

__all__ = [
    # targets
    "BLANK", "CHARSET", "PitchTrack", "bag_of_characters", "characters", "encode_chars", "energy_db",
    "pitch_log_hz", "pitch_track",
    # ridge
    "RidgeAccumulator", "RidgeResult", "fit_ridge", "item_folds", "r2_score_streaming",
    # probes
    "CtcExample", "CtcFit", "CtcItem", "CtcProbe", "CtcResult", "MAX_FRAMES_PER_ROW", "choose_frames_per_row",
    "ctc_length", "ctc_probe", "edit_distance", "fit_ctc_probe", "greedy_decode",
    "BocResult", "PooledRows", "boc_probe", "boc_targets", "lambda_grid", "r2_over_varying_outputs",
    # sweeps and figures
    "PROBES", "ProbeName", "ProbeReport", "ProbeScore", "run_probes", "probe_figure",
]
