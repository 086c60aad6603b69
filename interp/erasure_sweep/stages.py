"""The sweep's stages, each skipped when its output is already there: cache, split, erasers, clean and erased runs.

Every stage logs one line through the `interp.erasure_sweep` logger (what it did, or `skip: …`); the script and
the CLI show those lines.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from activations import ActivationCache
from activations.extract import dataset_identity, extract, plan_extraction
from interp.behavior import read_sidecar, run_system
from interp.behavior import set_name as name_of
from interp.data.manifest import Item, SpokenSet
from interp.erasure import Eraser, fit_eraser
from interp.erasure_eval import evaluate_erasure
from interp.erasure_sweep.outputs import ErasedRun, rows_for_set, write_outputs
from interp.erasure_sweep.plan import RESULT_KEYS, SweepError, SweepPlan
from interp.erasure_sweep.specs import ConceptSpec
from interp.io import write_json_atomic
from interp.models.base import SpeechLM, describe_model, other_weights
from interp.provenance import provenance
from interp.sites import describe_layers, llm_layers, parse_layers
from interp.task_prompts import task_prompt

__all__ = ["run_sweep"]

_log = logging.getLogger("interp.erasure_sweep")


def _split(items: list[Item], how: str, seed: int) -> tuple[list[Item], list[Item]]:
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


def _check_run_config(plan: SweepPlan) -> None:
    """Refuse a RUN folder made with other numbers-changing settings; record this plan's otherwise."""
    path, config = plan.out / "sweep_config.json", plan.result_config()
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        changed = [k for k in RESULT_KEYS if previous.get(k) != config.get(k)]
        if changed:
            key = changed[0]
            raise SweepError(f"{plan.out} holds a sweep made with {key} {previous.get(key)!r}, not "
                             f"{config.get(key)!r}; choose another --out")
    plan.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, config, indent=1)


def _reusable_cache(model: SpeechLM, spoken: SpokenSet, cache_dir: Path, sites: list[str],
                    plan: SweepPlan) -> ActivationCache | None:
    """The cache already at cache_dir, when it was made from this model, set and sites (None: there is none);
    a cache made otherwise is refused."""
    if not (cache_dir / "manifest.json").is_file():
        return None
    cache = ActivationCache.open(cache_dir)
    missing_sites = [s for s in sites if s not in cache.sites]
    changed = other_weights(cache.header.model_info, model, plan.model)
    if cache.model != model.name or changed or cache.header.dataset != dataset_identity(spoken) or missing_sites:
        why = (f"model {cache.model}" if cache.model != model.name else
               f"other weights ({cache.header.model_info.get('weights')})" if changed else
               f"sites without {missing_sites[0]}" if missing_sites else "another version of the set")
        raise SweepError(f"the cache {cache_dir} was made with {why}; give another --cache-dir")
    return cache


def _ensure_cache(model: SpeechLM, spoken: SpokenSet, cache_dir: Path, sites: list[str],
                  plan: SweepPlan) -> ActivationCache:
    needed = [item.id for item in spoken.items[:plan.limit]]
    dtype = plan.dtype
    cache = _reusable_cache(model, spoken, cache_dir, sites, plan)
    if cache is not None:
        have = {meta.id for meta in cache.items}
        if all(i in have for i in needed):
            _log.info(f"skip: cache {cache_dir} holds all {len(needed)} items ({len(cache.sites)} sites)")
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
    _log.info(f"extracted {len(needed)} items, {len(sites)} sites ({dtype}) into {cache_dir} in "
              f"{time.perf_counter() - start:.1f} s")
    return ActivationCache.open(cache_dir)


def _eraser_path(run: Path, set_name: str, spec: ConceptSpec, label: str) -> Path:
    return run / "erasers" / f"{set_name}-{spec.slug}-{label}.safetensors"


