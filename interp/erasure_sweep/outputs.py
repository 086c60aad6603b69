"""A sweep's results: one row per (set, task, concept, layer set), the text table, the figure and the three files.

Rows: set, task, concept, the rank its spec asks (None for an unranked concept: ``text@8`` → 8), layers, mean
fitted rank per layer, share of d, share of the raw variance removed, accuracy with 95 % bootstrap CI, Δ vs clean
with paired bootstrap CI, chance level. The figure has, per (task, set), accuracy by concept and layer set (bars,
unranked concepts) and, when the sweep has ranked concepts, accuracy vs rank (one line per family and layer set,
CIs as error bars): where the random controls stop hurting, beside text. Files, each written atomically:
RUN/sweep.csv, RUN/sweep.json (rows plus config and provenance) and RUN/sweep.html (plotly, self-contained).
"""

from __future__ import annotations

import csv
import html
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from interp.behavior import Prediction, read_predictions
from interp.erasure import Eraser
from interp.erasure_sweep.plan import CONCEPT_ORDER, SweepError, SweepPlan
from interp.erasure_sweep.specs import family_of
from interp.io import write_atomic, write_text_atomic
from interp.provenance import provenance
from interp.stats import accuracy_with_ci, bootstrap_ci

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["ErasedRun", "COLUMNS", "rows_for_set", "header_line", "format_table", "sweep_figure", "write_outputs"]

COLUMNS = ("set", "task", "concept", "rank", "layers", "sites", "rank_mean", "share_of_d", "variance_removed",
           "accuracy", "ci_low", "ci_high", "delta", "delta_low", "delta_high", "clean_accuracy", "chance", "n_items",
           "fit_items", "eval_items")


@dataclass(frozen=True)
class ErasedRun:
    """One erased system's predictions on a set: the concept (spec name), the layer set's label, its eraser, the
    file, and the rank the spec asks (None: unranked)."""

    concept: str
    label: str
    eraser: Eraser
    path: Path
    rank: int | None = None


def _records_by_task(path: Path) -> dict[str, dict[str, Prediction]]:
    out: dict[str, dict[str, Prediction]] = defaultdict(dict)
    for record in read_predictions(path):
        out[record.task][record.id] = record
    return out


def _mean_or_none(values: list[float | None]) -> float | None:
    """The mean over sites; None where an eraser file predates the measure."""
    return None if any(v is None for v in values) else float(np.mean(values))


def _erased_row(run: ErasedRun, task: str, ids: list[str], clean_correct: np.ndarray, seed: int) -> dict[str, Any]:
    records = _records_by_task(run.path).get(task, {})
    if set(records) != set(ids):
        raise SweepError(f"{run.path} does not hold the same {task} items as the clean run; delete it and rerun")
    correct = np.array([bool(records[i].correct) for i in ids])
    estimate = accuracy_with_ci(correct, seed=seed)
    delta = bootstrap_ci(lambda a, b: float(a.mean() - b.mean()), correct, clean_correct, seed=seed)
    summary = run.eraser.summary()
    return {"concept": run.concept, "rank": run.rank, "layers": run.label, "sites": len(summary),
            "rank_mean": float(np.mean([s["rank"] for s in summary])),
            "share_of_d": float(np.mean([s["share"] for s in summary])),
            "variance_removed": _mean_or_none([s["variance_removed"] for s in summary]),
            "accuracy": estimate.value, "ci_low": estimate.low, "ci_high": estimate.high,
            "delta": delta.value, "delta_low": delta.low, "delta_high": delta.high}


def rows_for_set(set_name: str, clean_path: Path, erased: list[ErasedRun], fit_items: int, eval_items: int,
                 seed: int) -> list[dict[str, Any]]:
    """Per task of the clean run: its row, then one row per erased run (accuracy, Δ vs clean, paired CIs)."""
    rows = []
    for task, clean_records in _records_by_task(clean_path).items():
        ids = list(clean_records)
        clean_correct = np.array([bool(clean_records[i].correct) for i in ids])
        choices = [clean_records[i].n_choices or 0 for i in ids]
        chance = float(np.mean([1.0 / k for k in choices])) if all(choices) else None
        base = accuracy_with_ci(clean_correct, seed=seed)
        common = {"set": set_name, "task": task, "n_items": len(ids), "fit_items": fit_items,
                  "eval_items": eval_items, "chance": chance, "clean_accuracy": base.value}
        rows.append({**common, "concept": "none (clean)", "rank": None, "layers": "", "sites": 0, "rank_mean": 0.0,
                     "share_of_d": 0.0, "variance_removed": 0.0, "accuracy": base.value, "ci_low": base.low,
                     "ci_high": base.high, "delta": 0.0, "delta_low": 0.0, "delta_high": 0.0})
        rows.extend({**common, **_erased_row(run, task, ids, clean_correct, seed)} for run in erased)
    return rows


