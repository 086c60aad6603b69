"""Plotly figures of a run's statistics, and the study's self-contained HTML report.

The figure functions take the stats dict (interp.stats.run.run_statistics) and return a plotly Figure;
`write_figure` saves one as a self-contained HTML file (plotly.js inlined, no CDN, opens offline).
`write_study_report` turns a study folder (interp.study) into report.html: one section per analysis with
its figure, its table, where each number comes from, and the paper's figures beside ours.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from interp.io import write_atomic, write_text_atomic

__all__ = ["kappa_heatmap", "error_overlap_bars", "accuracy_vs_snr", "write_figure", "write_study_report",
           "PAPER_FIGURES"]

_COLUMNS = 3


def _grid(titles: list[str]) -> tuple[go.Figure, int]:
    columns = max(1, min(_COLUMNS, len(titles)))
    rows = max(1, math.ceil(len(titles) / columns))
    figure = make_subplots(rows=rows, cols=columns, subplot_titles=titles or None, horizontal_spacing=0.12,
                           vertical_spacing=0.18 if rows > 1 else 0.1)
    return figure, columns


def _note(figure: go.Figure, text: str) -> go.Figure:
    figure.add_annotation(text=text, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    figure.update_xaxes(visible=False)
    figure.update_yaxes(visible=False)
    return figure


def kappa_heatmap(stats: dict[str, Any]) -> go.Figure:
    """Cohen's kappa of every pair of systems, one heat map per forced-choice set; cells show kappa and its
    bootstrap interval, the diagonal is 1."""
    sets = [(name, entry) for name, entry in stats["sets"].items() if entry["kappa"]]
    figure, columns = _grid([f"{name} ({entry['task']}, n={entry['n_items']})" for name, entry in sets])
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
    return figure if sets else _note(figure, "no forced-choice set with two or more systems")


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
    return figure if entries else _note(figure, "no multi-class set (K ≥ 3) with two or more systems")


def _snr_label(snr_db: float | None) -> str:
    return "clean" if snr_db is None else f"{snr_db:g} dB"


def accuracy_vs_snr(stats: dict[str, Any]) -> go.Figure:
    """Accuracy against SNR (clean first, then falling SNR), one line per system, one panel per clean set,
    with bootstrap intervals as error bars."""
    groups = list(stats.get("snr", {}).items())
    figure, columns = _grid(groups and [name for name, _ in groups])
    colours: dict[str, str] = {}
    shown: set[str] = set()
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
    for index, (name, table) in enumerate(groups):
        order: list[str] = []
        for row in table["rows"]:
            label = _snr_label(row["snr_db"])
            if label not in order:
                order.append(label)
        for system in dict.fromkeys(row["system"] for row in table["rows"]):
            colour = colours.setdefault(system, palette[len(colours) % len(palette)])
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
    return figure if groups else _note(figure, "no clean set with noisy variants in this run")


def write_figure(figure: go.Figure, path: Path) -> Path:
    """Save as a standalone HTML file (plotly.js inlined, works offline), atomically."""
    return write_atomic(Path(path), lambda tmp: figure.write_html(str(tmp), include_plotlyjs=True, full_html=True))


# ---------------------------------------------------------------------------------------------------------------
# the study report

# What the study reports on 7-8B models (arXiv 2602.17598; many numbers reached us second-hand), shown
# beside the matching section so that a reader sees the expected shape.
PAPER_FIGURES: dict[str, list[str]] = {
    "behaviour": [
        "Cohen's κ, end-to-end vs matched cascade (Ultravox): AG News 0.93, SST-2 0.75, CSQA 0.78, MELD 0.52, "
        "MUStARD 0.55; Qwen2-Audio 0.85, 0.54, 0.56, 0.30, 0.05; Phi-4-MM 0.85, 0.64, 0.61, 0.23, 0.50.",
        "Cascade-S vs Cascade-W κ 0.93-0.98: the ceiling of agreement for two systems on one backbone.",
        "Conditional error overlap (Ultravox): 0.96 on AG News, 0.68 on MELD; chance 1/(K-1).",
        "Babble at 0 dB: cascades lose 0.5-4.2 points, end-to-end models 3.9-12.7.",
    ],
    "probes": [
        "CTC text decodability at audio positions: Ultravox 0.03 (L0) rising to 0.20 (L31); Qwen2-Audio 0.50 at "
        "L0 falling to 0.29. Pitch R² stays above about 0.29 (acoustics are kept).",
    ],
    "lens": [
        "Bag-of-tokens precision of the RMSNorm logit lens: text emerges from about L20; Ultravox 0.34 at L31, "
        "Qwen2-Audio 0.23 at L28.",
        "Implicit cascade (L31 lens text → the text LLM) vs the real cascade: κ 0.94 on AG News.",
    ],
    "erasure": [
        "LEACE at all probed layers: text erasure → 0.0-0.3% accuracy; random subspace of matched rank → small "
        "drop (82.9 → 78.9 on AG News); acoustic erasure → moderate drop.",
    ],
}

_STYLE = """body{font:15px/1.45 system-ui,sans-serif;max-width:1180px;margin:0 auto;padding:0 18px 60px;color:#222}
h1{font-size:26px}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:42px}
table{border-collapse:collapse;margin:10px 0;font-size:13px}\
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.paper{background:#fff8e6;border-left:4px solid #e0a800;padding:6px 12px;margin:12px 0}
.source{color:#555;font-size:12px}nav a{margin-right:14px}\
pre{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:12px}"""


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3f}"
        return html.escape("" if value is None else str(value))

    return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows) + "</table>")


def _interval(estimate: dict[str, Any] | None) -> str:
    if not estimate or estimate.get("value") is None:
        return "n/a"
    return f"{estimate['value']:.3f} [{estimate['low']:.3f}, {estimate['high']:.3f}]"


def _paper(section: str) -> str:
    lines = "".join(f"<li>{html.escape(line)}</li>" for line in PAPER_FIGURES[section])
    return ("<div class='paper'><b>The paper's figures</b> (Billa 2026, arXiv 2602.17598, on 7-8B models; not "
            f"comparable in scale, shown for the expected shape):<ul>{lines}</ul></div>")


def _source(out: Path, paths: list[Path], stage: str) -> str:
    marker = out / "stages" / f"{stage}.json"
    made = ""
    if marker.is_file():
        record = json.loads(marker.read_text(encoding="utf-8"))
        origin = record.get("provenance") or {}
        made = (f"; made by {html.escape(str(origin.get('command')))} at commit "
                f"{html.escape(str(origin.get('git_commit')))}, seed {origin.get('seed')}, "
                f"in {record['seconds']:.0f} s")
    files = ", ".join(html.escape(str(p.relative_to(out))) for p in paths)
    return f"<p class='source'>Source: {files}{made}.</p>"


class _Figures:
    """Figures as HTML fragments; plotly.js is inlined once, in the first one, so the page opens offline."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, figure: go.Figure) -> str:
        if not figure.data:  # nothing to draw (e.g. no multi-class set): say why instead of an empty frame
            notes = [a.text for a in figure.layout.annotations] or ["no data"]
            return f"<p class='source'>{html.escape(str(figure.layout.title.text))}: {html.escape(notes[-1])}.</p>"
        self.count += 1
        return figure.to_html(full_html=False, include_plotlyjs=self.count == 1, div_id=f"figure-{self.count}")


def _sets_section(out: Path) -> str:
    from interp.data.info import summarize
    from interp.data.manifest import MANIFEST, SpokenSet

    rows = []
    for manifest in sorted((out / "sets").rglob(MANIFEST)):
        summary = summarize(SpokenSet.open(manifest.parent))
        rows.append([manifest.parent.relative_to(out / "sets").as_posix(), summary.items,
                     ", ".join(f"{k} {v}" for k, v in summary.labels.items()), summary.duration_total,
                     ", ".join(f"{k} {v}" for k, v in summary.speech.items())])
    return ("<h2 id='sets'>Spoken sets</h2><p>Every set is a folder of 16 kHz wavs and a manifest; TTS voices and "
            "noise excerpts are seeded per item.</p>"
            + _table(["set", "items", "labels", "speech (s)", "voices"], rows))


def _behaviour_section(out: Path, figures: _Figures) -> str:
    path = out / "behave" / "stats.json"
    stats = json.loads(path.read_text(encoding="utf-8"))
    systems = list(dict.fromkeys(s for entry in stats["sets"].values() for s in entry["systems"]))
    rows = [[name, entry["task"], entry["n_items"]] + [_interval(entry["accuracy"].get(s)) for s in systems]
            for name, entry in stats["sets"].items()]
    pairs = []
    for name, entry in stats["sets"].items():
        tests = {(t["a"], t["b"]): t for t in entry["mcnemar"]}
        overlaps = {(o["a"], o["b"]): o for o in entry["error_overlap"]}
        for kappa in entry["kappa"]:
            key = (kappa["a"], kappa["b"])
            test, overlap = tests.get(key, {}), overlaps.get(key)
            pairs.append([name, f"{key[0]} / {key[1]}", _interval(kappa),
                          None if not overlap or overlap["value"] is None else
                          f"{overlap['value']:.2f} (chance {overlap['chance']:.2f})",
                          test.get("p_value"), test.get("q_value")])
    return ("<h2 id='behaviour'>Behaviour: end-to-end vs matched cascade</h2>"
            "<p>Every system answers every item (forced choice by log-likelihood). Accuracy with 95% bootstrap "
            "intervals over items; agreement by Cohen's κ with a paired bootstrap interval; McNemar p and "
            "Benjamini-Hochberg q over all tests of the run.</p>"
            + _table(["set", "task", "items"] + systems, rows)
            + _table(["set", "pair", "κ [95% CI]", "error overlap", "McNemar p", "BH q"], pairs)
            + figures(kappa_heatmap(stats)) + figures(error_overlap_bars(stats)) + figures(accuracy_vs_snr(stats))
            + _paper("behaviour") + _source(out, [path], "stats"))


def _probes_section(out: Path, figures: _Figures) -> str:
    from probes import probe_figure
    from probes.sweep import ProbeReport

    path = out / "probes.json"
    record = json.loads(path.read_text(encoding="utf-8"))
    reports = [ProbeReport.from_dict(r) for r in record["reports"]]
    rows = [[report.cache.rsplit("/", 1)[-1], score.site, score.probe, _interval(
        {"value": score.score, "low": score.low, "high": score.high}), score.n_items]
            for report in reports for score in report.scores
            if score.site.endswith((".0", ".5", ".10", ".15", ".20", ".25")) or score.site == report.sites[-1]]
    return ("<h2 id='probes'>Probes by layer</h2><p>Held-out items only (split by item): energy and pitch by "
            "ridge regression per audio row (R²), text by a linear CTC probe (1 − CER) and bag-of-characters (R²); "
            "the Whisper encoder's layers are the control. The table shows every fifth layer.</p>"
            + "".join(figures(probe_figure(report)) for report in reports)
            + _table(["cache", "site", "probe", "score [95% CI]", "test items"], rows)
            + _paper("probes") + _source(out, [path], "probes"))


def _lens_section(out: Path, figures: _Figures) -> str:
    from interp.lens import precision_figure, strip_figure

    paths = sorted((out / "lens").glob("*.json"))
    body = []
    for path in paths:
        report = json.loads(path.read_text(encoding="utf-8"))
        rows = [[entry["layer"], _interval(entry["precision"]), _interval(entry["recall"]), entry["n_items"]]
                for entry in report["layers"]]
        implicit = report.get("implicit_cascade")
        line = "" if not implicit else (
            f"<p>Implicit cascade: {html.escape(str(implicit['llm']))} reading the layer-{implicit['layer']} lens text "
            f"answers {implicit['n_items']} items of {html.escape(path.stem)} with accuracy "
            f"{implicit['accuracy']:.3f}; its κ with the real cascade is in the behaviour section "
            f"(system {html.escape(implicit['system'])}).</p>")
        body.append(f"<h3>{html.escape(path.stem)}</h3>" + figures(precision_figure(report))
                    + figures(strip_figure(report)) + line
                    + _table(["layer", "precision [95% CI]", "recall [95% CI]", "items"], rows))
    return ("<h2 id='lens'>Logit lens and the implicit cascade</h2><p>The model's own final RMSNorm and "
            "unembedding applied to the cached audio rows of every layer; top-1 token per row; bag-of-tokens "
            "precision against the transcript's tokens.</p>" + "".join(body) + _paper("lens")
            + _source(out, paths, "lens"))


def _erasure_section(out: Path, figures: _Figures) -> str:
    from interp.erasure_sweep import sweep_figure

    path = out / "erasure" / "sweep.json"
    document = json.loads(path.read_text(encoding="utf-8"))
    rows = [[r["set"], r["concept"], r["layers"], r["rank_mean"], f"{r['share_of_d']:.1%}",
             "-" if r.get("variance_removed") is None else f"{r['variance_removed']:.1%}",
             _interval({"value": r["accuracy"], "low": r["ci_low"], "high": r["ci_high"]}),
             None if not r["layers"] else f"{r['delta']:+.3f} [{r['delta_low']:+.3f}, {r['delta_high']:+.3f}]",
             r["chance"], r["n_items"]] for r in document["rows"]]
    return ("<h2 id='erasure'>LEACE erasure</h2><p>" + html.escape(document["header"]) + ".</p>"
            + figures(sweep_figure(document["rows"], document["header"]))
            + _table(["set", "concept", "layers", "rank/layer", "share of d", "variance removed", "accuracy [95% CI]",
                      "Δ vs clean", "chance", "items"], rows) + _paper("erasure") + _source(out, [path], "erasure"))


def write_study_report(out: Path, stage_seconds: dict[str, float]) -> Path:
    """Write `out`/report.html from the files of a study folder: self-contained (plotly.js inlined once, no
    network request), one section per analysis present, each with its figures, table, source and the
    paper's figures beside it."""
    out = Path(out)
    figures = _Figures()
    plan = json.loads((out / "plan.json").read_text(encoding="utf-8")) if (out / "plan.json").is_file() else {}
    sections = [("sets", _sets_section, out / "sets"), ("behaviour", _behaviour_section, out / "behave/stats.json"),
                ("probes", _probes_section, out / "probes.json"), ("lens", _lens_section, out / "lens"),
                ("erasure", _erasure_section, out / "erasure/sweep.json")]
    present = [(name, make) for name, make, needed in sections if needed.exists()]
    body = [make(out) if name == "sets" else make(out, figures) for name, make in present]
    marker = out / "stages" / "sets.json"
    origin = json.loads(marker.read_text(encoding="utf-8"))["provenance"] if marker.is_file() else {}
    times = _table(["stage", "seconds"], [[k, v] for k, v in stage_seconds.items()]
                   + [["total", sum(stage_seconds.values())]])
    head = (f"<h1>Does {html.escape(str(plan.get('speech_model', 'the model')))} use the audio, or is it a cascade "
            "in disguise?</h1><p>The cascade-equivalence study: an end-to-end speech LLM against the "
            f"cascade on the same LLM ({html.escape(str(plan.get('cascade')))}), in behaviour (agreement, noise) and "
            "in its hidden states (probes, logit lens, LEACE erasure).</p><nav>"
            + "".join(f"<a href='#{name}'>{name}</a>" for name, _ in present) + "<a href='#provenance'>provenance</a>"
            "</nav>")
    tail = ("<h2 id='provenance'>Provenance</h2>" + times + "<p>Plan (plan.json):</p><pre>"
            + html.escape(json.dumps(plan, indent=1)) + "</pre><p>Versions and commit:</p><pre>"
            + html.escape(json.dumps({k: origin.get(k) for k in ("git_commit", "versions", "created")}, indent=1))
            + "</pre>")
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>cascade-interp study report</title>"
            f"<style>{_STYLE}</style></head><body>{head}{''.join(body)}{tail}</body></html>")
    return write_text_atomic(out / "report.html", page)

