"""Erasure sweeps: concepts × layer sets × tasks → one table (CSV + JSON) and one figure (HTML), resumable.

For each spoken set:
1. cache: the model's `llm.layers.{i}` for the union of the layer sets at audio positions (activations.extract),
   in cache_dir/<set>; skipped when the cache already holds every item;
2. split: the first `limit` items are split by a seeded draw, stratified by task and label, into a FIT half and
   an EVAL half (split "half", default); erasers are fitted on the fit half's cache rows only
   (fit_eraser(items=...)) and every system answers the eval half only, so erasure is tested on utterances
   the eraser never saw. Split "none" fits and evaluates on all items (the table header then says so);
3. erasers: per concept one fit over the union of the layer sets' sites; a LEACE eraser is fitted site by site
   (and the random control is seeded per site), so the eraser of a layer set is exactly the union's restricted
   to its sites. Saved as RUN/erasers/<set>-<concept>-<layers>.safetensors; skipped when the file exists;
4. clean baseline: interp.behavior.run_system with no eraser → RUN/<model>/<set>.jsonl;
5. erased runs: interp.erasure.evaluate_erasure → RUN/<model>+erase-<concept>-L<layers>/<set>.jsonl; every
   predictions file is skipped when its sidecar says status done for the expected items.

Outputs: RUN/sweep.csv, RUN/sweep.json (rows: set, task, concept, layers, mean rank per layer, share of d,
accuracy with 95 % bootstrap CI, Δ vs clean with paired bootstrap CI, chance level; plus config and
provenance), RUN/sweep.html (plotly, self-contained). A rerun with the same plan recomputes nothing; more
concepts or layer sets add rows; another model, limit, split, seed, positions or random match into the same
RUN is refused. Used by scripts/erasure_sweep.py and by the demo's erasure stage.
"""

from __future__ import annotations

import csv
import hashlib
import html
import json
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from interp.errors import InterpError

__all__ = ["SweepError", "SweepPlan", "run_sweep", "format_table", "header_line", "sweep_figure", "CONCEPT_ORDER"]

CONCEPT_ORDER = ("text", "chars", "boc", "energy", "pitch", "random")
_RESULT_KEYS = ("model", "limit", "split", "seed", "positions", "random_match", "text_classes", "dtype")
_log = logging.getLogger(__name__)


class SweepError(InterpError):
    """A user mistake or a conflict with what RUN already holds: one line on stderr, exit status 2."""


