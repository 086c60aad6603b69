"""Uncertainty and significance for comparing systems answering the same items.

`interp.stats.paired` holds the numbers (accuracy, Cohen's kappa, error overlap, McNemar, Benjamini-Hochberg,
accuracy by SNR) on arrays with one value per item; `interp.stats.run` turns a run folder of predictions files
into the stats.json of `interp stats`. That one reads the harness's files (and so imports interp.behavior and its
models), so it is not loaded here: `from interp.stats.run import run_statistics`. The interval record and the
resampler are interp.estimates'.
"""

from __future__ import annotations

from interp.estimates import Estimate, bootstrap_ci, bootstrap_indices
from interp.stats.paired import (
    ErrorOverlap,
    McNemar,
    PairwiseAgreement,
    SnrAccuracy,
    accuracy,
    accuracy_by_snr,
    accuracy_with_ci,
    benjamini_hochberg,
    cohen_kappa,
    error_overlap,
    kappa_with_ci,
    mcnemar,
    pairwise_kappa,
)

__all__ = [
    "Estimate", "PairwiseAgreement", "ErrorOverlap", "McNemar", "SnrAccuracy",
    "accuracy", "accuracy_with_ci", "bootstrap_indices", "bootstrap_ci", "cohen_kappa", "kappa_with_ci",
    "pairwise_kappa", "error_overlap", "mcnemar", "benjamini_hochberg", "accuracy_by_snr",
]
