"""The report's speech-vs-text section: CKA by layer between each word's audio rows and the same LLM's states on
the transcript, for the speech model against its control (whose audio rows are the transcript's own embeddings,
so its curve is what a cascade looks like to this comparison), each beside its shuffled-pairing chance level."""

from __future__ import annotations

import html
import json
from typing import Any

import plotly.graph_objects as go

from interp.report.common import Figures, Study, number, reading, source, table, verdict
from interp.report.figures import PALETTE, note

__all__ = ["compare_text_section", "compare_text_reading", "cka_layers_figure"]

SEES = 0.5
"""CKA above its chance level from which the readings say the comparison sees the transcript in the audio rows."""
SAME = 0.1
"""A gap in CKA the readings treat as none."""


def _above_chance(report: dict[str, Any]) -> list[tuple[int, float, float]]:
    """(layer, CKA, shuffled CKA) of every layer with both numbers."""
    return [(row["layer"], row["cka"], row["cka_shuffled"]) for row in report["layers"]
            if row.get("cka") is not None and row.get("cka_shuffled") is not None]


def _best(report: dict[str, Any]) -> tuple[int, float, float] | None:
    """The layer whose CKA stands furthest above its chance level."""
    rows = _above_chance(report)
    return max(rows, key=lambda row: row[1] - row[2]) if rows else None


def cka_layers_figure(reports: dict[str, dict[str, Any]]) -> go.Figure:
    """CKA by layer, one solid line per model and its shuffled-pairing chance level dotted in the same colour
    (`reports`: model → compare_text.json)."""
    title = "Speech vs text inside one LLM: linear CKA of word-aligned audio and transcript states, by layer"
    if not reports:
        return note(go.Figure(layout={"title": title}), "no compare-text result")
    figure = go.Figure()
    for k, (model, report) in enumerate(reports.items()):
        colour, layers = PALETTE[k % len(PALETTE)], [row["layer"] for row in report["layers"]]
        figure.add_trace(go.Scatter(x=layers, y=[row["cka"] for row in report["layers"]], mode="lines+markers",
                                    name=model, line={"color": colour},
                                    hovertemplate="layer %{x}: CKA %{y:.3f}<extra>" + model + "</extra>"))
        figure.add_trace(go.Scatter(x=layers, y=[row["cka_shuffled"] for row in report["layers"]], mode="lines",
                                    name=f"{model}, words shuffled (chance)", line={"color": colour, "dash": "dot"},
                                    hovertemplate="layer %{x}: chance %{y:.3f}<extra>" + model + "</extra>"))
    figure.update_layout(title=title, xaxis={"title": "LLM layer"}, yaxis={"title": "linear CKA", "range": [0, 1.05]})
    return figure


def compare_text_reading(study: Study, reports: dict[str, dict[str, Any]]) -> str:
    """One sentence, from the numbers: how far above chance the control reads at its best layer, and the speech
    model at that layer and at its own best."""
    speech, control = study.speech.name, study.control
    if control is None or control.name not in reports or speech not in reports:
        return f"this study has no control's comparison beside {speech}, so the comparison has no reference."
    best_c, best_s = _best(reports[control.name]), _best(reports[speech])
    if best_c is None or best_s is None:
        return f"the comparison has no CKA for {speech if best_s is None else control.name}."
    layer, cka_c, chance_c = best_c
    at_layer = {row[0]: row for row in _above_chance(reports[speech])}.get(layer)
    text = (f"the control {control.name} reads CKA {number(cka_c)} at layer {layer} (chance {number(chance_c)}), "
            f"{speech} reads {number(at_layer[1]) if at_layer else 'n/a'} there and {number(best_s[1])} at its "
            f"best layer {best_s[0]} (chance {number(best_s[2])})")
    here = (at_layer[1] - at_layer[2]) if at_layer else 0.0
    said = verdict(cka_c - chance_c, here, reads=SEES, same=SAME,
                   seen="the comparison sees the transcript where a cascade puts it",
                   unseen=f"the comparison reads little even where the transcript is by construction, so {speech}'s "
                   "reading says little", alike=f", and at that layer {speech}'s audio rows look as much like its "
                   "transcript's states", gap=f", and at that layer {speech}'s audio rows look {{gap}} less like its "
                   "transcript's states above chance")
    return f"{text}: {said}."


def compare_text_section(study: Study, figures: Figures) -> str:
    paths = {s.name: s.root / "compare_text" / "compare_text.json" for s in study.subjects}
    reports = {model: json.loads(path.read_text(encoding="utf-8")) for model, path in paths.items()
               if path.is_file()}
    models = list(reports)
    by_layer: dict[int, dict[str, dict[str, Any]]] = {}
    for model, report in reports.items():
        for row in report["layers"]:
            by_layer.setdefault(row["layer"], {})[model] = row
    rows = [[layer] + [cell for m in models for cell in (
        (entries[m]["cka"], entries[m]["cka_shuffled"], entries[m]["probe"]["text_to_audio"]) if m in entries
        else ("", "", ""))] for layer, entries in sorted(by_layer.items())]
    header = ["layer"] + [f"{m}: {what}" for m in models for what in ("CKA", "chance", "probe text→audio R²")]
    counts = "; ".join(f"{html.escape(m)}: {r['n_words']} words of {r['n_items']} items of "
                       f"{html.escape(str(r['data']).rsplit('/', 1)[-1])}" for m, r in reports.items())
    return ("<h2 id='compare_text'>Speech vs text inside one LLM</h2><p>For every word of the first analysis set, "
            "the mean of the LLM's states at the word's audio positions against the mean of the same LLM's states "
            "at the word's tokens when it reads the transcript in the same task prompt: linear CKA by layer, beside "
            "the CKA of randomly re-paired words (chance), and a bag-of-characters probe trained on the text side "
            "and tested on the audio side. A cascade in disguise reads high; a model whose audio rows hold "
            f"something else reads near chance. ({counts}.)</p>"
            + figures(cka_layers_figure(reports)) + reading(compare_text_reading(study, reports))
            + table(header, rows) + source(study.out, [p for p in paths.values() if p.is_file()], "compare_text"))
