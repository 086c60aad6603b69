"""Plotly figures of a run's statistics (`interp stats`): each takes the stats dict
(interp.stats.run.run_statistics) and returns a plotly Figure; `write_figure` saves one as a self-contained HTML
file (plotly.js inlined, no CDN, opens offline)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from interp.io import write_atomic

__all__ = ["kappa_heatmap", "error_overlap_bars", "accuracy_vs_snr", "write_figure", "grid", "note", "PALETTE"]

_COLUMNS = 3
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def grid(titles: list[str]) -> tuple[go.Figure, int]:
    """Subplots for `titles`, three to a row; returns the figure and its number of columns."""
    columns = max(1, min(_COLUMNS, len(titles)))
    rows = max(1, math.ceil(len(titles) / columns))
    figure = make_subplots(rows=rows, cols=columns, subplot_titles=titles or None, horizontal_spacing=0.12,
                           vertical_spacing=0.18 if rows > 1 else 0.1)
    return figure, columns


def note(figure: go.Figure, text: str) -> go.Figure:
    """An empty figure that says why it is empty."""
    figure.add_annotation(text=text, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    figure.update_xaxes(visible=False)
    figure.update_yaxes(visible=False)
    return figure


def kappa_heatmap(stats: dict[str, Any]) -> go.Figure:
    """Cohen's kappa of every pair of systems, one heat map per forced-choice set; cells show kappa and its
    bootstrap interval, the diagonal is 1."""
    sets = [(name, entry) for name, entry in stats["sets"].items() if entry["kappa"]]
    figure, columns = grid([f"{name} ({entry['task']}, n={entry['n_items']})" for name, entry in sets])
    for index, (name, entry) in enumerate(sets):
        systems = entry["systems"]
        position = {system: i for i, system in enumerate(systems)}
        values = [[1.0 if i == j else None for j in systems] for i in systems]
        text = [["1" if i == j else "" for j in systems] for i in systems]
        for pair in entry["kappa"]:
            i, j = position[pair["a"]], position[pair["b"]]
            label = f"{pair['value']:.2f}<br>[{pair['low']:.2f}, {pair['high']:.2f}]"
            values[i][j] = values[j][i] = pair["value"]
            text[i][j] = text[j][i] = label
        figure.add_trace(go.Heatmap(z=values, x=systems, y=systems, text=text, texttemplate="%{text}", zmin=-1,
                                    zmax=1, colorscale="RdBu", reversescale=False, showscale=index == 0,
                                    colorbar={"title": {"text": "κ"}},
                                    hovertemplate="%{y} vs %{x}: κ %{z:.3f}<extra>" + name + "</extra>"),
                         row=index // columns + 1, col=index % columns + 1)
    figure.update_layout(title="Agreement between systems (Cohen's κ, 95% bootstrap CI)",
                         height=max(360, 360 * math.ceil(max(len(sets), 1) / columns)))
    figure.update_yaxes(autorange="reversed")
    return figure if sets else note(figure, "no forced-choice set with two or more systems")


def error_overlap_bars(stats: dict[str, Any]) -> go.Figure:
    """P(same answer | both wrong) per pair and set, with the chance level 1/(K-1) as a dashed mark."""
    figure = go.Figure()
    entries = [(name, entry) for name, entry in stats["sets"].items() if entry["error_overlap"]]
    for name, entry in entries:
        pairs = [f"{o['a']} / {o['b']}" for o in entry["error_overlap"]]
        figure.add_trace(go.Bar(
            name=name, x=pairs, y=[o["value"] for o in entry["error_overlap"]],
            text=[f"n={o['n_both_wrong']}" for o in entry["error_overlap"]], textposition="outside",
            hovertemplate="%{x}: %{y:.3f} (%{text} both wrong)<extra>" + name + "</extra>"))
        figure.add_trace(go.Scatter(
            name=f"{name} chance 1/(K-1) = {entry['error_overlap'][0]['chance']:.2f}", x=pairs,
            y=[o["chance"] for o in entry["error_overlap"]], mode="markers",
            marker={"symbol": "line-ew-open", "size": 40, "line": {"width": 2}}, showlegend=True))
    figure.update_layout(title="Conditional error overlap: P(same wrong answer | both wrong)", barmode="group",
                         yaxis={"title": "overlap", "range": [0, 1.1]}, xaxis={"title": "pair"})
    return figure if entries else note(figure, "no multi-class set (K ≥ 3) with two or more systems")


def _snr_label(snr_db: float | None) -> str:
    return "clean" if snr_db is None else f"{snr_db:g} dB"


def accuracy_vs_snr(stats: dict[str, Any]) -> go.Figure:
    """Accuracy against SNR (clean first, then falling SNR), one line per system, one panel per clean set,
    with bootstrap intervals as error bars."""
    groups = list(stats.get("snr", {}).items())
    figure, columns = grid(groups and [name for name, _ in groups])
    colours: dict[str, str] = {}
    shown: set[str] = set()
    for index, (name, table) in enumerate(groups):
        order: list[str] = []
        for row in table["rows"]:
            label = _snr_label(row["snr_db"])
            if label not in order:
                order.append(label)
        for system in dict.fromkeys(row["system"] for row in table["rows"]):
            colour = colours.setdefault(system, PALETTE[len(colours) % len(PALETTE)])
            first = system not in shown
            shown.add(system)
            rows = [row for row in table["rows"] if row["system"] == system]
            figure.add_trace(go.Scatter(
                x=[_snr_label(row["snr_db"]) for row in rows], y=[row["accuracy"] for row in rows],
                error_y={"type": "data", "symmetric": False, "array": [row["high"] - row["accuracy"] for row in rows],
                         "arrayminus": [row["accuracy"] - row["low"] for row in rows]},
                mode="lines+markers", name=system, legendgroup=system, showlegend=first,
                line={"color": colour}, hovertemplate="%{x}: %{y:.3f}<extra>" + system + "</extra>"),
                row=index // columns + 1, col=index % columns + 1)
        figure.update_xaxes(categoryorder="array", categoryarray=order, title_text="SNR",
                            row=index // columns + 1, col=index % columns + 1)
        figure.update_yaxes(range=[0, 1.05], title_text="accuracy", row=index // columns + 1, col=index % columns + 1)
    figure.update_layout(title="Accuracy under babble noise (95% bootstrap CI)",
                         height=max(380, 380 * math.ceil(max(len(groups), 1) / columns)))
    return figure if groups else note(figure, "no clean set with noisy variants in this run")


def write_figure(figure: go.Figure, path: Path) -> Path:
    """Save as a standalone HTML file (plotly.js inlined, works offline), atomically."""
    return write_atomic(Path(path), lambda tmp: figure.write_html(str(tmp), include_plotlyjs=True, full_html=True))
