"""The study report's page: every section present in a study folder, the stage times and the provenance."""

from __future__ import annotations

import html
import json
from pathlib import Path

from interp.io import write_text_atomic
from interp.report.behaviour import behaviour_section
from interp.report.common import STYLE, Figures, Study, table
from interp.report.compare_text import compare_text_section
from interp.report.erasure import erasure_section
from interp.report.lens import lens_section
from interp.report.probes import probes_section
from interp.report.sets import sets_section

__all__ = ["write_study_report"]


def _head(study: Study, present: list[str]) -> str:
    plan = study.plan
    controls = ", ".join(c.name for c in study.controls)
    references = ("" if not controls else
                  f"<p>Each instrument's reading of {html.escape(study.speech.name)} is drawn between two references: "
                  f"the control{'s' if len(study.controls) > 1 else ''} {html.escape(controls)} (a cascade by "
                  "construction: what a cascade looks like to that instrument) and, in behaviour, the audio "
                  f"ablations {html.escape(', '.join(study.ablations) or '(none)')} (what no use of the audio looks "
                  "like). Under each comparison figure one sentence, computed from its numbers, says what the "
                  "controls show about the instrument.</p>")
    return (f"<h1>Does {html.escape(str(plan.get('speech_model', 'the model')))} use the audio, or is it a cascade "
            "in disguise?</h1><p>The cascade-equivalence study: an end-to-end speech LLM against the "
            f"cascade on the same LLM ({html.escape(str(plan.get('cascade')))}), in behaviour (agreement, noise) and "
            "in its hidden states (probes, logit lens, LEACE erasure).</p>" + references + "<nav>"
            + "".join(f"<a href='#{name}'>{name}</a>" for name in present) + "<a href='#provenance'>provenance</a>"
            "</nav>")


def write_study_report(out: Path, stage_seconds: dict[str, float]) -> Path:
    """Write `out`/report.html from the files of a study folder: self-contained (plotly.js inlined once, no
    network request), one section per analysis present, each with its figures, table, source, the speech model
    beside its controls with a one-sentence reading, and the paper's figures beside it."""
    out = Path(out)
    study = Study.open(out)
    figures = Figures()
    sections = [("sets", sets_section, out / "sets"), ("behaviour", behaviour_section, out / "behave/stats.json"),
                ("probes", probes_section, out / "probes.json"), ("lens", lens_section, out / "lens"),
                ("compare_text", compare_text_section, out / "compare_text" / "compare_text.json"),
                ("erasure", erasure_section, out / "erasure/sweep.json")]
    present = [(name, make) for name, make, needed in sections if needed.exists()]
    body = [make(study) if name == "sets" else make(study, figures) for name, make in present]
    marker = out / "stages" / "sets.json"
    origin = json.loads(marker.read_text(encoding="utf-8"))["provenance"] if marker.is_file() else {}
    times = table(["stage", "seconds"], [[k, v] for k, v in stage_seconds.items()]
                  + [["total", sum(stage_seconds.values())]])
    tail = ("<h2 id='provenance'>Provenance</h2>" + times + "<p>Plan (plan.json):</p><pre>"
            + html.escape(json.dumps(study.plan, indent=1)) + "</pre><p>Versions and commit:</p><pre>"
            + html.escape(json.dumps({k: origin.get(k) for k in ("git_commit", "versions", "created")}, indent=1))
            + "</pre>")
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>cascade-interp study report</title>"
            f"<style>{STYLE}</style></head><body>{_head(study, [n for n, _ in present])}{''.join(body)}{tail}"
            "</body></html>")
    return write_text_atomic(out / "report.html", page)