@dataclass
class SweepPlan:
    """What a sweep runs. layer_sets are specs ("0-29", "0,4,8", "all"), resolved against the model's layers."""

    model: str
    sets: list[Path]
    out: Path
    concepts: list[str] = field(default_factory=lambda: ["text", "random", "chars", "energy", "pitch"])
    layer_sets: list[str] = field(default_factory=lambda: ["0-29", "0-14", "15-29"])
    cache_dir: Path | None = None
    positions: str = "audio"
    limit: int | None = None
    split: str = "half"
    random_match: str = "text"
    text_classes: int = 32
    dtype: str = "float32"
    prompt_style: str = "chat"
    batch_size: int = 8
    seed: int = 0
    threads: int | None = None
    command: str = "interp.erasure_sweep"
    layer_map: dict[str, list[int]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        from interp.erasure import CONCEPTS

        if self.limit is not None and self.limit < 2:
            raise SweepError(f"limit {self.limit}: need at least 2 items (one to fit, one to evaluate)")
        self.concepts = list(dict.fromkeys(c.strip() for c in self.concepts if c.strip()))
        unknown = [c for c in self.concepts if c not in CONCEPTS]
        if unknown or not self.concepts:
            what = f"unknown concept {unknown[0]!r}" if unknown else "no concept given"
            raise SweepError(f"concepts: {what}; choose among {', '.join(CONCEPTS)}")
        if self.positions not in ("audio", "all"):
            raise SweepError(f"positions {self.positions!r}: choose audio or all")
        if self.split not in ("half", "none"):
            raise SweepError(f"split {self.split!r}: choose half or none")
        self.out = Path(self.out)
        self.sets = [Path(s) for s in self.sets]
        self.cache_dir = Path(self.cache_dir) if self.cache_dir else self.out / "caches"



# ---------------------------------------------------------------------------------------------------------------
# arguments


# ---------------------------------------------------------------------------------------------------------------
# stages


def _say(message: str) -> None:
    _log.info(message)


def _split(items: list[Any], how: str, seed: int) -> tuple[list[Any], list[Any]]:
    """(fit, eval) items in set order: per (task, label) group a seeded permutation, halves alternating."""
    if how == "none":
        return list(items), list(items)
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        groups[(item.task, json.dumps(item.label))].append(index)
    rng = np.random.default_rng(seed)
    fit, turn = set(), 0
    for key in sorted(groups):
        order = rng.permutation(groups[key])
        for k, index in enumerate(order):
            if (k + turn) % 2 == 0:
                fit.add(int(index))
        turn += len(order)  # odd groups alternate which half gets the extra item
    fit_items = [item for i, item in enumerate(items) if i in fit]
    eval_items = [item for i, item in enumerate(items) if i not in fit]
    if not fit_items or not eval_items:
        raise SweepError(f"{len(items)} item(s) cannot be split into a fit and an eval half; raise --limit")
    return fit_items, eval_items


def _ids_digest(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]


def _check_run_config(run: Path, config: dict[str, Any]) -> None:
    path = run / "sweep_config.json"
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        changed = [k for k in _RESULT_KEYS if previous.get(k) != config.get(k)]
        if changed:
            key = changed[0]
            raise SweepError(f"{run} holds a sweep made with {key} {previous.get(key)!r}, not {config.get(key)!r}; "
                             "choose another --out")
    run.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({k: config[k] for k in _RESULT_KEYS}, indent=1) + "\n", encoding="utf-8")


def _ensure_cache(model: Any, spoken: Any, cache_dir: Path, sites: list[str], plan: SweepPlan) -> Any:
    from activations import ActivationCache
    from activations.extract import dataset_identity, extract, plan_extraction
    from interp.models.base import describe_model, other_weights
    from interp.provenance import provenance
    from interp.task_prompts import task_prompt

    needed = [item.id for item in spoken.items[:plan.limit]]
    dtype = plan.dtype
    if (cache_dir / "manifest.json").is_file():
        cache = ActivationCache.open(cache_dir)
        missing_sites = [s for s in sites if s not in cache.sites]
        changed = other_weights(cache.header.model_info, model, plan.model)
        if (cache.model != model.name or changed or cache.header.dataset != dataset_identity(spoken)
                or missing_sites):
            why = (f"model {cache.model}" if cache.model != model.name else
                   f"other weights ({cache.header.model_info.get('weights')})" if changed else
                   f"sites without {missing_sites[0]}" if missing_sites else "another version of the set")
            raise SweepError(f"the cache {cache_dir} was made with {why}; give another --cache-dir")
        have = {meta.id for meta in cache.items}
        if all(i in have for i in needed):
            _say(f"skip: cache {cache_dir} holds all {len(needed)} items ({len(cache.sites)} sites)")
            return cache
        sites, dtype = list(cache.sites), cache.dtype  # add the missing items to the cache as it was made
    start = time.perf_counter()
    extraction = plan_extraction(model, ",".join(sites), "audio")
    config = {"model": plan.model, "data": str(spoken.root), "sites": list(extraction.sites), "positions": "audio",
              "dtype": dtype, "batch_size": plan.batch_size, "limit": plan.limit}
    extract(model, spoken, cache_dir, plan=extraction, dtype=dtype, batch_size=plan.batch_size, limit=plan.limit,
            prompt_for=lambda item: task_prompt(item.task, plan.prompt_style).for_item(item),
            model_info=describe_model(model, plan.model),
            provenance=provenance(command=f"{plan.command} (extract)", config=config, seed=None))
    cache = ActivationCache.open(cache_dir)
    _say(f"extracted {len(needed)} items, {len(sites)} sites ({dtype}) into {cache_dir} in "
         f"{time.perf_counter() - start:.1f} s")
    return cache


