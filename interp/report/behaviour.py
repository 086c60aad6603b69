"""The report's behaviour section: accuracy, κ, error overlap, McNemar + BH and noise (the stats stage), then the
speech model between its two references: the control (how closely a cascade by construction agrees with the
cascade) and the ablations (how much of its answers survive without its audio)."""

from __future__ import annotations

import json
from typing import Any

import plotly.graph_objects as go

from interp.report.common import Figures, Study, interval, number, paper, reading, source, table
from interp.report.figures import PALETTE, accuracy_vs_snr, error_overlap_bars, grid, kappa_heatmap, note

__all__ = ["behaviour_section", "behaviour_reading", "ablation_figure", "kappa_with"]

AGREES = 0.6
"""κ from which the readings call two systems' answers close (Landis & Koch's "substantial")."""
SAME = 0.1
"""A gap in κ or accuracy the readings treat as no difference, at these set sizes."""
NONE_LEFT = 0.2
"""κ with its own clean answers under which an ablated system is said to keep nothing of them."""


def kappa_with(entry: dict[str, Any], a: str | None, b: str | None) -> dict[str, Any] | None:
    """The κ record of the pair (a, b) in one set's statistics, None where they were not compared."""
    return next((k for k in entry["kappa"] if {k["a"], k["b"]} == {a, b}), None)


def _ablated(stats: dict[str, Any], system: str, name: str) -> dict[str, dict[str, Any]]:
    return {row["ablation"]: row for row in stats.get("ablations", []) if row["system"] == system
            and row["set"] == name}


def _value(record: dict[str, Any] | None, key: str = "value") -> float | None:
    return None if record is None else record.get(key)


def _kappa_table(study: Study, stats: dict[str, Any]) -> str:
    """κ of every system with the cascade, set by set (with its BH q): the comparison the study is about."""
    cascade = study.cascade
    sets = [(name, entry) for name, entry in stats["sets"].items() if entry["kappa"]]
    systems = [s for s in stats["systems"] if s != cascade
               and any(kappa_with(entry, s, cascade) for _, entry in sets)]
    if not systems:
        return ""
    rows = []
    for name, entry in sets:
        tests = {frozenset((t["a"], t["b"])): t for t in entry["mcnemar"]}
        row: list[Any] = [name]
        for system in systems:
            kappa = kappa_with(entry, system, cascade)
            q = tests.get(frozenset((system, cascade)), {}).get("q_value")
            row.append("" if kappa is None else f"{kappa['value']:.2f} [{kappa['low']:.2f}, {kappa['high']:.2f}]"
                       + ("" if q is None else f", q {q:.3f}"))
        rows.append(row)
    return (f"<h3>κ with {cascade}</h3><p>Each system's agreement with the matched cascade [95% CI], with the "
            "Benjamini-Hochberg q of its McNemar test: the controls and the other cascades set the scale "
            "(a cascade by construction, a weaker ASR, another LLM).</p>" + table(["set", *systems], rows))