def header_line(plan: SweepPlan) -> str:
    """How the numbers were made, in one line (printed above the table and under the figure's title)."""
    if plan.split == "half":
        how = "erasers fitted on one half of the items (seeded, stratified by task and label), accuracy on the other"
    else:
        how = "erasers fitted on ALL items and accuracy measured on the SAME items (--split none)"
    return (f"{plan.model}, erasure at {plan.positions} positions; {how}; 95% bootstrap CIs over items "
            f"(Δ: paired), seed {plan.seed}")


def format_table(rows: list[dict[str, Any]]) -> str:
    def num(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    lines = [f"{'set':<14s} {'task':<10s} {'concept':<13s} {'rank':>4s} {'layers':<8s} {'rank/layer':>10s} "
             f"{'share d':>8s} "
             f"{'var.':>6s} {'accuracy [95% CI]':>22s} {'Δ vs clean [95% CI]':>25s} {'chance':>6s} {'n':>4s}"]
    for r in rows:
        acc = f"{r['accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        delta = "" if not r["layers"] else f"{r['delta']:+.3f} [{r['delta_low']:+.3f}, {r['delta_high']:+.3f}]"
        lines.append(f"{r['set'][:14]:<14s} {r['task'][:10]:<10s} {r['concept']:<13s} "
                     f"{num(r.get('rank'), 'd'):>4s} {r['layers']:<8s} "
                     f"{r['rank_mean']:10.1f} {r['share_of_d']:8.2%} {num(r['variance_removed'], '.1%'):>6s} "
                     f"{acc:>22s} {delta:>25s} "
                     f"{num(r['chance'], '.3f'):>6s} {r['n_items']:4d}")
    return "\n".join(lines)


def _bars(figure: go.Figure, mine: list[dict[str, Any]], labels: list[str], *, panel: int, row: int,
          col: int) -> None:
    """One bar per (concept, layer set) of a panel, with its CI as error bars."""
    import plotly.graph_objects as go

    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    concepts = [c for c in CONCEPT_ORDER if any(r["concept"] == c for r in mine)]
    for k, label in enumerate(labels):
        by_concept = {r["concept"]: r for r in mine if r["layers"] == label}
        ys = [by_concept[c]["accuracy"] if c in by_concept else None for c in concepts]
        plus = [by_concept[c]["ci_high"] - by_concept[c]["accuracy"] if c in by_concept else None for c in concepts]
        minus = [by_concept[c]["accuracy"] - by_concept[c]["ci_low"] if c in by_concept else None for c in concepts]
        text = [f"rank/layer {by_concept[c]['rank_mean']:.1f}" if c in by_concept else "" for c in concepts]
        figure.add_trace(go.Bar(x=concepts, y=ys, name=f"layers {label}", legendgroup=label,
                                marker_color=palette[k % len(palette)], showlegend=panel == 0,
                                error_y={"type": "data", "symmetric": False, "array": plus, "arrayminus": minus},
                                hovertext=text, hovertemplate="%{x}, layers " + label +
                                ": accuracy %{y:.3f}<br>%{hovertext}<extra></extra>"), row=row, col=col)


def _rank_lines(figure: go.Figure, mine: list[dict[str, Any]], labels: list[str], *, shown: set[str], row: int,
                col: int) -> None:
    """Accuracy vs the rank asked, one line per (family, layer set) of the ranked rows, CIs as error bars; x is the
    spec's rank (random-var@K: the rank of the text eraser whose variance it matches; its own rank is in the
    hover), so each rank's controls stand above the same x as text."""
    import plotly.graph_objects as go

    palette = {"text": "#1f77b4", "random": "#d62728", "random-raw": "#ff7f0e", "random-var": "#2ca02c"}
    dashes = ["solid", "dash", "dot", "dashdot", "longdash"]
    ranked = [r for r in mine if r.get("rank") is not None]
    families = [f for f in CONCEPT_ORDER if any(family_of(r["concept"]) == f for r in ranked)]
    for family in families:
        for k, label in enumerate(labels):
            points = sorted((r for r in ranked if family_of(r["concept"]) == family and r["layers"] == label),
                            key=lambda r: r["rank"])
            if not points:
                continue
            name = f"{family}, layers {label}"
            hover = [f"{r['concept']}, layers {label}: accuracy {r['accuracy']:.3f} [{r['ci_low']:.3f}, "
                     f"{r['ci_high']:.3f}]<br>rank/layer {r['rank_mean']:.1f}, variance removed "
                     + ("-" if r["variance_removed"] is None else f"{r['variance_removed']:.1%}") for r in points]
            figure.add_trace(go.Scatter(
                x=[r["rank"] for r in points], y=[r["accuracy"] for r in points], mode="lines+markers", name=name,
                legendgroup=name, showlegend=name not in shown, hovertext=hover,
                hovertemplate="%{hovertext}<extra></extra>",
                line={"color": palette.get(family, "#7f7f7f"), "dash": dashes[k % len(dashes)]},
                error_y={"type": "data", "symmetric": False,
                         "array": [r["ci_high"] - r["accuracy"] for r in points],
                         "arrayminus": [r["accuracy"] - r["ci_low"] for r in points]}), row=row, col=col)
            shown.add(name)
    ranks = sorted({r["rank"] for r in ranked})
    figure.update_xaxes(type="log", tickvals=ranks, ticktext=[str(r) for r in ranks], row=row, col=col,
                        title_text="rank asked (random-var: matches text@rank's variance)")


def _panels(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(task, set, kind) of every panel: ``concepts`` (bars) unless the (task, set) has ranked rows only, and
    ``ranks`` (lines) when it has any."""
    panels = []
    for task, name in dict.fromkeys((r["task"], r["set"]) for r in rows):
        erased = [r for r in rows if r["task"] == task and r["set"] == name and r["layers"]]
        ranked = [r for r in erased if r.get("rank") is not None]
        if len(ranked) < len(erased) or not erased:
            panels.append((task, name, "concepts"))
        if ranked:
            panels.append((task, name, "ranks"))
    return panels


def sweep_figure(rows: list[dict[str, Any]], header: str) -> go.Figure:
    """Per (task, set): accuracy by concept per layer set (bars) and, for ranked concepts, accuracy vs rank
    (lines), each with clean and chance lines; `header` under the title says how the numbers were made."""
    from plotly.subplots import make_subplots

    panels = _panels(rows)
    columns = min(2, len(panels))
    n_rows = math.ceil(len(panels) / columns)
    titles = [f"{task} ({name})" + (": accuracy vs rank" if kind == "ranks" else "") for task, name, kind in panels]
    figure = make_subplots(rows=n_rows, cols=columns, subplot_titles=titles,
                           vertical_spacing=0.25 / max(1, n_rows - 1) if n_rows > 1 else 0.1)
    labels = list(dict.fromkeys(r["layers"] for r in rows if r["layers"]))
    shown: set[str] = set()
    for index, (task, name, kind) in enumerate(panels):
        row, col = index // columns + 1, index % columns + 1
        mine = [r for r in rows if r["task"] == task and r["set"] == name]
        if kind == "ranks":
            _rank_lines(figure, mine, labels, shown=shown, row=row, col=col)
        else:
            _bars(figure, [r for r in mine if r.get("rank") is None], labels, panel=index, row=row, col=col)
        clean = next(r for r in mine if not r["layers"])
        figure.add_hline(y=clean["accuracy"], line_dash="dash", line_color="black", row=row, col=col,
                         annotation_text=f"clean {clean['accuracy']:.2f}", annotation_position="top left")
        if clean["chance"] is not None:
            figure.add_hline(y=clean["chance"], line_dash="dot", line_color="gray", row=row, col=col,
                             annotation_text=f"chance {clean['chance']:.2f}", annotation_position="bottom left")
        figure.update_yaxes(range=[0, 1.05], title_text="accuracy", row=row, col=col)
    figure.update_layout(barmode="group", height=380 * n_rows + 80,
                         title={"text": "Accuracy under LEACE erasure, by concept, layer set and rank<br><sup>"
                                + html.escape(header) + "</sup>"})
    return figure


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def _page(rows: list[dict[str, Any]], header: str, document: dict[str, Any]) -> str:
    """sweep.html: the figure (plotly.js inlined), the header line, the table and the provenance."""
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(r[k]))}</td>" for k in COLUMNS) + "</tr>" for r in rows)
    table = ("<table border='1' cellspacing='0' cellpadding='3' style='font:12px monospace;border-collapse:collapse'>"
             "<tr>" + "".join(f"<th>{k}</th>" for k in COLUMNS) + "</tr>" + cells + "</table>")
    body = (sweep_figure(rows, header).to_html(include_plotlyjs=True, full_html=False)
            + f"<p>{html.escape(header)}</p>" + table + "<h3>provenance</h3><pre>"
            + html.escape(json.dumps(document["provenance"], indent=1)) + "</pre>")
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>erasure sweep</title></head>"
            f"<body>{body}</body></html>")


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: r[k] for k in COLUMNS} for r in rows)


def write_outputs(rows: list[dict[str, Any]], plan: SweepPlan, sets: dict[str, Any]) -> None:
    """RUN/sweep.csv, RUN/sweep.json (rows, `sets`: per set its items and halves, config, provenance) and
    RUN/sweep.html, each atomically."""
    config = {"model": plan.model, "sets": [str(s) for s in plan.sets], "concepts": plan.concepts, "ranks": plan.ranks,
              "layer_sets": dict(plan.layer_map), "positions": plan.positions, "limit": plan.limit,
              "split": plan.split, "random_match": plan.random_match, "text_classes": plan.text_classes,
              "dtype": plan.dtype, "cache_dir": str(plan.cache_dir), "seed": plan.seed}
    header = header_line(plan)
    document = {"header": header, "columns": list(COLUMNS), "rows": rows, "sets": sets,
                "provenance": provenance(command=plan.command, config=config, seed=plan.seed)}
    write_atomic(plan.out / "sweep.csv", lambda tmp: _write_csv(tmp, rows))
    write_text_atomic(plan.out / "sweep.json", json.dumps(document, indent=1, allow_nan=False) + "\n")
    write_text_atomic(plan.out / "sweep.html", _page(rows, header, document))