def _eraser_path(run: Path, set_name: str, concept: str, label: str) -> Path:
    return run / "erasers" / f"{set_name}-{concept}-{label}.safetensors"


def _ensure_erasers(model: Any, cache: Any, spoken: Any, set_name: str, fit_ids: list[str] | None, concept: str,
                    plan: SweepPlan) -> dict[str, Any]:
    """Per layer-set label, the eraser of `concept` (loaded when its file exists, else fitted and saved)."""
    from interp.erasure import Eraser, fit_eraser

    fit_info = {"split": plan.split, "fit_items": len(fit_ids) if fit_ids else len(spoken.items[:plan.limit]),
                "fit_items_digest": _ids_digest(fit_ids or [i.id for i in spoken.items[:plan.limit]])}
    erasers, missing = {}, []
    for label in plan.layer_map:
        path = _eraser_path(plan.out, set_name, concept, label)
        if path.is_file():
            eraser = Eraser.load(path)
            if eraser.meta.get("sweep", {}).get("fit_items_digest") != fit_info["fit_items_digest"]:
                raise SweepError(f"{path} was fitted on other items than this run's fit half; choose another --out")
            erasers[label] = eraser
            _say(f"skip: eraser {path.name} exists")
        else:
            missing.append(label)
    if not missing:
        return erasers
    sites = sorted({f"llm.layers.{i}" for label in missing for i in plan.layer_map[label]},
                   key=lambda s: int(s.rsplit(".", 1)[1]))
    start = time.perf_counter()
    match = None
    if concept == "random":
        match = int(plan.random_match) if plan.random_match.strip().isdigit() else plan.random_match
    union = fit_eraser(cache, spoken, concept, sites, match=match, text_classes=plan.text_classes, seed=plan.seed,
                       tokenizer=getattr(model, "tokenizer", None), items=fit_ids)
    for label in missing:
        chosen = [f"llm.layers.{i}" for i in plan.layer_map[label]]
        meta = json.loads(json.dumps(union.meta))
        meta["sweep"] = {**fit_info, "set": set_name, "layers": label, "sites": chosen,
                         "note": f"restricted from one fit over {len(sites)} sites (per-site fits are independent)"}
        eraser = Eraser(union.concept, {s: union.sites[s] for s in chosen}, meta)
        eraser.save(_eraser_path(plan.out, set_name, concept, label))
        erasers[label] = eraser
    _say(f"fitted {concept} on {fit_info['fit_items']} items at {len(sites)} sites in "
         f"{time.perf_counter() - start:.1f} s → {', '.join(missing)}")
    return erasers


def _done(path: Path, n_items: int) -> bool:
    from interp.behavior import read_sidecar

    sidecar = read_sidecar(path.with_suffix(".json"))
    return bool(sidecar) and sidecar.get("status") == "done" and sidecar.get("counts", {}).get("items") == n_items


def _clean(model: Any, eval_set: Any, set_name: str, plan: SweepPlan) -> Path:
    from interp.behavior import run_system

    path = plan.out / plan.model / f"{set_name}.jsonl"
    if _done(path, len(eval_set.items)):
        _say(f"skip: clean predictions {path.relative_to(plan.out)} done")
        return path
    start = time.perf_counter()
    path = run_system(model, eval_set, plan.out, system_name=plan.model, spec=plan.model, seed=plan.seed,
                      prompt_style=plan.prompt_style)
    _say(f"clean baseline on {len(eval_set.items)} items in {time.perf_counter() - start:.1f} s")
    return path


def _erased(model: Any, eraser: Any, eval_set: Any, set_name: str, concept: str, label: str,
            plan: SweepPlan) -> Path:
    from interp.erasure import evaluate_erasure

    system = f"{plan.model}+erase-{concept}-L{label}"
    path = plan.out / system / f"{set_name}.jsonl"
    if _done(path, len(eval_set.items)):
        _say(f"skip: predictions {path.relative_to(plan.out)} done")
        return path
    start = time.perf_counter()
    path = evaluate_erasure(model, eraser, eval_set, plan.out, system_name=system, positions=plan.positions,
                            prompt_style=plan.prompt_style)
    _say(f"{concept} at layers {label}: {len(eval_set.items)} items in {time.perf_counter() - start:.1f} s")
    return path


