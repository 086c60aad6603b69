"""The report's logit-lens section: bag-of-tokens precision by layer and the implicit cascade, for the speech model
against its control (whose audio rows are the transcript's own embeddings: text where the lens should find it)."""

from __future__ import annotations

import html
import json
from typing import Any

import plotly.graph_objects as go

from interp.report.common import Figures, Study, interval, number, paper, reading, source, table, verdict
from interp.report.figures import PALETTE, note

__all__ = ["lens_section", "lens_reading", "lens_layers_figure"]

READS = 0.5
"""Bag-of-tokens precision from which the readings say the lens sees the transcript's words."""
SAME = 0.1
"""A gap in precision the readings treat as none."""


def _best(report: dict[str, Any]) -> tuple[int, float] | None:
    scored = [(e["layer"], e["precision"]["value"]) for e in report["layers"]
              if e.get("precision") and e["precision"].get("value") is not None]
    return max(scored, key=lambda p: p[1]) if scored else None


def lens_layers_figure(name: str, reports: dict[str, dict[str, Any]]) -> go.Figure:
    """Precision by layer on the set `name`, one line per model with its 95% CI (`reports`: model → lens JSON)."""
    title = f"Logit lens on {name}: bag-of-tokens precision by layer, the speech model against its control"
    if not reports:
        return note(go.Figure(layout={"title": title}), "no lens result")
    figure = go.Figure()
    for k, (model, report) in enumerate(reports.items()):
        layers = [e for e in report["layers"] if e.get("precision")]
        ys = [e["precision"]["value"] for e in layers]
        figure.add_trace(go.Scatter(
            x=[e["layer"] for e in layers], y=ys, mode="lines+markers", name=model,
            line={"color": PALETTE[k % len(PALETTE)]},
            error_y={"type": "data", "symmetric": False,
                     "array": [e["precision"]["high"] - e["precision"]["value"] for e in layers],
                     "arrayminus": [e["precision"]["value"] - e["precision"]["low"] for e in layers]},
            hovertemplate="layer %{x}: %{y:.3f}<extra>" + model + "</extra>"))
    figure.update_layout(title=title, xaxis={"title": "layer"}, yaxis={"title": "precision", "range": [0, 1.05]})
    return figure


def lens_reading(study: Study, name: str, reports: dict[str, dict[str, Any]]) -> str:
    """One sentence, from the numbers: the lens's best precision in the control and in the speech model, and their
    implicit cascades' accuracy."""
    speech, control = study.speech.name, study.control
    if control is None or control.name not in reports or speech not in reports:
        return f"this study has no control's lens beside {speech} on {name}, so the lens has no reference."
    best_s, best_c = _best(reports[speech]), _best(reports[control.name])
    if best_s is None or best_c is None:
        return f"the lens has no precision for {speech if best_s is None else control.name} on {name}."
    text = (f"on {name} the lens reads {number(best_c[1])} at the control {control.name}'s best layer "
            f"({best_c[0]}) and {number(best_s[1])} at {speech}'s ({best_s[0]})")
    said = verdict(best_c[1], best_s[1], reads=READS, same=SAME, seen="the lens can see text where it is",
                   unseen=f"the lens reads little even where the text is by construction, so {speech}'s reading "
                   "says little", alike=f", and {speech}'s audio rows spell about as much of it",
                   gap=f", and {speech}'s audio rows spell {{gap}} less of it")
    implicit = {model: (r.get("implicit_cascade") or {}).get("accuracy") for model, r in reports.items()}
    if implicit.get(speech) is not None and implicit.get(control.name) is not None:
        said += (f" (the implicit cascades, reading that text, answer with accuracy "
                    f"{number(implicit[control.name])} and {number(implicit[speech])})")
    return f"{text}: {said}."


def _implicit_line(name: str, model: str, implicit: dict[str, Any] | None) -> str:
    if not implicit:
        return ""
    return (f"<p>Implicit cascade of {html.escape(model)}: {html.escape(str(implicit['llm']))} reading the "
            f"layer-{implicit['layer']} lens text answers {implicit['n_items']} items of {html.escape(name)} with "
            f"accuracy {implicit['accuracy']:.3f}; its κ with the real cascade is in the behaviour section (system "
            f"{html.escape(implicit['system'])}).</p>")


def _one_set(study: Study, name: str, figures: Figures) -> tuple[str, list[Any]]:
    """The comparison figure, its reading, the speech model's own figures and the table for one set."""
    from interp.lens import precision_figure, strip_figure

    paths = {s.name: s.root / "lens" / f"{name}.json" for s in study.subjects}
    reports = {model: json.loads(path.read_text(encoding="utf-8")) for model, path in paths.items()
               if path.is_file()}
    models = list(reports)
    by_layer: dict[int, dict[str, Any]] = {}
    for model, report in reports.items():
        for entry in report["layers"]:
            by_layer.setdefault(entry["layer"], {})[model] = entry
    rows = [[layer] + [interval(entries[m]["precision"]) if m in entries else "" for m in models]
            + [interval(entries[models[0]]["recall"]) if models[0] in entries else "",
               entries.get(models[0], {}).get("n_items")] for layer, entries in sorted(by_layer.items())]
    own = reports.get(study.speech.name)
    body = (f"<h3>{html.escape(name)}</h3>" + figures(lens_layers_figure(name, reports))
            + reading(lens_reading(study, name, reports))
            + (figures(precision_figure(own)) + figures(strip_figure(own)) if own else "")
            + "".join(_implicit_line(name, m, r.get("implicit_cascade")) for m, r in reports.items())
            + table(["layer"] + [f"{m}: precision [95% CI]" for m in models]
                    + [f"{models[0]}: recall [95% CI]" if models else "recall", "items"], rows))
    return body, [path for path in paths.values() if path.is_file()]


def lens_section(study: Study, figures: Figures) -> str:
    names = sorted(path.stem for path in (study.out / "lens").glob("*.json"))
    body, paths = [], []
    for name in names:
        part, used = _one_set(study, name, figures)
        body.append(part)
        paths += used
    return ("<h2 id='lens'>Logit lens and the implicit cascade</h2><p>The model's own final RMSNorm and "
            "unembedding applied to the cached audio rows of every layer; top-1 token per row; bag-of-tokens "
            "precision against the transcript's tokens. The control's audio rows hold the transcript's own "
            "embeddings, so its curve is what the lens shows where text is.</p>" + "".join(body) + paper("lens")
            + source(study.out, paths, "lens"))
