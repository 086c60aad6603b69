"""The figure of `interp compare-text`: CKA and the probes' R² by layer, drawn from the results JSON alone."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["compare_text_figure"]

_PROBES = {"text_to_text": ("text → text (within)", "#1f77b4", "dot"),
           "audio_to_audio": ("audio → audio (within)", "#2ca02c", "dot"),
           "text_to_audio": ("text → audio (cross-modal)", "#d62728", "solid"),
           "text_to_audio_centred": ("text → audio, centred", "#ff7f0e", "dash")}


def compare_text_figure(report: dict[str, Any]) -> go.Figure:
    """Two panels sharing the layer axis: linear CKA between word-aligned audio and text states, and the
    bag-of-characters probes' held-out R² (within each modality, and trained on text, tested on audio)."""
    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                           subplot_titles=("linear CKA, audio vs text word states",
                                           "bag-of-characters probe, held-out R²"))
    layers = [row["layer"] for row in report["layers"]]
    figure.add_trace(go.Scatter(x=layers, y=[row["cka"] for row in report["layers"]], mode="lines+markers",
                                name="CKA", line={"color": "#9467bd"},
                                hovertemplate="layer %{x}: CKA %{y:.3f}<extra></extra>"), row=1, col=1)
    figure.add_trace(go.Scatter(x=layers, y=[row.get("cka_shuffled") for row in report["layers"]],
                                mode="lines", name="CKA, words shuffled (chance)", line={"color": "#7f7f7f",
                                                                                          "dash": "dot"},
                                hovertemplate="layer %{x}: shuffled CKA %{y:.3f}<extra></extra>"), row=1, col=1)
    for key, (label, colour, dash) in _PROBES.items():
        figure.add_trace(go.Scatter(x=layers, y=[row["probe"][key] for row in report["layers"]],
                                    mode="lines+markers", name=label, line={"color": colour, "dash": dash},
                                    hovertemplate="layer %{x}: R² %{y:.3f}<extra>" + label + "</extra>"),
                         row=2, col=1)
    figure.update_yaxes(title_text="CKA", range=[0, 1], row=1, col=1)
    figure.update_yaxes(title_text="R²", row=2, col=1)
    figure.update_xaxes(title_text="LLM layer", dtick=1 if len(layers) <= 32 else None, row=2, col=1)
    figure.update_layout(title=f"Speech vs text inside {report['model']}'s LLM ({report['text_llm']}): "
                               f"{report['n_words']} words of {report['n_items']} items",
                         height=700)
    return figure