# ---------------------------------------------------------------------------------------------------------------
# table and figure


def _records_by_task(path: Path) -> dict[str, dict[str, dict[str, Any]]]:
    from interp.behavior import read_predictions

    out: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for record in read_predictions(path):
        out[record["task"]][record["id"]] = record
    return out


def _rows_for_set(set_name: str, clean_path: Path, erased: list[tuple[str, str, Any, Path]], fit_items: int,
                  eval_items: int, seed: int) -> list[dict[str, Any]]:
    from interp.stats import accuracy_with_ci, bootstrap_ci

    clean = _records_by_task(clean_path)
    rows = []
    for task, clean_records in clean.items():
        ids = list(clean_records)
        clean_correct = np.array([bool(clean_records[i]["correct"]) for i in ids])
        choices = [clean_records[i].get("n_choices") or 0 for i in ids]
        chance = float(np.mean([1.0 / k for k in choices])) if all(choices) else None
        base = accuracy_with_ci(clean_correct, seed=seed)
        common = {"set": set_name, "task": task, "n_items": len(ids), "fit_items": fit_items,
                  "eval_items": eval_items, "chance": chance, "clean_accuracy": base.value}
        rows.append({**common, "concept": "none (clean)", "layers": "", "sites": 0, "rank_mean": 0.0,
                     "share_of_d": 0.0, "accuracy": base.value, "ci_low": base.low, "ci_high": base.high,
                     "delta": 0.0, "delta_low": 0.0, "delta_high": 0.0})
        for concept, label, eraser, path in erased:
            records = _records_by_task(path).get(task, {})
            if set(records) != set(ids):
                raise SweepError(f"{path} does not hold the same {task} items as the clean run; delete it and rerun")
            correct = np.array([bool(records[i]["correct"]) for i in ids])
            estimate = accuracy_with_ci(correct, seed=seed)
            delta = bootstrap_ci(lambda a, b: float(a.mean() - b.mean()), correct, clean_correct, seed=seed)
            summary = eraser.summary()
            rows.append({**common, "concept": concept, "layers": label, "sites": len(summary),
                         "rank_mean": float(np.mean([s["rank"] for s in summary])),
                         "share_of_d": float(np.mean([s["share"] for s in summary])),
                         "accuracy": estimate.value, "ci_low": estimate.low, "ci_high": estimate.high,
                         "delta": delta.value, "delta_low": delta.low, "delta_high": delta.high})
    return rows


_COLUMNS = ("set", "task", "concept", "layers", "sites", "rank_mean", "share_of_d", "accuracy", "ci_low", "ci_high",
            "delta", "delta_low", "delta_high", "clean_accuracy", "chance", "n_items", "fit_items", "eval_items")


def header_line(plan: SweepPlan) -> str:
    if plan.split == "half":
        how = "erasers fitted on one half of the items (seeded, stratified by task and label), accuracy on the other"
    else:
        how = "erasers fitted on ALL items and accuracy measured on the SAME items (--split none)"
    return (f"{plan.model}, erasure at {plan.positions} positions; {how}; 95% bootstrap CIs over items "
            f"(Δ: paired), seed {plan.seed}")