def ablation_figure(stats: dict[str, Any], sets: list[str], systems: list[str], ablations: list[str]) -> go.Figure:
    """Accuracy clean and under each ablation, one bar group per system, one panel per analysis set."""
    title = "Accuracy with the audio and without it (ablations), 95% bootstrap CI"
    if not sets or not ablations:
        return note(go.Figure(layout={"title": title}), "no ablation in this study")
    figure, columns = grid(sets)
    for index, name in enumerate(sets):
        entry = stats["sets"].get(name, {"accuracy": {}})
        for k, condition in enumerate(["clean", *ablations]):
            if condition == "clean":
                values = [entry["accuracy"].get(s) or {} for s in systems]
                ys, lows, highs = ([v.get(key) for v in values] for key in ("value", "low", "high"))
            else:
                rows = [_ablated(stats, s, name).get(condition, {}) for s in systems]
                ys = [r.get("accuracy") for r in rows]
                lows, highs = ([(r.get("accuracy_ci") or [None, None])[i] for r in rows] for i in (0, 1))
            figure.add_trace(go.Bar(
                x=systems, y=ys, name=condition, legendgroup=condition, showlegend=index == 0,
                marker={"color": PALETTE[k % len(PALETTE)]},
                error_y={"type": "data", "symmetric": False,
                         "array": [None if y is None or h is None else h - y for y, h in zip(ys, highs)],
                         "arrayminus": [None if y is None or lo is None else y - lo for y, lo in zip(ys, lows)]},
                hovertemplate="%{x}: %{y:.3f}<extra>" + f"{name}, {condition}</extra>"),
                row=index // columns + 1, col=index % columns + 1)
        figure.update_yaxes(range=[0, 1.05], title_text="accuracy", row=index // columns + 1,
                            col=index % columns + 1)
    figure.update_layout(title=title, barmode="group", height=max(380, 380 * ((len(sets) + columns - 1) // columns)))
    return figure


def behaviour_reading(study: Study, stats: dict[str, Any]) -> str:
    """One sentence, from the numbers: κ with the cascade of the speech model against the control's, and how much
    of the speech model's clean answers survives each ablation."""
    speech, control, cascade = study.speech.name, study.control, study.cascade
    sets = [n for n in study.plan.get("analysis_sets", []) if n in stats["sets"]] or list(stats["sets"])
    if control is None or cascade is None or not sets:
        return f"this study has no control beside {speech}, so κ has no reference for what a cascade reaches."
    name = sets[0]
    k_s = _value(kappa_with(stats["sets"][name], speech, cascade))
    k_c = _value(kappa_with(stats["sets"][name], control.name, cascade))
    text = (f"on {name}, κ with {cascade} is {number(k_c)} for the control {control.name} and {number(k_s)} for "
            f"{speech}")
    mine, theirs = _ablated(stats, speech, name), _ablated(stats, control.name, name)
    under = [f"under {a} {speech}'s κ with its own clean answers is {number(_value(mine.get(a), 'kappa_with_clean'))}"
             f" ({control.name}: {number(_value(theirs.get(a), 'kappa_with_clean'))})" for a in study.ablations]
    text += "".join(f", {part}" for part in under)
    if k_c is None or k_s is None:
        return text + ": one of the two was not compared with the cascade on this set."
    verdict = ("κ recognises a cascade here" if k_c >= AGREES else
               "even a cascade by construction agrees only loosely here, so κ is a blunt instrument on this set")
    verdict += (f"; {speech} agrees with the cascade about as closely as the control does" if k_s >= k_c - SAME
                else f"; {speech} stays {k_c - k_s:.2f} below it")
    kept = [v for a in study.ablations if (v := _value(mine.get(a), "kappa_with_clean")) is not None]
    if kept:
        verdict += (f", and without its own audio its answers keep nothing of their clean ones (κ ≤ {max(kept):.2f})"
                    if max(kept) < NONE_LEFT else
                    f", and without its own audio its answers keep κ up to {max(kept):.2f} with their clean ones "
                    "(what the prompt alone decides)")
    return f"{text}: {verdict}."


def _references(study: Study, stats: dict[str, Any], figures: Figures) -> str:
    """The speech model, the controls and the cascade on the analysis sets, clean and under each ablation."""
    systems = list(dict.fromkeys(s for s in [study.speech.name, *(c.name for c in study.controls), study.cascade]
                                 if s))
    sets = [n for n in study.plan.get("analysis_sets", []) if n in stats["sets"]]
    rows = []
    for name in sets:
        entry = stats["sets"][name]
        for system in systems:
            row: list[Any] = [name, system, interval(entry["accuracy"].get(system)),
                              number(_value(kappa_with(entry, system, study.cascade)))]
            for ablation in study.ablations:
                ablated = _ablated(stats, system, name).get(ablation, {})
                ci = ablated.get("accuracy_ci") or [None, None]
                row += [interval({"value": ablated.get("accuracy"), "low": ci[0], "high": ci[1]}),
                        number(ablated.get("kappa_with_clean"))]
            rows.append(row)
    header = ["set", "system", "clean accuracy [95% CI]", f"κ with {study.cascade}"]
    for ablation in study.ablations:
        header += [f"{ablation}: accuracy", f"{ablation}: κ with clean"]
    return ("<h3 id='behaviour-references'>Between its references</h3><p>The speech model beside the control (a "
            "cascade by construction: how closely a cascade agrees with the cascade) and under each audio ablation "
            "(what answers look like when the audio is not used): accuracy, κ with the cascade and κ of the "
            "ablated answers with the same system's clean ones.</p>"
            + figures(ablation_figure(stats, sets, systems, study.ablations)) + reading(behaviour_reading(study, stats))
            + table(header, rows))


def behaviour_section(study: Study, figures: Figures) -> str:
    out = study.out
    path = out / "behave" / "stats.json"
    stats = json.loads(path.read_text(encoding="utf-8"))
    systems = list(dict.fromkeys(s for entry in stats["sets"].values() for s in entry["systems"]))
    rows = [[name, entry["task"], entry["n_items"]] + [interval(entry["accuracy"].get(s)) for s in systems]
            for name, entry in stats["sets"].items()]
    pairs = []
    for name, entry in stats["sets"].items():
        tests = {(t["a"], t["b"]): t for t in entry["mcnemar"]}
        overlaps = {(o["a"], o["b"]): o for o in entry["error_overlap"]}
        for kappa in entry["kappa"]:
            key = (kappa["a"], kappa["b"])
            test, overlap = tests.get(key, {}), overlaps.get(key)
            pairs.append([name, f"{key[0]} / {key[1]}", interval(kappa),
                          None if not overlap or overlap["value"] is None else
                          f"{overlap['value']:.2f} (chance {overlap['chance']:.2f})",
                          test.get("p_value"), test.get("q_value")])
    return ("<h2 id='behaviour'>Behaviour: end-to-end vs matched cascade</h2>"
            "<p>Every system answers every item (forced choice by log-likelihood). Accuracy with 95% bootstrap "
            "intervals over items; agreement by Cohen's κ with a paired bootstrap interval; McNemar p and "
            "Benjamini-Hochberg q over all tests of the run (the ablated runs are controls, outside that family).</p>"
            + _references(study, stats, figures) + _kappa_table(study, stats)
            + "<h3>Every system, every set</h3>" + table(["set", "task", "items"] + systems, rows)
            + table(["set", "pair", "κ [95% CI]", "error overlap", "McNemar p", "BH q"], pairs)
            + figures(kappa_heatmap(stats)) + figures(error_overlap_bars(stats)) + figures(accuracy_vs_snr(stats))
            + paper("behaviour") + source(out, [path], "stats"))
