"""One analysis from its inputs to its files: what `interp behave`, `interp probe`, `interp lens` and
`interp stats` run, and what the study's stages of the same names run, so that both write the same files the
same way (atomically).

Each function reports progress through interp.study.progress.Progress; the CLI draws it as bars.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from activations import ActivationCache
from interp.behavior import (
    System,
    SystemSpec,
    check_ablated_run,
    check_scoring,
    record_run,
    run_system,
    set_name,
    system_folder,
)
from interp.data.manifest import SpokenSet
from interp.io import write_json_atomic, write_text_atomic
from interp.lens import (
    TokenNormalizer,
    implicit_cascade,
    lens_report,
    logit_lens,
    score_lens,
    write_report,
)
from interp.models.base import SpeechLM
from interp.models.text_lm import TextLM
from interp.report import (
    accuracy_vs_snr,
    error_overlap_bars,
    kappa_heatmap,
    write_figure,
)
from interp.stats.run import run_statistics
from interp.study.progress import Progress, increments, silent
from interp.task_prompts import Calibration, PromptStyle
from probes import probe_figure, run_probes
from probes.sweep import ProbeReport

__all__ = ["answer_sets", "ImplicitCascadeRun", "LensOutput", "StatsOutput", "write_probes", "write_lens",
           "write_statistics", "increments"]


def answer_sets(specs: Sequence[SystemSpec], sets: Sequence[SpokenSet], run: Path, *,
                load: Callable[[SystemSpec], System], config: dict[str, Any], limit: int | None = None,
                seed: int = 0, prompt_style: PromptStyle = "chat", calibration: Calibration = "none",
                release: Callable[[SystemSpec], None] | None = None, progress: Progress = silent,
                ablation: str | None = None) -> list[Path]:
    """Every system answers every set into the behaviour run `run` (RUN/<system>/<set>.jsonl, resumable).

    Systems load one at a time (`load`), and `release(spec)` is called when one has answered every set, so that a
    caller can let it go before the next loads (GPU memory). A system's scoring is checked on every set before
    it writes anything; the run (its systems, sets and `config`) is recorded once the first system passed.
    ablation: answer with every item's audio replaced (interp.data.ablation; RUN/<system>+<ablation>/, seeded by
    `seed`), checked before any system loads. Returns the predictions files, system by system."""
    check_ablated_run(ablation, specs, sets, limit=limit)
    names = [set_name(spoken.root) for spoken in sets]
    written = []
    for index, spec in enumerate(specs):
        system = load(spec)
        for spoken in sets:
            check_scoring(system, spoken, prompt_style=prompt_style)
        if index == 0:
            record_run(run, systems=[system_folder(spec.name, ablation) for spec in specs], sets=names,
                       config=config)
        for spoken, name in zip(sets, names):
            with progress(f"{spec.name} / {name}", min(limit or len(spoken), len(spoken))) as update:
                written.append(run_system(system, spoken, run, system_name=spec.name, limit=limit, spec=spec.spec,
                                          seed=seed, progress=increments(update), prompt_style=prompt_style,
                                          calibration=calibration, ablation=ablation))
        del system
        if release is not None:
            release(spec)
    return written


def write_probes(caches: Sequence[ActivationCache], spoken: SpokenSet, out: Path, *, probes: Sequence[str],
                 provenance: dict[str, Any], sites: Sequence[Sequence[str] | None] | None = None, n_folds: int = 5,
                 test_fraction: float = 0.2, ctc_frames_per_row: int | None = None, seed: int = 0,
                 progress: Progress = silent) -> list[ProbeReport]:
    """Probe every cache (at `sites[i]`, default all of cache i) and write `out` (the reports and provenance,
    JSON) and `out` with .html (one plotly figure per cache, plotly.js inlined once). Returns the reports."""
    reports = []
    for index, cache in enumerate(caches):
        chosen = sites[index] if sites is not None else None
        with progress(f"probing {cache.path.name}", len(chosen or cache.sites)) as update:
            reports.append(run_probes(cache, spoken, probes=probes, sites=chosen, n_folds=n_folds, seed=seed,
                                      test_fraction=test_fraction, ctc_frames_per_row=ctc_frames_per_row,
                                      progress=lambda done, total, site: update(1)))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"reports": [report.to_dict(None) for report in reports], "provenance": provenance}
    write_text_atomic(out, json.dumps(record, indent=1, allow_nan=False, default=str))
    body = "\n".join(probe_figure(report).to_html(include_plotlyjs=i == 0, full_html=False)
                     for i, report in enumerate(reports))
    write_text_atomic(out.with_suffix(".html"), "<!DOCTYPE html><html><head><meta charset='utf-8'><title>probes"
                      f"</title></head><body>{body}</body></html>")
    return reports


@dataclass(frozen=True)
class ImplicitCascadeRun:
    """The implicit cascade of a lens run: `llm` answers `spoken`'s task from the lens text at `layer`, into the
    behaviour run folder `run` (RUN/implicit-cascade-L<layer>/<set>.jsonl). `label` names the set in the JSON;
    `name` (default the system's own) names its folder, so that two models' implicit cascades share one run."""

    spoken: SpokenSet
    layer: int
    llm: TextLM
    run: Path
    label: str
    prompt_style: PromptStyle = "chat"
    calibration: Calibration = "none"
    name: str | None = None


@dataclass(frozen=True)
class LensOutput:
    """What `write_lens` computed and wrote: the results JSON as a dict and the files (JSON, then figures)."""

    report: dict[str, Any]
    written: list[Path]


def write_lens(cache: ActivationCache, layers: Sequence[int], *, model: SpeechLM | TextLM, out: Path,
               config: dict[str, Any], implicit: ImplicitCascadeRun | None = None, top_k: int = 5,
               norm: bool = True, chunk_rows: int | None = None, strip_items: int = 3, n_boot: int = 1000,
               level: float = 0.95, seed: int = 0, figures: bool = True, progress: Progress = silent,
               bar_label: str = "") -> LensOutput:
    """The RMSNorm logit lens of `cache` at `layers` through `model`'s head, its bag-of-tokens scores and, when
    asked, the implicit cascade's answers; writes the results JSON `out` and its figures (interp.lens).

    chunk_rows: rows unembedded at a time (default: logit_lens's). bar_label: added to the bars' descriptions."""
    rows = int((cache.row_table()["kind"] == 0).sum())
    options = {} if chunk_rows is None else {"chunk_rows": chunk_rows}
    with progress(f"logit lens{bar_label}", rows * len(layers)) as update:
        result = logit_lens(cache, layers, model=model, top_k=top_k, norm=norm, progress=update, **options)
    normalizer = TokenNormalizer(model.tokenizer)
    scores = score_lens(result, normalizer, n_boot=n_boot, level=level, seed=seed)
    summary = None
    if implicit is not None:
        reader = implicit_cascade(result, implicit.spoken, layer=implicit.layer, llm=implicit.llm,
                                  normalizer=normalizer)
        answered = reader.restrict(implicit.spoken)
        with progress(f"implicit cascade{bar_label} L{implicit.layer}", len(answered)) as update:
            path = run_system(reader, answered, implicit.run, system_name=implicit.name or reader.name, seed=seed,
                              progress=increments(update), prompt_style=implicit.prompt_style,
                              calibration=implicit.calibration)
        sidecar = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        summary = {"set": implicit.label, "layer": implicit.layer, "run": str(implicit.run),
                   "system": path.parent.name, "predictions": str(path), "llm": getattr(implicit.llm, "name", None),
                   "n_items": sidecar["counts"]["items"], "accuracy": sidecar["accuracy"]}
    report = lens_report(result, scores, normalizer, strip_items=strip_items, implicit=summary, config=config)
    return LensOutput(report, write_report(report, out, figures=figures))


@dataclass(frozen=True)
class StatsOutput:
    """What `write_statistics` computed and wrote: the statistics as a dict and the files (JSON, then figures)."""

    stats: dict[str, Any]
    written: list[Path]


def write_statistics(run: Path, *, out: Path | None = None, n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                     figures: bool = True) -> StatsOutput:
    """The statistics of a behaviour run (interp.stats.run_statistics) written to `out` (default RUN/stats.json)
    and, with figures, kappa_heatmap.html, error_overlap.html and accuracy_vs_snr.html beside it."""
    stats = run_statistics(run, n_boot=n_boot, level=level, seed=seed)
    out = Path(out) if out is not None else Path(run) / "stats.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    written = [write_json_atomic(out, stats)]
    if figures:
        written += [write_figure(figure, out.parent / filename) for figure, filename in (
            (kappa_heatmap(stats), "kappa_heatmap.html"), (error_overlap_bars(stats), "error_overlap.html"),
            (accuracy_vs_snr(stats), "accuracy_vs_snr.html"))]
    return StatsOutput(stats, written)