def _ensure_erasers(model: SpeechLM, cache: ActivationCache, spoken: SpokenSet, set_name: str,
                    fit_ids: list[str] | None, spec: ConceptSpec, plan: SweepPlan) -> dict[str, Eraser]:
    """Per layer-set label, the eraser of `spec` (loaded when its file exists, else fitted and saved)."""
    fit_info = {"split": plan.split, "fit_items": len(fit_ids) if fit_ids else len(spoken.items[:plan.limit]),
                "fit_items_digest": _ids_digest(fit_ids or [i.id for i in spoken.items[:plan.limit]])}
    erasers, missing = {}, []
    for label in plan.layer_map:
        path = _eraser_path(plan.out, set_name, spec, label)
        if path.is_file():
            eraser = Eraser.load(path)
            if eraser.meta.get("sweep", {}).get("fit_items_digest") != fit_info["fit_items_digest"]:
                raise SweepError(f"{path} was fitted on other items than this run's fit half; choose another --out")
            erasers[label] = eraser
            _log.info(f"skip: eraser {path.name} exists")
        else:
            missing.append(label)
    if not missing:
        return erasers
    sites = sorted({f"llm.layers.{i}" for label in missing for i in plan.layer_map[label]},
                   key=lambda s: int(s.rsplit(".", 1)[1]))
    start = time.perf_counter()
    options = spec.fit_options(text_classes=plan.text_classes, random_match=plan.random_match)
    union = fit_eraser(cache, spoken, sites=sites, seed=plan.seed, tokenizer=getattr(model, "tokenizer", None),
                       items=fit_ids, **options)
    for label in missing:
        chosen = [f"llm.layers.{i}" for i in plan.layer_map[label]]
        meta = json.loads(json.dumps(union.meta))
        if "variance_match" in meta["concept"]:
            meta["concept"]["variance_match"] = {s: meta["concept"]["variance_match"][s] for s in chosen}
        meta["sweep"] = {**fit_info, "set": set_name, "layers": label, "sites": chosen, "spec": spec.name,
                         "rank": spec.rank,
                         "note": f"restricted from one fit over {len(sites)} sites (per-site fits are independent)"}
        eraser = Eraser(union.concept, {s: union.sites[s] for s in chosen}, meta)
        eraser.save(_eraser_path(plan.out, set_name, spec, label))
        erasers[label] = eraser
    _log.info(f"fitted {spec.name} on {fit_info['fit_items']} items at {len(sites)} sites in "
              f"{time.perf_counter() - start:.1f} s → {', '.join(missing)}")
    return erasers


def _done(path: Path, n_items: int) -> bool:
    sidecar = read_sidecar(path.with_suffix(".json"))
    return bool(sidecar) and sidecar.get("status") == "done" and sidecar.get("counts", {}).get("items") == n_items


def _clean(model: SpeechLM, eval_set: SpokenSet, set_name: str, plan: SweepPlan) -> Path:
    path = plan.out / plan.model / f"{set_name}.jsonl"
    if _done(path, len(eval_set.items)):
        _log.info(f"skip: clean predictions {path.relative_to(plan.out)} done")
        return path
    start = time.perf_counter()
    path = run_system(model, eval_set, plan.out, system_name=plan.model, spec=plan.model, seed=plan.seed,
                      prompt_style=plan.prompt_style)
    _log.info(f"clean baseline on {len(eval_set.items)} items in {time.perf_counter() - start:.1f} s")
    return path


def _erased(model: SpeechLM, eraser: Eraser, eval_set: SpokenSet, set_name: str, spec: ConceptSpec, label: str,
            plan: SweepPlan) -> Path:
    system = f"{plan.model}+erase-{spec.slug}-L{label}"
    path = plan.out / system / f"{set_name}.jsonl"
    if _done(path, len(eval_set.items)):
        _log.info(f"skip: predictions {path.relative_to(plan.out)} done")
        return path
    start = time.perf_counter()
    path = evaluate_erasure(model, eraser, eval_set, plan.out, system_name=system, positions=plan.positions,
                            prompt_style=plan.prompt_style)
    _log.info(f"{spec.name} at layers {label}: {len(eval_set.items)} items in {time.perf_counter() - start:.1f} s")
    return path


