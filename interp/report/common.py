"""What every section of the study report shares: the study folder it reads (the speech model, its controls and
the cascade by name), HTML tables and intervals, the source line, the paper's figures and the figure counter that
inlines plotly.js once."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

__all__ = ["PAPER_FIGURES", "STYLE", "Figures", "Study", "Subject", "table", "interval", "paper", "source",
           "reading", "number", "verdict"]

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

STYLE = """body{font:15px/1.45 system-ui,sans-serif;max-width:1180px;margin:0 auto;padding:0 18px 60px;color:#222}
h1{font-size:26px}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:42px}
table{border-collapse:collapse;margin:10px 0;font-size:13px}\
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.paper{background:#fff8e6;border-left:4px solid #e0a800;padding:6px 12px;margin:12px 0}
.reading{background:#eef6ff;border-left:4px solid #1f77b4;padding:6px 12px;margin:12px 0}
.source{color:#555;font-size:12px}nav a{margin-right:14px}\
pre{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:12px}"""


@dataclass(frozen=True)
class Subject:
    """A model every instrument read: its system name (its folder in the behaviour run) and its outputs' folder
    (OUT for the speech model, OUT/controls/<name> for a control, as interp.study.stages.control_folder puts it)."""

    name: str
    root: Path
    control: bool


@dataclass(frozen=True)
class Study:
    """A study folder as the report reads it: the plan, the speech model, its controls, the cascade, the
    ablations."""

    out: Path
    plan: dict[str, Any]
    speech: Subject
    controls: list[Subject] = field(default_factory=list)
    cascade: str | None = None
    ablations: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, out: Path) -> Study:
        out = Path(out)
        plan = json.loads((out / "plan.json").read_text(encoding="utf-8")) if (out / "plan.json").is_file() else {}
        names = [_system_name(spec) for spec in plan.get("controls", [])]
        controls = [Subject(name, out / "controls" / name, True) for name in names]
        return cls(out, plan, Subject(_system_name(plan.get("speech_model", "the speech model")), out, False),
                   controls, _system_name(plan["cascade"]) if plan.get("cascade") else None,
                   list(plan.get("ablations", [])))

    @property
    def subjects(self) -> list[Subject]:
        return [self.speech, *self.controls]

    @property
    def control(self) -> Subject | None:
        """The first control: the one the readings compare the speech model with."""
        return self.controls[0] if self.controls else None


def _system_name(spec: str) -> str:
    """The behaviour run's folder name of a system spec (interp.behavior.parse_systems), the spec where it does
    not parse (a report of a folder whose models are not installed here)."""
    from interp.behavior import parse_systems
    from interp.errors import InterpError

    try:
        return parse_systems(spec)[0].name
    except InterpError:
        return spec


def number(value: float | None, spec: str = ".2f") -> str:
    """A number as the readings write it; "n/a" for a missing one."""
    return "n/a" if value is None else format(value, spec)


def table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3f}"
        return html.escape("" if value is None else str(value))

    return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows) + "</table>")


def interval(estimate: dict[str, Any] | None) -> str:
    if not estimate or estimate.get("value") is None:
        return "n/a"
    return f"{estimate['value']:.3f} [{estimate['low']:.3f}, {estimate['high']:.3f}]"


def verdict(control: float, speech: float, *, reads: float, same: float, seen: str, unseen: str, alike: str,
            gap: str) -> str:
    """The second half of a reading: whether the instrument sees the text in the control (`seen` when the control
    reads at least `reads`, else `unseen`), then whether the speech model reads as much (`alike` when within
    `same` of the control, else `gap` with `{gap}` filled by how much less)."""
    first = seen if control >= reads else unseen
    return first + (alike if speech >= control - same else gap.format(gap=f"{control - speech:.2f}"))


def reading(text: str) -> str:
    """The one sentence under a figure saying what the controls show about the instrument."""
    return f"<p class='reading'><b>What the controls show:</b> {html.escape(text)}</p>"


def paper(section: str) -> str:
    lines = "".join(f"<li>{html.escape(line)}</li>" for line in PAPER_FIGURES[section])
    return ("<div class='paper'><b>The paper's figures</b> (Billa 2026, arXiv 2602.17598, on 7-8B models; not "
            f"comparable in scale, shown for the expected shape):<ul>{lines}</ul></div>")


def source(out: Path, paths: list[Path], stage: str) -> str:
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


class Figures:
    """Figures as HTML fragments; plotly.js is inlined once, in the first one, so the page opens offline."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, figure: go.Figure) -> str:
        if not figure.data:  # nothing to draw (e.g. no multi-class set): say why instead of an empty frame
            notes = [a.text for a in figure.layout.annotations] or ["no data"]
            return f"<p class='source'>{html.escape(str(figure.layout.title.text))}: {html.escape(notes[-1])}.</p>"
        self.count += 1
        return figure.to_html(full_html=False, include_plotlyjs=self.count == 1, div_id=f"figure-{self.count}")
