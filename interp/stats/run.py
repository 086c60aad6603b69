"""The statistics of a behaviour run folder: the stats.json of `interp stats`.

Reads every finished predictions file of a run (interp.behavior) and compares the systems on the items they all
answered, with interp.stats.paired doing the numbers. Systems and sets are listed in the order of the run's
`run.json`, then the others by name.

Runs under an audio ablation (RUN/<system>+<ablation>/, interp.data.ablation) are controls, not systems: they are
kept out of the per-set comparisons (and so out of the McNemar family the FDR correction counts) and reported in
their own section, each beside the same system's unablated run on the same items (accuracy, and Cohen's kappa
with the clean answers: near 0 when the audio carried the answer).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from interp.behavior.files import (
    PREDICTIONS_SUFFIX,
    SIDECAR_SUFFIX,
    read_predictions,
    read_sidecar,
    sidecar_ablation,
)
from interp.behavior.prediction import Prediction, corpus_wer
from interp.errors import DataError
from interp.estimates import estimate_dict
from interp.provenance import provenance
from interp.stats.paired import (
    accuracy_by_snr,
    accuracy_with_ci,
    benjamini_hochberg,
    error_overlap,
    kappa_with_ci,
    mcnemar,
    pairwise_kappa,
)

__all__ = ["run_statistics"]

_Lines = dict[str, list[Prediction]]
"""A set's predictions, by system."""


@dataclass(frozen=True)
class _Ablated:
    """One finished run under an audio ablation: its folder, the system it ablates, the ablation, set and lines."""

    folder: str
    system: str
    ablation: str
    seed: int | None
    set: str
    lines: list[Prediction]


@dataclass(frozen=True)
class _Run:
    """The finished files of a run: {set: {system: lines}}, systems in run order, the files skipped and the
    ablated runs (kept apart from the systems)."""

    sets: dict[str, _Lines]
    systems: list[str]
    skipped: list[str]
    ablated: list[_Ablated]


@dataclass(frozen=True)
class _Bootstrap:
    """How intervals are drawn: resamples, level and seed (interp.estimates.bootstrap_indices)."""

    n_boot: int
    level: float
    seed: int


def _recorded_order(run_dir: Path) -> tuple[list[str], list[str]]:
    """(systems, sets) in the order `run.json` gives them; empty without one."""
    run_file = run_dir / "run.json"
    if not run_file.is_file():
        return [], []
    recorded = json.loads(run_file.read_text(encoding="utf-8"))
    return list(recorded.get("systems", [])), list(recorded.get("sets", []))


def _load_run(run_dir: Path) -> _Run:
    """Every finished file of the run (sidecar status "done"); the others are listed as skipped."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: run folder not found (make one with interp behave --out {run_dir})")
    order, set_order = _recorded_order(run_dir)
    sets: dict[str, _Lines] = {}
    skipped: list[str] = []
    ablated: list[_Ablated] = []
    for path in sorted(run_dir.glob(f"*/*{PREDICTIONS_SUFFIX}")):
        info = read_sidecar(path.with_suffix(SIDECAR_SUFFIX))
        if info is None or info.get("status") != "done":
            skipped.append(str(path.relative_to(run_dir)))
            continue
        predictions = read_predictions(path)
        ablation = sidecar_ablation(info)
        if ablation is not None and predictions:
            config = info["config"]
            system = config.get("system", {}).get("name") or path.parent.name.partition("+")[0]
            ablated.append(_Ablated(path.parent.name, system, ablation, config["ablation"].get("seed"), path.stem,
                                    predictions))
        elif predictions:
            sets.setdefault(path.stem, {})[path.parent.name] = predictions
    if not sets and not ablated:
        raise DataError(f"{run_dir}: no finished predictions files (<system>/<set>.jsonl with a done <set>.json)")
    found = sorted({system for per_set in sets.values() for system in per_set})
    systems = [s for s in order if s in found] + [s for s in found if s not in order]
    names = [n for n in set_order if n in sets] + sorted(n for n in sets if n not in set_order)

    def rank(order: list[str], value: str) -> int:
        return order.index(value) if value in order else len(order)

    ablated.sort(key=lambda a: (rank(systems, a.system), a.system, a.ablation, rank(names, a.set), a.set))
    return _Run({name: sets[name] for name in names}, systems, skipped, ablated)


def _nan_to_none(value: float) -> float | None:
    return None if value != value else value


def _agreement(entry: dict[str, Any], lines: dict[str, dict[str, Prediction]], ids: list[str],
               boot: _Bootstrap) -> None:
    """Fill a forced-choice set's accuracy, kappa, accuracy differences and error overlap (K >= 3 choices)."""
    names = entry["systems"]
    gold = np.array([lines[names[0]][i].label for i in ids])
    predictions = {s: np.array([lines[s][i].prediction for i in ids]) for s in names}
    agreement = pairwise_kappa(predictions, gold, n_boot=boot.n_boot, level=boot.level, seed=boot.seed)
    entry["accuracy"] = {s: estimate_dict(agreement.accuracy[s]) for s in names}
    for a, b in agreement.pairs:
        entry["kappa"].append({"a": a, "b": b, **estimate_dict(agreement.kappa[a, b])})
        entry["accuracy_difference"].append({"a": a, "b": b, **estimate_dict(agreement.accuracy_difference[a, b])})
        if entry["n_choices"] >= 3:
            overlap = error_overlap(predictions[a], predictions[b], gold, entry["n_choices"])
            entry["error_overlap"].append({"a": a, "b": b, "value": _nan_to_none(overlap.value),
                                           "n_both_wrong": overlap.n_both_wrong, "chance": overlap.chance})


