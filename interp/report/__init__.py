"""Plotly figures of a run's statistics, and the study's self-contained HTML report.

The figure functions (interp.report.figures) take the stats dict (interp.stats.run.run_statistics) and return a
plotly Figure; `write_figure` saves one as a self-contained HTML file (plotly.js inlined, no CDN, opens offline).
`write_study_report` (interp.report.page) turns a study folder (interp.study) into report.html: one section per
analysis (one module each: sets, behaviour, probes, lens, compare_text, erasure) with its figures, its tables,
where each number comes from, the paper's figures beside ours, and each instrument's reading of the speech model
drawn between its references (the control model, a cascade by construction, and the audio ablations) with one
sentence computed from the numbers saying what the controls show about the instrument.
"""

from __future__ import annotations

from interp.report.common import PAPER_FIGURES
from interp.report.figures import accuracy_vs_snr, error_overlap_bars, kappa_heatmap, write_figure
from interp.report.page import write_study_report

__all__ = ["kappa_heatmap", "error_overlap_bars", "accuracy_vs_snr", "write_figure", "write_study_report",
           "PAPER_FIGURES"]
