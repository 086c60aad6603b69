"""Probe curves by layer: one line per probe with its bootstrap band, audio encoder and LLM side by side.

The paper's probe figure reads as "where along the model does the text appear, and is the acoustics
kept": score against site in the order audio flows. Audio-encoder sites and LLM sites (projector on) are
separate panels sharing the y axis, since their layer numbers are not one scale.
"""

from __future__ import annotations

import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from interp.sites import site_group, sort_sites
from probes.sweep import PROBES, ProbeReport

__all__ = ["probe_figure"]

_LABELS = {"energy": "energy R²", "pitch": "pitch R²", "ctc": "CTC 1 − CER", "boc": "bag-of-characters R²"}
_GROUPS = ("audio encoder", "LLM")


def _rgba(colour: str, alpha: float) -> str:
    red, green, blue = plotly.colors.hex_to_rgb(colour)
    return f"rgba({red}, {green}, {blue}, {alpha})"


def probe_figure(report: ProbeReport) -> go.Figure:
    """Held-out score against site for every probe of `report`, with its 95 % interval as a shaded band.

    x: site names in layer order (categorical); y: R² or 1 − CER. A score that could not be computed
    (NaN) leaves a gap in its line.
    """
    sites = sort_sites(report.sites)
    groups = [group for group in _GROUPS if any(site_group(site) == group for site in sites)]
    widths = [sum(site_group(site) == group for site in sites) for group in groups]
    figure = make_subplots(rows=1, cols=len(groups), shared_yaxes=True, subplot_titles=groups,
                           column_widths=[w / sum(widths) for w in widths], horizontal_spacing=0.04)
    palette = plotly.colors.qualitative.Plotly
    for number, probe in enumerate(p for p in PROBES if p in report.probes):
        colour = palette[number % len(palette)]
        for column, group in enumerate(groups, start=1):
            entries = [report.score(site, probe) for site in sites if site_group(site) == group]
            x = [entry.site for entry in entries]
            figure.add_trace(go.Scatter(
                x=x + x[::-1], y=[e.high for e in entries] + [e.low for e in entries][::-1], fill="toself",
                fillcolor=_rgba(colour, 0.18), line={"width": 0}, hoverinfo="skip", showlegend=False,
                legendgroup=probe, name=f"{_LABELS[probe]} 95% CI"), row=1, col=column)
            figure.add_trace(go.Scatter(
                x=x, y=[entry.score for entry in entries], mode="lines+markers", name=_LABELS[probe],
                line={"color": colour}, marker={"symbol": "circle" if group == "LLM" else "square"},
                legendgroup=probe, showlegend=column == 1,
                customdata=[[entry.low, entry.high, entry.n_items] for entry in entries],
                hovertemplate="%{x}<br>%{y:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}]"
                              "<br>%{customdata[2]} held-out items<extra>" + _LABELS[probe] + "</extra>"),
                row=1, col=column)
    figure.update_xaxes(title_text="site", categoryorder="array", categoryarray=sites)
    figure.update_yaxes(title_text="held-out score (R² or 1 − CER)", row=1, col=1)
    figure.update_layout(title=f"Probes by layer: {report.model}", template="plotly_white",
                         legend={"orientation": "h", "y": -0.25}, hovermode="closest")
    return figure