def format_table(rows: list[dict[str, Any]]) -> str:
    def num(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    lines = [f"{'set':<14s} {'task':<10s} {'concept':<13s} {'layers':<8s} {'rank/layer':>10s} {'share d':>8s} "
             f"{'accuracy [95% CI]':>22s} {'Δ vs clean [95% CI]':>25s} {'chance':>6s} {'n':>4s}"]
    for r in rows:
        acc = f"{r['accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        delta = "" if not r["layers"] else f"{r['delta']:+.3f} [{r['delta_low']:+.3f}, {r['delta_high']:+.3f}]"
        lines.append(f"{r['set'][:14]:<14s} {r['task'][:10]:<10s} {r['concept']:<13s} {r['layers']:<8s} "
                     f"{r['rank_mean']:10.1f} {r['share_of_d']:8.2%} {acc:>22s} {delta:>25s} "
                     f"{num(r['chance'], '.3f'):>6s} {r['n_items']:4d}")
    return "\n".join(lines)


def sweep_figure(rows: list[dict[str, Any]], header: str) -> Any:
    """Accuracy by concept per layer set, one panel per (task, set), clean and chance lines; `header` under
    the title says how the numbers were made."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = list(dict.fromkeys((r["task"], r["set"]) for r in rows))
    columns = min(2, len(panels))
    n_rows = math.ceil(len(panels) / columns)
    figure = make_subplots(rows=n_rows, cols=columns, subplot_titles=[f"{task} ({name})" for task, name in panels],
                           vertical_spacing=0.25 / max(1, n_rows - 1) if n_rows > 1 else 0.1)
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    labels = list(dict.fromkeys(r["layers"] for r in rows if r["layers"]))
    for index, (task, name) in enumerate(panels):
        row, col = index // columns + 1, index % columns + 1
        mine = [r for r in rows if r["task"] == task and r["set"] == name]
        concepts = [c for c in CONCEPT_ORDER if any(r["concept"] == c for r in mine)]
        for k, label in enumerate(labels):
            by_concept = {r["concept"]: r for r in mine if r["layers"] == label}
            ys = [by_concept[c]["accuracy"] if c in by_concept else None for c in concepts]
            plus = [by_concept[c]["ci_high"] - by_concept[c]["accuracy"] if c in by_concept else None for c in concepts]
            minus = [by_concept[c]["accuracy"] - by_concept[c]["ci_low"] if c in by_concept else None for c in concepts]
            text = [f"rank/layer {by_concept[c]['rank_mean']:.1f}" if c in by_concept else "" for c in concepts]
            figure.add_trace(go.Bar(x=concepts, y=ys, name=f"layers {label}", legendgroup=label,
                                    marker_color=palette[k % len(palette)], showlegend=index == 0,
                                    error_y={"type": "data", "symmetric": False, "array": plus, "arrayminus": minus},
                                    hovertext=text, hovertemplate="%{x}, layers " + label +
                                    ": accuracy %{y:.3f}<br>%{hovertext}<extra></extra>"), row=row, col=col)
        clean = next(r for r in mine if not r["layers"])
        figure.add_hline(y=clean["accuracy"], line_dash="dash", line_color="black", row=row, col=col,
                         annotation_text=f"clean {clean['accuracy']:.2f}", annotation_position="top left")
        if clean["chance"] is not None:
            figure.add_hline(y=clean["chance"], line_dash="dot", line_color="gray", row=row, col=col,
                             annotation_text=f"chance {clean['chance']:.2f}", annotation_position="bottom left")
        figure.update_yaxes(range=[0, 1.05], title_text="accuracy", row=row, col=col)
    figure.update_layout(barmode="group", height=380 * n_rows + 80,
                         title={"text": "Accuracy under LEACE erasure, by concept and layer set<br><sup>"
                                + html.escape(header) + "</sup>"})
    return figure


def _write_outputs(rows: list[dict[str, Any]], plan: SweepPlan, meta: dict[str, Any]) -> None:
    from interp.provenance import provenance

    with (plan.out / "sweep.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=_COLUMNS)
        writer.writeheader()
        writer.writerows({k: r[k] for k in _COLUMNS} for r in rows)
    config = {"model": plan.model, "sets": [str(s) for s in plan.sets], "concepts": plan.concepts,
              "layer_sets": {label: layers for label, layers in plan.layer_map.items()}, "positions": plan.positions,
              "limit": plan.limit, "split": plan.split, "random_match": plan.random_match,
              "text_classes": plan.text_classes, "dtype": plan.dtype, "cache_dir": str(plan.cache_dir),
              "seed": plan.seed}
    document = {"header": header_line(plan), "columns": list(_COLUMNS), "rows": rows, "sets": meta,
                "provenance": provenance(command=plan.command, config=config, seed=plan.seed)}
    (plan.out / "sweep.json").write_text(json.dumps(document, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    figure = sweep_figure(rows, header_line(plan))
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(r[k]))}</td>" for k in _COLUMNS) + "</tr>" for r in rows)
    table = ("<table border='1' cellspacing='0' cellpadding='3' style='font:12px monospace;border-collapse:collapse'>"
             "<tr>" + "".join(f"<th>{k}</th>" for k in _COLUMNS) + "</tr>" + cells + "</table>")
    body = (figure.to_html(include_plotlyjs=True, full_html=False) + f"<p>{html.escape(header_line(plan))}</p>"
            + table + "<h3>provenance</h3><pre>" + html.escape(json.dumps(document["provenance"], indent=1))
            + "</pre>")
    (plan.out / "sweep.html").write_text("<!DOCTYPE html><html><head><meta charset='utf-8'><title>erasure sweep"
                                         f"</title></head><body>{body}</body></html>", encoding="utf-8")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


# ---------------------------------------------------------------------------------------------------------------


def run_sweep(plan: SweepPlan, model: Any = None) -> list[dict[str, Any]]:
    import torch

    from interp.behavior import set_name as name_of
    from interp.data.manifest import SpokenSet
    from interp.sites import describe_layers, llm_layers, parse_layers
    from interp.models.mini import load_model

    if plan.threads:
        torch.set_num_threads(plan.threads)
    sets = [SpokenSet.open(path) for path in plan.sets]
    names = [name_of(s.root) for s in sets]
    if len(set(names)) != len(names):
        raise SweepError(f"two sets are called {next(n for n in names if names.count(n) > 1)!r}; rename one folder")
    config = {"model": plan.model, "limit": plan.limit, "split": plan.split, "seed": plan.seed,
              "positions": plan.positions, "random_match": plan.random_match, "text_classes": plan.text_classes,
              "dtype": plan.dtype}
    _check_run_config(plan.out, config)
    started = time.perf_counter()
    model = model if model is not None else load_model(plan.model)
    available = llm_layers(model.sites())
    plan.layer_map = {}
    for spec in plan.layer_sets:
        layers = parse_layers(spec, available, option="layer set", holder=plan.model)
        plan.layer_map[describe_layers(layers, sep="_")] = layers
    sites = [f"llm.layers.{i}" for i in sorted({i for layers in plan.layer_map.values() for i in layers})]
    _say(f"{plan.model} loaded in {time.perf_counter() - started:.1f} s; {len(sets)} set(s), concepts "
         f"{', '.join(plan.concepts)}, layer sets {', '.join(plan.layer_map)}")
    rows, meta = [], {}
    for spoken, name in zip(sets, names):
        items = list(spoken.items[:plan.limit])
        fit_items, eval_items = _split(items, plan.split, plan.seed)
        _say(f"== {name}: {len(items)} items; fit on {len(fit_items)}, evaluate on {len(eval_items)}"
             + (" (the same items: --split none)" if plan.split == "none" else " (disjoint halves)"))
        cache = _ensure_cache(model, spoken, plan.cache_dir / name, sites, plan)
        eval_set = SpokenSet(root=spoken.root, items=tuple(eval_items))
        fit_ids = None if plan.split == "none" and plan.limit is None else [item.id for item in fit_items]
        clean_path = _clean(model, eval_set, name, plan)
        erased = []
        for concept in plan.concepts:
            erasers = _ensure_erasers(model, cache, spoken, name, fit_ids, concept, plan)
            for label in plan.layer_map:
                path = _erased(model, erasers[label], eval_set, name, concept, label, plan)
                erased.append((concept, label, erasers[label], path))
        rows.extend(_rows_for_set(name, clean_path, erased, len(fit_items), len(eval_items), plan.seed))
        meta[name] = {"path": str(spoken.root), "cache": str(plan.cache_dir / name), "items": len(items),
                      "fit_ids": [i.id for i in fit_items], "eval_ids": [i.id for i in eval_items]}
    _write_outputs(rows, plan, meta)
    _say(f"table: {plan.out / 'sweep.csv'} and {plan.out / 'sweep.json'}; figure: {plan.out / 'sweep.html'} "
         f"({time.perf_counter() - started:.1f} s)")
    return rows