def _mcnemar_pairs(names: list[str], correct: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """McNemar's test of every pair of systems (q_value None until the run's tests are corrected together)."""
    tests = []
    for index, a in enumerate(names):
        for b in names[index + 1:]:
            test = mcnemar(correct[a], correct[b])
            tests.append({"a": a, "b": b, "only_a_right": test.b, "only_b_right": test.c,
                          "statistic": test.statistic, "p_value": test.p_value, "method": test.method,
                          "q_value": None})
    return tests


def _set_statistics(per_system: _Lines, systems: list[str], boot: _Bootstrap) -> dict[str, Any]:
    """One set's entry of stats.json, on the items every system answered."""
    names = [s for s in systems if s in per_system]
    common = set.intersection(*({p.id for p in per_system[s]} for s in names))
    ids = [p.id for p in per_system[names[0]] if p.id in common]
    lines = {s: {p.id: p for p in per_system[s]} for s in names}
    first = [lines[names[0]][i] for i in ids]
    tasks = sorted({p.task for p in first})
    is_open = any(p.n_choices == 0 for p in first)
    snrs = sorted({p.snr_db for p in first}, key=lambda v: (v is not None, -(v or 0)))
    entry: dict[str, Any] = {
        "task": ",".join(tasks), "open": is_open, "n_items": len(ids),
        "n_choices": max((p.n_choices for p in first), default=0),
        "snr_db": snrs[0] if len(snrs) == 1 else (snrs or None), "systems": names, "accuracy": {},
        "kappa": [], "accuracy_difference": [], "error_overlap": [], "mcnemar": [],
        "calibration": {s: sorted({str(lines[s][i].calibration) for i in ids}) for s in names},
    }
    correct = {s: np.array([bool(lines[s][i].correct) for i in ids]) for s in names}
    if ids:
        if not is_open and len(names) >= 2:
            _agreement(entry, lines, ids, boot)
        else:
            entry["accuracy"] = {s: estimate_dict(accuracy_with_ci(correct[s], n_boot=boot.n_boot, level=boot.level,
                                                                   seed=boot.seed)) for s in names}
        entry["mcnemar"] = _mcnemar_pairs(names, correct)
    if "transcribe" in tasks:
        entry["wer"] = {s: corpus_wer(lines[s][i] for i in ids) for s in names}
    return entry


def _ablation_entry(ablated: _Ablated, clean: list[Prediction] | None, boot: _Bootstrap) -> dict[str, Any]:
    """One row of the "ablations" section: accuracy under the ablation and, on the items the clean run of the
    same system also answered, the clean accuracy and Cohen's kappa between the two runs' answers (forced choice
    only; None without a clean run or for open answers)."""
    by_id = {p.id: p for p in clean or []}
    lines = [p for p in ablated.lines if p.id in by_id] if clean else ablated.lines
    entry: dict[str, Any] = {
        "system": ablated.system, "folder": ablated.folder, "ablation": ablated.ablation, "seed": ablated.seed,
        "set": ablated.set, "n": len(lines), "accuracy": None, "accuracy_ci": None, "clean_accuracy": None,
        "kappa_with_clean": None, "kappa_ci": None,
    }
    if not lines:
        return entry
    correct = np.array([bool(p.correct) for p in lines])
    estimate = accuracy_with_ci(correct, n_boot=boot.n_boot, level=boot.level, seed=boot.seed)
    entry.update(accuracy=estimate.value, accuracy_ci=[estimate.low, estimate.high])
    if clean:
        entry["clean_accuracy"] = float(np.mean([bool(by_id[p.id].correct) for p in lines]))
        if all(p.n_choices > 0 for p in lines):
            kappa = kappa_with_ci([p.prediction for p in lines], [by_id[p.id].prediction for p in lines],
                                  n_boot=boot.n_boot, level=boot.level, seed=boot.seed)
            entry.update(kappa_with_clean=kappa.value, kappa_ci=[kappa.low, kappa.high])
    return entry


def run_statistics(run_dir: Path, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Statistics of every finished predictions file of a run (the stats.json layout, see `interp stats`).

    Per set, on the items every system answered: accuracy with bootstrap CI per system; for forced-choice sets
    the kappa of every pair and the accuracy difference with paired bootstrap CIs (interp.stats.pairwise_kappa),
    the conditional error overlap with its chance level 1/(K-1) for K >= 3 choices; McNemar for every pair, with
    Benjamini-Hochberg q-values over ALL McNemar tests of the run; WER for transcription sets. Accuracy vs SNR
    for every clean set with its noisy variants (matched by base item ids). "ablations": one row per ablated run
    (system, ablation, set, accuracy, accuracy_ci, kappa_with_clean, n, ...; see `_ablation_entry`).
    """
    run = _load_run(run_dir)
    boot = _Bootstrap(n_boot, level, seed)
    out_sets: dict[str, Any] = {}
    tests: list[dict[str, Any]] = []
    for name, per_system in run.sets.items():
        out_sets[name] = _set_statistics(per_system, run.systems, boot)
        tests.extend(out_sets[name]["mcnemar"])
    if tests:
        for record, q in zip(tests, benjamini_hochberg([t["p_value"] for t in tests])):
            record["q_value"] = float(q)
    return {
        "run": str(run_dir), "systems": run.systems, "n_boot": n_boot, "level": level, "seed": seed,
        "fdr": {"method": "benjamini-hochberg", "family": "every McNemar test of the run", "m": len(tests)},
        "sets": out_sets, "snr": _snr_tables(run.sets, run.systems, boot), "skipped": run.skipped,
        "ablations": [_ablation_entry(a, run.sets.get(a.set, {}).get(a.system), boot) for a in run.ablated],
        "provenance": provenance(command="interp stats", config={"run": str(run_dir), "n_boot": n_boot,
                                                                "level": level}, seed=seed),
    }


def _snr_groups(sets: dict[str, _Lines]) -> dict[str, list[str]]:
    """Each clean set with the noisy sets made from its items (matched by base item ids); a noisy set without a
    clean parent groups with the noisy sets of the same items."""

    def base_ids(name: str) -> set[str]:
        return {p.base_id for lines in sets[name].values() for p in lines}

    def is_clean(name: str) -> bool:
        return all(p.snr_db is None for lines in sets[name].values() for p in lines)

    clean = [name for name in sets if is_clean(name)]
    groups: dict[str, list[str]] = {name: [name] for name in clean}
    for name in sets:
        if name in groups:
            continue
        ids = base_ids(name)
        parents = [c for c in clean if ids <= base_ids(c)]
        if parents:
            groups[parents[0]].append(name)
            continue
        twin = next((group for group in groups if group not in clean and base_ids(group) == ids), None)
        if twin is None:
            groups[name] = [name]
        else:
            groups[twin].append(name)
    return groups


def _snr_tables(sets: dict[str, _Lines], systems: list[str], boot: _Bootstrap) -> dict[str, Any]:
    """Accuracy by SNR for each clean set and the noisy sets made from its items (groups of 2+ noise levels)."""

    def clean_then_falling_snr(name: str) -> tuple[bool, float]:
        snr = next(p.snr_db for lines in sets[name].values() for p in lines)
        return (snr is not None, -(snr or 0.0))

    tables: dict[str, Any] = {}
    for group, members in _snr_groups(sets).items():
        members.sort(key=clean_then_falling_snr)
        levels = {p.snr_db for m in members for lines in sets[m].values() for p in lines}
        if len(levels) < 2:
            continue
        rows = [(system, p.snr_db, bool(p.correct)) for system in systems for m in members
                if system in sets[m] for p in sets[m][system]]
        table = accuracy_by_snr(rows, n_boot=boot.n_boot, level=boot.level, seed=boot.seed)
        tables[group] = {"sets": members, "rows": [asdict(row) for row in table]}
    return tables