def _resolve_layer_sets(model: SpeechLM, plan: SweepPlan) -> list[str]:
    """Fill plan.layer_map (label → layers) from the plan's specs; returns the union's sites, in layer order."""
    available = llm_layers(model.sites())
    plan.layer_map = {}
    for spec in plan.layer_sets:
        layers = parse_layers(spec, available, option="layer set", holder=plan.model)
        plan.layer_map[describe_layers(layers, sep="_")] = layers
    return [f"llm.layers.{i}" for i in sorted({i for layers in plan.layer_map.values() for i in layers})]


def _sweep_set(model: SpeechLM, spoken: SpokenSet, name: str, sites: list[str],
               plan: SweepPlan) -> tuple[list[dict], dict]:
    """Every stage for one set: (its table rows, its entry in sweep.json's `sets`)."""
    items = list(spoken.items[:plan.limit])
    fit_items, eval_items = _split(items, plan.split, plan.seed)
    _log.info(f"== {name}: {len(items)} items; fit on {len(fit_items)}, evaluate on {len(eval_items)}"
              + (" (the same items: --split none)" if plan.split == "none" else " (disjoint halves)"))
    cache = _ensure_cache(model, spoken, plan.cache_dir / name, sites, plan)
    eval_set = SpokenSet(root=spoken.root, items=tuple(eval_items))
    fit_ids = None if plan.split == "none" and plan.limit is None else [item.id for item in fit_items]
    clean_path = _clean(model, eval_set, name, plan)
    erased = []
    for spec in plan.specs:
        erasers = _ensure_erasers(model, cache, spoken, name, fit_ids, spec, plan)
        for label in plan.layer_map:
            path = _erased(model, erasers[label], eval_set, name, spec, label, plan)
            erased.append(ErasedRun(spec.name, label, erasers[label], path, rank=spec.rank))
    rows = rows_for_set(name, clean_path, erased, len(fit_items), len(eval_items), plan.seed)
    return rows, {"path": str(spoken.root), "cache": str(plan.cache_dir / name), "items": len(items),
                  "fit_ids": [i.id for i in fit_items], "eval_ids": [i.id for i in eval_items]}


def run_sweep(plan: SweepPlan, model: SpeechLM | None = None) -> list[dict]:
    """Run every stage for every set of the plan (see interp.erasure_sweep); returns the table's rows.

    model: the loaded plan.model (default: loaded here). Raises SweepError for a RUN made otherwise."""
    from interp.models.mini import load_model  # every architecture's transformers classes: seconds

    if plan.threads:
        torch.set_num_threads(plan.threads)
    sets = [SpokenSet.open(path) for path in plan.sets]
    names = [name_of(s.root) for s in sets]
    if len(set(names)) != len(names):
        raise SweepError(f"two sets are called {next(n for n in names if names.count(n) > 1)!r}; rename one folder")
    _check_run_config(plan)
    started = time.perf_counter()
    model = model if model is not None else load_model(plan.model)
    sites = _resolve_layer_sets(model, plan)
    _log.info(f"{plan.model} loaded in {time.perf_counter() - started:.1f} s; {len(sets)} set(s), concepts "
              f"{', '.join(plan.concepts)}, layer sets {', '.join(plan.layer_map)}")
    rows, meta = [], {}
    for spoken, name in zip(sets, names):
        set_rows, meta[name] = _sweep_set(model, spoken, name, sites, plan)
        rows.extend(set_rows)
    write_outputs(rows, plan, meta)
    _log.info(f"table: {plan.out / 'sweep.csv'} and {plan.out / 'sweep.json'}; figure: {plan.out / 'sweep.html'} "
              f"({time.perf_counter() - started:.1f} s)")
    return rows
