"""The whole study as stages that read and write files: what `interp demo` and scripts/reproduce_paper.py run.

Stages, in order (each writes OUT/stages/<stage>.json when it finishes; a rerun skips finished stages):

  sets       spoken sets: the built-in suites by TTS, benchmark subsets (SST-2, AG News, …) by TTS, and babble
             copies of chosen sets at falling SNRs                                     → OUT/sets/<name>
  behaviour  every system (speech LLM, matched cascade, controls, oracle, …) answers every set
                                                                                      → OUT/behave/<system>/<set>.jsonl
  ablations  the speech LLM, the cascade and the controls answer the analysis sets with their audio swapped,
             silenced, … (what no use of the audio looks like)                  → OUT/behave/<system>+<ablation>/
  caches     the speech LLM's `llm.layers.*` at audio positions for the analysis sets, and its encoder's
             `audio.layers.*` for the first one (the probes' control)                  → OUT/caches/<set>[-encoder]
  probes     energy, pitch, CTC and bag-of-characters by layer on the first analysis set's caches → OUT/probes.json
  lens       RMSNorm logit lens by layer; the implicit cascade (lens text → the speech LLM's own text LLM)
             answers the analysis sets into the behaviour run                           → OUT/lens/<set>.json
  compare_text  speech vs text inside one LLM: CKA and a cross-modal probe between the audio rows of each word
             of the first analysis set and the same LLM's states on its transcript        → OUT/compare_text/
  erasure    LEACE sweep (text against three random controls, acoustic concepts, at the plan's layers, fit and
             evaluation halves)                                                         → OUT/erasure/sweep.json
  stats      κ, error overlap, McNemar + BH, accuracy vs SNR, the ablations' rows       → OUT/behave/stats.json
  report     one self-contained HTML page of all of it                                 → OUT/report.html

Every instrument (caches, probes, lens, compare_text, erasure) also reads each of the plan's `controls` (by default
mini-disguise, a cascade by construction) into OUT/controls/<control>/ with the same layout, so that the report
can show each reading of the speech model between what a cascade looks like to that instrument (the control)
and what no use of the audio looks like (the ablations).

A study folder belongs to one plan and one set of weights: rerunning with other settings, or after mini-ultravox's
shipped projector changed, is refused (choose another --out), so a finished stage is never mixed with a changed
one. Every stage's marker records its seconds, the plan and the provenance (versions, git commit, seed).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interp.errors import InterpError
from interp.io import write_json_atomic
from interp.study.markers import STAGES, read_marker, stage_times, write_marker
from interp.study.plan import StudyPlan, demo_plan, load_plan
from interp.study.progress import Progress, silent

__all__ = ["STAGES", "StudyPlan", "StageResult", "run_study", "demo_plan", "load_plan", "stage_times",
           "speech_kappas"]

_log = logging.getLogger(__name__)


@dataclass
class StageResult:
    stage: str
    seconds: float
    skipped: bool
    outputs: list[str]


def speech_kappas(out: Path, plan: StudyPlan, *, systems: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """κ of the plan's speech model with each of `systems`, by forced-choice set, from OUT/behave/stats.json
    (the stats stage): what scripts/reproduce_paper.py prints for the paper's cascade beside the own-backbone
    one. None for a system that did not answer that set."""
    from interp.behavior import parse_systems

    speech = parse_systems(plan.speech_model)[0].name
    stats = json.loads((Path(out) / "behave" / "stats.json").read_text(encoding="utf-8"))
    table = {}
    for name, entry in stats["sets"].items():
        pairs = {frozenset((pair["a"], pair["b"])): pair["value"] for pair in entry["kappa"]}
        if pairs:
            table[name] = {system: pairs.get(frozenset((speech, system))) for system in systems}
    return table


def _plan_record(plan: StudyPlan) -> dict[str, Any]:
    """plan.json: the plan and the fingerprint of the weights a model name alone does not pin down (a retrained
    mini-ultravox projector), so that finished stages are not reused with other weights."""
    from interp.models.mini import weights_of

    systems = plan.behaviour_systems()
    return plan.to_dict() | {"weights": {spec: w for spec in systems if (w := weights_of(spec)) is not None}}


def _check_plan(out: Path, plan: StudyPlan) -> None:
    path = out / "plan.json"
    record = _plan_record(plan)
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        changed = [key for key, value in record.items() if previous.get(key) != value]
        if changed:
            key = changed[0]
            raise InterpError(f"{out} holds a study made with {key} {previous.get(key)!r}, not "
                              f"{record[key]!r}; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record, indent=1)


def run_study(plan: StudyPlan, out: Path, *, stages: list[str] | None = None, progress: Progress | None = None,
              command: str = "interp demo", on_stage: Callable[[StageResult], None] | None = None
              ) -> list[StageResult]:
    """Run `stages` (default: all, in order) of `plan` into `out`, skipping the finished ones."""
    from interp.study.stages import (
        StudyStages,  # torch, transformers and every analysis: only to run a study
    )

    plan.check()
    chosen = list(stages or STAGES)
    unknown = [s for s in chosen if s not in STAGES]
    if unknown:
        raise InterpError(f"unknown stage {unknown[0]!r}; stages: {', '.join(STAGES)}")
    out = Path(out)
    _check_plan(out, plan)
    study = StudyStages(plan, out, progress or silent, command)
    results = []
    for stage in (s for s in STAGES if s in chosen):
        marker = read_marker(out, stage)
        if marker is not None and stage != "report":
            result = StageResult(stage, float(marker["seconds"]), True, list(marker["outputs"]))
        else:
            started = time.perf_counter()
            outputs = [str(p) for p in getattr(study, stage)()]
            result = StageResult(stage, time.perf_counter() - started, False, outputs)
            write_marker(out, stage, seconds=result.seconds, outputs=outputs, provenance=study.provenance(stage))
        _log.info("stage %s %s in %.1f s", stage, "reused" if result.skipped else "done", result.seconds)
        if on_stage is not None:
            on_stage(result)
        results.append(result)
    return results
