"""`interp demo` (the study in miniature on the mini stack) and `interp study --plan FILE` (the same stages as a
plan file describes them)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from interp.cli.options import bar

if TYPE_CHECKING:
    from interp.study import StageResult, StudyPlan

__all__ = ["demo_command", "study_command"]


def demo_command(
    out: Path = typer.Option(Path("demo"), "--out", help="The study folder (created; a rerun reuses finished "
                             "stages)."),
    stages: str = typer.Option("all", help="Comma-separated stages to run (default all): sets, "
                               "behaviour, ablations, caches, probes, lens, compare_text, erasure, stats, report."),
    suite_items: int = typer.Option(24, help="Items per built-in suite (sentiment, topic, pitch, rate)."),
    benchmark_items: int = typer.Option(80, help="Items of the SST-2 and AG News subsets (spoken by TTS); every "
                                        "behaviour system answers each (timings: interp.study.demo_plan)."),
    threads: int = typer.Option(2, help="Torch threads."),
    seed: int = typer.Option(0, help="Seed of the sets, voices, noise, splits and bootstraps."),
    prompts: Optional[str] = typer.Option(None, "--prompts", metavar="STYLE", help="chat or few-shot (default: "
                                          "the demo plan's choice, see README)."),
    calibrate: str = typer.Option("none", "--calibrate", metavar="none|batch",
                                  help="Calibration of the behaviour stage's forced choices."),
    erasure_ranks: str = typer.Option("", "--erasure-ranks", metavar="K,K",
                                      help="Also sweep text and the random controls at these ranks (e.g. 8,32); "
                                      "default none."),
) -> None:
    """The whole study in miniature on CPU: mini-ultravox against mini-cascade (same SmolLM2), beside the
    positive control mini-disguise (a cascade by construction), mini-cascade-weak (Whisper tiny.en: the ceiling of
    two cascades' agreement), mini-cascade-gemma (another LLM) and the text oracle. Builds the spoken sets
    (built-in suites, SST-2 and AG News subsets, babble at 20/10/5/0 dB), lets every system answer, and the speech
    model, the cascade and the control answer the analysis sets again with their audio swapped and silenced;
    caches mini-ultravox's and mini-disguise's layers, probes them, reads them with the logit lens (and the
    implicit cascade), erases text against three random controls and acoustic concepts with LEACE, computes the
    statistics and writes OUT/report.html (self-contained, opens offline), where each reading of mini-ultravox
    stands between the control's and the ablations'. Per-stage and total times are printed at the end."""
    import torch

    from interp.study import demo_plan
    from interp.task_prompts import check_calibration, check_prompt_style

    torch.set_num_threads(threads)
    plan = demo_plan()
    plan.prompt_style = check_prompt_style(prompts or plan.prompt_style)
    plan.calibration = check_calibration(calibrate)
    plan.suites = {task: suite_items for task in plan.suites}
    plan.benchmarks = {name: benchmark_items for name in plan.benchmarks}
    plan.seed = seed
    plan.erasure_ranks = _ranks(erasure_ranks)
    _run(plan, out, stages, command="interp demo")


def _ranks(text: str) -> list[int]:
    """--erasure-ranks 8,32 → [8, 32]; one line (exit 2) for anything else."""
    from interp.errors import InterpError

    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not all(part.isdigit() and int(part) >= 1 for part in parts):
        raise InterpError(f"--erasure-ranks {text!r}: give whole numbers >= 1, e.g. 8,32")
    return [int(part) for part in parts]


def study_command(
    plan_file: Path = typer.Option(..., "--plan", metavar="FILE", help="A StudyPlan as JSON or TOML: its keys are "
                                   "interp.study.StudyPlan's fields (a key left out keeps the demo's value)."),
    out: Path = typer.Option(..., "--out", help="The study folder (created; a rerun reuses finished stages)."),
    stages: str = typer.Option("all", help="Comma-separated stages to run (default all): sets, "
                               "behaviour, ablations, caches, probes, lens, compare_text, erasure, stats, report."),
) -> None:
    """A whole study as a plan file describes it: the demo's stages on other models, sets and sizes (checkpoint
    specs name local folders, see `interp models list`). Writes OUT/report.html; per-stage times at the end."""
    from interp.study import load_plan

    _run(load_plan(plan_file), out, stages, command="interp study")


def _run(plan: StudyPlan, out: Path, stages: str, *, command: str) -> None:
    """Run the study (interp.study.run_study) with bars and the stage lines on stderr, then print its times."""
    from interp.study import STAGES, run_study

    chosen = list(STAGES) if stages.strip() in ("", "all") else [s.strip() for s in stages.split(",") if s.strip()]
    for name in ("interp.study", "interp.erasure_sweep"):
        logging.getLogger(name).setLevel(logging.INFO)

    def finished(result: StageResult) -> None:
        how = "reused" if result.skipped else "done"
        typer.echo(f"stage {result.stage:10s} {how:6s} {result.seconds:8.1f} s", err=True)

    results = run_study(plan, out, stages=chosen, progress=bar, command=command, on_stage=finished)
    typer.echo(f"{'stage':12s} {'seconds':>9s}")
    for result in results:
        typer.echo(f"{result.stage:12s} {result.seconds:9.1f}" + ("  (reused)" if result.skipped else ""))
    typer.echo(f"{'this run':12s} {sum(r.seconds for r in results if not r.skipped):9.1f}")
    if any(r.skipped for r in results):
        typer.echo(f"{'as made':12s} {sum(r.seconds for r in results):9.1f}  (the reused stages' own seconds included)")
    if (out / "report.html").is_file():
        typer.echo(f"report: {out / 'report.html'}")
