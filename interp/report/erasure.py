"""The report's erasure section: the LEACE sweep of the speech model, then text erasure against the three random
controls (whitened matched rank, raw matched rank, raw matched variance) for the speech model and its control,
each with the share of raw variance it removes."""

from __future__ import annotations

import html
import json
from typing import Any

import plotly.graph_objects as go

from interp.report.common import Figures, Study, interval, number, paper, reading, source, table
from interp.report.figures import PALETTE, grid, note

__all__ = ["erasure_section", "erasure_reading", "erasure_delta_figure"]

SPECIFIC = 0.1
"""How much more text erasure must lower accuracy than the worst random control for the readings to call the
drop specific to text."""


def _family(concept: str) -> str:
    return concept.split("@", 1)[0]


def _erased(rows: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["set"] == name and r["layers"]]


def erasure_delta_figure(sets: list[str], sweeps: dict[str, list[dict[str, Any]]]) -> go.Figure:
    """Δ accuracy vs clean for every concept, one bar group per model, one panel per set (hover: variance
    removed and rank)."""
    title = "Erasure: accuracy change by concept, the speech model against its control (95% paired CI)"
    if not sets or not sweeps:
        return note(go.Figure(layout={"title": title}), "no erasure sweep")
    figure, columns = grid(sets)
    for index, name in enumerate(sets):
        for k, (model, rows) in enumerate(sweeps.items()):
            mine = _erased(rows, name)
            figure.add_trace(go.Bar(
                x=[f"{r['concept']} ({r['layers']})" for r in mine], y=[r["delta"] for r in mine], name=model,
                legendgroup=model, showlegend=index == 0, marker={"color": PALETTE[k % len(PALETTE)]},
                error_y={"type": "data", "symmetric": False, "array": [r["delta_high"] - r["delta"] for r in mine],
                         "arrayminus": [r["delta"] - r["delta_low"] for r in mine]},
                customdata=[[number(r.get("variance_removed"), ".1%"), r["rank_mean"]] for r in mine],
                hovertemplate="%{x}: Δ %{y:+.3f}, variance removed %{customdata[0]}, rank/layer %{customdata[1]:.1f}"
                              "<extra>" + f"{model}, {name}</extra>"),
                row=index // columns + 1, col=index % columns + 1)
        figure.update_yaxes(title_text="Δ accuracy", row=index // columns + 1, col=index % columns + 1)
    figure.update_layout(title=title, barmode="group", height=max(400, 400 * ((len(sets) + columns - 1) // columns)))
    return figure


def _text_and_random(rows: list[dict[str, Any]], name: str) -> tuple[dict | None, list[dict], Any]:
    """The text row of a set and its random controls at the same rank (unranked if the sweep has it, else the
    largest rank), and that rank."""
    from interp.erasure_sweep.specs import RANDOM_CONTROLS

    mine = _erased(rows, name)
    ranks = [r.get("rank") for r in mine if _family(r["concept"]) == "text"]
    if not ranks:
        return None, [], None
    rank = None if None in ranks else max(ranks)
    text = next(r for r in mine if _family(r["concept"]) == "text" and r.get("rank") == rank)
    return text, [r for r in mine if _family(r["concept"]) in RANDOM_CONTROLS and r.get("rank") == rank], rank


def erasure_reading(study: Study, sweeps: dict[str, list[dict[str, Any]]]) -> str:
    """One sentence, from the numbers: what erasing text does to the control and to the speech model, against
    the worst of the random controls at the same rank, with the variance each removes."""
    speech, control = study.speech.name, study.control
    if control is None or control.name not in sweeps or speech not in sweeps:
        return f"this study has no control's erasure sweep beside {speech}, so erasure has no reference."
    sets = [n for n in study.plan.get("analysis_sets", []) if _erased(sweeps[speech], n)] or \
        [r["set"] for r in sweeps[speech] if r["layers"]]
    name = sets[0] if sets else ""
    (text_s, random_s, rank), (text_c, random_c, _) = (_text_and_random(sweeps[m], name)
                                                       for m in (speech, control.name))
    if text_s is None or text_c is None or not random_s or not random_c:
        return f"the sweeps on {name} lack text erasure or a random control for {speech} or {control.name}."
    worst_s, worst_c = min(random_s, key=lambda r: r["delta"]), min(random_c, key=lambda r: r["delta"])
    at = "" if rank is None else f" at rank {rank}"
    text = (f"on {name}, erasing text{at} changes the control {control.name}'s accuracy by {text_c['delta']:+.2f} "
            f"and {speech}'s by {text_s['delta']:+.2f}, the random controls by at most {worst_c['delta']:+.2f} "
            f"({worst_c['concept']}) and {worst_s['delta']:+.2f} ({worst_s['concept']}); text removes "
            f"{number(text_c.get('variance_removed'), '.0%')} and {number(text_s.get('variance_removed'), '.0%')} "
            f"of the raw variance, {worst_c['concept']} {number(worst_c.get('variance_removed'), '.0%')} and "
            f"{worst_s['concept']} {number(worst_s.get('variance_removed'), '.0%')}")
    specific_c = text_c["delta"] - worst_c["delta"] <= -SPECIFIC
    verdict = ("erasure finds the text a cascade depends on" if specific_c else
               f"erasure does not tell text from random directions even in a cascade, so it cannot speak for {speech}"
               " here")
    verdict += (f", and {speech} depends on it too" if text_s["delta"] - worst_s["delta"] <= -SPECIFIC else
                f", and {speech}'s answers depend on it no more than on random directions")
    return f"{text}: {verdict}."


def _comparison_rows(sets: list[str], sweeps: dict[str, list[dict[str, Any]]]) -> list[list[Any]]:
    rows = []
    for name in sets:
        concepts = list(dict.fromkeys((r["concept"], r["layers"]) for rows in sweeps.values()
                                      for r in _erased(rows, name)))
        for concept, layers in concepts:
            row: list[Any] = [name, concept, layers]
            for model_rows in sweeps.values():
                r = next((r for r in _erased(model_rows, name) if (r["concept"], r["layers"]) == (concept, layers)),
                         None)
                row.append("" if r is None else f"{r['delta']:+.3f} [{r['delta_low']:+.3f}, {r['delta_high']:+.3f}]"
                           f" ({number(r.get('variance_removed'), '.1%')})")
            rows.append(row)
    return rows


def _own_table(document: dict[str, Any]) -> str:
    rows = [[r["set"], r["concept"], r["layers"], r["rank_mean"], f"{r['share_of_d']:.1%}",
             "-" if r.get("variance_removed") is None else f"{r['variance_removed']:.1%}",
             interval({"value": r["accuracy"], "low": r["ci_low"], "high": r["ci_high"]}),
             None if not r["layers"] else f"{r['delta']:+.3f} [{r['delta_low']:+.3f}, {r['delta_high']:+.3f}]",
             r["chance"], r["n_items"]] for r in document["rows"]]
    return table(["set", "concept", "layers", "rank/layer", "share of d", "variance removed", "accuracy [95% CI]",
                  "Δ vs clean", "chance", "items"], rows)


def erasure_section(study: Study, figures: Figures) -> str:
    from interp.erasure_sweep import sweep_figure

    paths = {s.name: s.root / "erasure" / "sweep.json" for s in study.subjects}
    documents = {m: json.loads(p.read_text(encoding="utf-8")) for m, p in paths.items() if p.is_file()}
    sweeps = {m: d["rows"] for m, d in documents.items()}
    sets = list(dict.fromkeys(r["set"] for rows in sweeps.values() for r in rows))
    own = documents.get(study.speech.name)
    return ("<h2 id='erasure'>LEACE erasure</h2><p>"
            + (html.escape(own["header"]) + ". " if own else "")
            + "Text erasure stands against three random controls: a random subspace of the text eraser's rank "
            "removed in the whitened space (random), the same in the raw space (random-raw), and the raw-space "
            "random eraser that removes at least as much raw variance as text does (random-var). The control's "
            "sweep shows what erasure does to a model that is a cascade by construction.</p>"
            + figures(erasure_delta_figure(sets, sweeps)) + reading(erasure_reading(study, sweeps))
            + table(["set", "concept", "layers"] + [f"{m}: Δ [95% CI] (variance removed)" for m in sweeps],
                    _comparison_rows(sets, sweeps))
            + (figures(sweep_figure(own["rows"], own["header"])) + _own_table(own) if own else "")
            + paper("erasure") + source(study.out, [p for p in paths.values() if p.is_file()], "erasure"))
