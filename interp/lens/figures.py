"""Figures of a lens results file (interp.lens.results), with plotly: scores by layer and token strips.

Both read the results JSON, not the LensResult, so a report can draw them again from the file alone.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["precision_figure", "strip_figure"]


def precision_figure(report: dict[str, Any]) -> go.Figure:
    """Bag-of-tokens precision and recall by layer, each with its bootstrap interval as a band."""
    figure = go.Figure()
    colours = {"precision": ("#1f77b4", "rgba(31,119,180,0.2)"), "recall": ("#d62728", "rgba(214,39,40,0.15)")}
    for metric, (line, band) in colours.items():
        rows = [r for r in report["layers"] if r[metric] is not None]
        x = [r["layer"] for r in rows]
        figure.add_trace(go.Scatter(x=x + x[::-1], y=[r[metric]["high"] for r in rows]
                                    + [r[metric]["low"] for r in rows][::-1], fill="toself", fillcolor=band,
                                    line={"width": 0}, hoverinfo="skip", showlegend=False, legendgroup=metric))
        figure.add_trace(go.Scatter(x=x, y=[r[metric]["value"] for r in rows], mode="lines+markers", name=metric,
                                    legendgroup=metric, line={"color": line},
                                    customdata=[[r[metric]["low"], r[metric]["high"], r["n_items"]] for r in rows],
                                    hovertemplate="layer %{x}: %{y:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}]"
                                                  " n=%{customdata[2]}<extra>" + metric + "</extra>"))
    level = report.get("bootstrap", {}).get("level", 0.95)
    norm = "final norm applied" if report.get("norm", True) else "NO final norm"
    figure.update_layout(title=f"Logit lens at audio positions: bag-of-tokens precision / recall by layer "
                               f"({report['model']}, {norm}, {level:.0%} bootstrap CI, {report['n_items']} items)",
                         xaxis={"title": "layer", "dtick": 1 if len(report["layers"]) <= 32 else None},
                         yaxis={"title": "share of tokens", "range": [0, 1]})
    return figure


def strip_figure(report: dict[str, Any]) -> go.Figure:
    """Per strip item: rows = layers, columns = audio rows, cell text = top-1 lens token; colour = found in the
    transcript (1), not found (0), dropped by the normalisation (blank). Title of each panel: the transcript."""
    strips = report.get("strips", [])
    if not strips:
        figure = go.Figure()
        figure.add_annotation(text="no strip items", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
        return figure
    titles = [f"{s['id']}: “{s['transcript']}”" for s in strips]
    figure = make_subplots(rows=len(strips), cols=1, subplot_titles=titles, vertical_spacing=0.25 / len(strips))
    for row, strip in enumerate(strips, start=1):
        layers = sorted(strip["layers"], key=int)
        z = [[None if f is None else float(f) for f in strip["layers"][layer]["found"]] for layer in layers]
        text = [[t.replace("\n", "⏎") for t in strip["layers"][layer]["tokens"]] for layer in layers]
        x = [f"{s:.2f}s" if s is not None else str(p) for s, p in zip(strip["t_start"], strip["pos"])]
        figure.add_trace(go.Heatmap(z=z, x=list(range(len(x))), y=[f"L{layer}" for layer in layers], text=text,
                                    texttemplate="%{text}", textfont={"size": 9}, zmin=0, zmax=1,
                                    colorscale=[[0, "#f4f4f4"], [1, "#8fd18f"]], showscale=False,
                                    customdata=[x] * len(layers),
                                    hovertemplate="%{y} row %{x} (%{customdata}): %{text}<extra></extra>"),
                         row=row, col=1)
        figure.update_xaxes(title_text="audio row", row=row, col=1)
    figure.update_layout(title="Top-1 logit-lens token per audio row and layer (green: in the transcript)",
                         height=max(400, 60 + len(strips) * (40 + 22 * max(len(s["layers"]) for s in strips))),
                         width=max(900, 60 * max(len(s["pos"]) for s in strips)))
    return figure
