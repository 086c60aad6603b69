"""The report's probes section: energy, pitch, CTC text and bag of characters by layer for the speech model (its
encoder as the acoustic control), then layer by layer against the control, which holds text by construction."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from interp.report.common import (
    Figures,
    Study,
    Subject,
    interval,
    number,
    paper,
    reading,
    source,
    table,
    verdict,
)
from interp.report.figures import PALETTE, grid, note

__all__ = ["probes_section", "probes_reading", "probe_layers_figure", "probe_curves"]

READS = 0.5
"""A probe score (1 − CER, or R²) from which the readings say the probe reads what it decodes."""
SAME = 0.1
"""A gap in score the readings treat as none."""
_LABELS = {"ctc": "CTC text decodability (1 − CER)", "boc": "bag-of-characters R²", "energy": "energy R²",
           "pitch": "pitch R²"}


def _reports(path: Path) -> list[Any]:
    from probes.sweep import ProbeReport

    record = json.loads(path.read_text(encoding="utf-8"))
    return [ProbeReport.from_dict(r) for r in record["reports"]]


def probe_curves(reports: list[Any]) -> dict[str, list[tuple[int, float | None]]]:
    """Each probe's (layer, score) over the `llm.layers.N` sites of the first report that has them (the LLM
    cache of the first analysis set; the encoder's cache has none)."""
    for report in reports:
        scores = [s for s in report.scores if s.site.startswith("llm.layers.")]
        if scores:
            curves: dict[str, list[tuple[int, float | None]]] = {}
            for score in scores:
                curves.setdefault(score.probe, []).append((int(score.site.rsplit(".", 1)[-1]), score.score))
            return {probe: sorted(points) for probe, points in curves.items()}
    return {}


def probe_layers_figure(curves: dict[str, dict[str, list[tuple[int, float | None]]]]) -> go.Figure:
    """One panel per probe, score by LLM layer, one line per model (`curves`: model → probe_curves)."""
    probes = list(dict.fromkeys(p for by_probe in curves.values() for p in by_probe))
    title = "Probes by layer: the speech model against its control"
    if not probes:
        return note(go.Figure(layout={"title": title}), "no probe of LLM layers in this study")
    figure, columns = grid([_LABELS.get(p, p) for p in probes])
    for k, (model, by_probe) in enumerate(curves.items()):
        for index, probe in enumerate(probes):
            points = by_probe.get(probe, [])
            figure.add_trace(go.Scatter(x=[x for x, _ in points], y=[y for _, y in points], mode="lines+markers",
                                        name=model, legendgroup=model, showlegend=index == 0,
                                        line={"color": PALETTE[k % len(PALETTE)]},
                                        hovertemplate="layer %{x}: %{y:.3f}<extra>" + f"{model}, {probe}</extra>"),
                             row=index // columns + 1, col=index % columns + 1)
            figure.update_xaxes(title_text="layer", row=index // columns + 1, col=index % columns + 1)
    figure.update_layout(title=title, height=max(380, 380 * ((len(probes) + columns - 1) // columns)))
    return figure


def _best(points: list[tuple[int, float | None]]) -> tuple[int, float] | None:
    scored = [(layer, score) for layer, score in points if score is not None]
    return max(scored, key=lambda p: p[1]) if scored else None


def probes_reading(study: Study, curves: dict[str, dict[str, list[tuple[int, float | None]]]]) -> str:
    """One sentence, from the numbers: where the text probe peaks in the control and in the speech model."""
    speech, control = study.speech.name, study.control
    if control is None or control.name not in curves:
        return f"this study has no control beside {speech}, so the probes have no reference for a cascade's rows."
    mine, theirs = curves.get(speech, {}), curves[control.name]
    probe = "ctc" if "ctc" in mine and "ctc" in theirs else next((p for p in mine if p in theirs), None)
    if probe is None:
        return f"{speech} and {control.name} share no probe of their LLM layers."
    best_s, best_c = _best(mine[probe]), _best(theirs[probe])
    if best_s is None or best_c is None:
        return f"{_LABELS.get(probe, probe)} has no score for {speech if best_s is None else control.name}."
    text = (f"{_LABELS.get(probe, probe)} peaks at {number(best_c[1])} in the control {control.name} (layer "
            f"{best_c[0]}) and at {number(best_s[1])} in {speech} (layer {best_s[0]})")
    said = verdict(best_c[1], best_s[1], reads=READS, same=SAME,
                   seen="the probe reads the text where a cascade puts it",
                   unseen=f"the probe reads little even where a cascade puts the text, so {speech}'s low score "
                   "says little", alike=f", and finds as much in {speech}",
                   gap=f", and {{gap}} less in {speech}'s audio rows")
    return f"{text}: {said}."


def _rows(subject: Subject, reports: list[Any]) -> list[list[Any]]:
    """Every fifth layer and the last one of each report, as the table shows them."""
    return [[subject.name, report.cache.rsplit("/", 1)[-1], score.site, score.probe, interval(
        {"value": score.score, "low": score.low, "high": score.high}), score.n_items]
            for report in reports for score in report.scores
            if score.site.endswith((".0", ".5", ".10", ".15", ".20", ".25")) or score.site == report.sites[-1]]


def probes_section(study: Study, figures: Figures) -> str:
    from probes import probe_figure

    found = [(s, s.root / "probes.json") for s in study.subjects if (s.root / "probes.json").is_file()]
    reports = {subject.name: _reports(path) for subject, path in found}
    curves = {name: probe_curves(r) for name, r in reports.items()}
    own = reports.get(study.speech.name, [])
    rows = [row for subject, _ in found for row in _rows(subject, reports[subject.name])]
    return ("<h2 id='probes'>Probes by layer</h2><p>Held-out items only (split by item): energy and pitch by "
            "ridge regression per audio row (R²), text by a linear CTC probe (1 − CER) and bag-of-characters (R²); "
            "the Whisper encoder's layers are the acoustic control, the control model's LLM layers (text by "
            "construction) the text control. The table shows every fifth layer.</p>"
            + figures(probe_layers_figure(curves)) + reading(probes_reading(study, curves))
            + "".join(figures(probe_figure(report)) for report in own)
            + table(["model", "cache", "site", "probe", "score [95% CI]", "test items"], rows)
            + paper("probes") + source(study.out, [path for _, path in found], "probes"))
