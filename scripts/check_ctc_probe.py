"""Acceptance check: a CTC probe on the final Whisper-base encoder layer reads held-out sentences at 1 − CER ≥ 0.7.

"CTC probe on the final Whisper-base encoder layer, trained on ≥ 1,000 TTS utterances and scored on 200 others
whose sentences it never saw, reaches 1 − CER ≥ 0.7."

Stages (each reused when its output is already in --work):
1. set: all 872 SST-2 dev sentences + 400 AG News texts (stratified by class, seeded), from the packaged copies
   (interp.data.loaders.import_items + select_stratified), spoken by piper into one set (write_spoken_set):
   unique ids, distinct transcripts (checked), so a held-out item's sentence is never a training sentence.
   --n N takes a seeded subset of N of these 1,272 (both sources in proportion) into its own folder;
2. cache: `audio.layers.5` of mini-ultravox (its audio tower is the converted Whisper-base encoder; extraction
   stops after the last site, so the LLM never runs), one row per 20 ms encoder frame, float16, batch 8.
   Items longer than the encoder's 30 s are left out (counted);
3. probe: probes.sweep.run_probes(cache, set, probes=("ctc",), test_fraction=test/items) with 1 torch thread:
   a seeded item split, CTC training with early stopping on a share of the training items, greedy decoding of
   the held-out items, 1 − CER with a 1,000-resample item bootstrap.
Prints: items per source, train/test items, r (CTC frames per encoder row), 1 − CER with its CI, CER, epochs,
example decodes, the wall time of every stage, and PASS/FAIL (or "reduced size" when the run is smaller than
the acceptance run). Writes the report as JSON into --work. Exit status 1 when a full-size run fails.
Full size takes roughly 15-40 min on 2 shared CPU cores (speaking ~2.9 h of audio dominates). Usage:
    python scripts/check_ctc_probe.py --work work/ctc [--n 300 --test 60] [--threads 1] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

SITE = "audio.layers.5"
N_SST2, N_AG_NEWS = 872, 400
MIN_TRAIN, TEST_ITEMS, TARGET = 1000, 200, 0.7
ENCODER_SECONDS = 30.0


def _candidates(seed: int) -> list:
    from interp.data.loaders import DEFAULT_SOURCES, import_items
    from interp.data.text_items import select_stratified
    from interp.resources import resource_path

    sst2 = import_items("sst2", resource_path(DEFAULT_SOURCES["sst2"]))
    ag_news = select_stratified(import_items("ag_news", resource_path(DEFAULT_SOURCES["ag_news"])),
                                limit=N_AG_NEWS, seed=seed)
    items, seen = [], set()
    for item in list(sst2)[:N_SST2] + ag_news:
        key = " ".join(item.transcript.lower().split())
        if key in seen:  # never two items with one sentence: held-out sentences stay unseen
            continue
        seen.add(key)
        items.append(item)
    if len({item.id for item in items}) != len(items):
        raise SystemExit("error: the SST-2 and AG News ids collide; the set needs unique ids")
    return items


def _subset(items: list, n: int | None, seed: int) -> list:
    if n is None or n >= len(items):
        return items
    keep = np.sort(np.random.default_rng(seed).permutation(len(items))[:n])
    return [items[i] for i in keep]


def _build_set(work: Path, args: argparse.Namespace):
    from interp.data.manifest import SpokenSet
    from interp.data.spoken import write_spoken_set
    from interp.provenance import provenance

    items = _subset(_candidates(args.seed), args.n, args.seed)
    folder = work / f"set-{len(items)}"
    start = time.perf_counter()
    if (folder / "manifest.jsonl").is_file():
        spoken = SpokenSet.open(folder)
        how = "reused"
    else:
        config = {"sources": {"sst2": "all dev", "ag_news": f"{N_AG_NEWS} stratified"}, "n": args.n,
                  "seed": args.seed, "engine": args.engine}
        written = write_spoken_set(items, folder, engine=args.engine, seed=args.seed, use_recordings=False,
                                   provenance=provenance(command="scripts/check_ctc_probe.py (set)", config=config,
                                                         seed=args.seed))
        for done, _ in enumerate(written, start=1):
            if done % 100 == 0:
                print(f"  spoken {done}/{len(items)} ({time.perf_counter() - start:.0f} s)", flush=True)
        spoken = SpokenSet.open(folder)
        how = "built"
    transcripts = [" ".join(item.transcript.lower().split()) for item in spoken.items]
    if len(set(transcripts)) != len(transcripts):
        raise SystemExit(f"error: {folder} has repeated transcripts; delete it and rerun")
    tasks = {task: sum(item.task == task for item in spoken.items)
             for task in dict.fromkeys(i.task for i in spoken.items)}
    hours = sum(item.duration for item in spoken.items) / 3600
    seconds = time.perf_counter() - start
    print(f"set: {folder} {how}: {len(spoken.items)} items ({', '.join(f'{t} {c}' for t, c in tasks.items())}), "
          f"all transcripts distinct, {hours:.2f} h of audio; {seconds:.1f} s", flush=True)
    return spoken, seconds


def _extract(work: Path, spoken, args: argparse.Namespace):
    from activations import ActivationCache
    from activations.extract import extract, plan_extraction
    from interp.data.manifest import SpokenSet
    from interp.models.mini import load_model
    from interp.provenance import provenance
    from interp.task_prompts import task_prompt

    folder = work / f"cache-{len(spoken.items)}-{args.site}"
    fits = [item for item in spoken.items if item.duration <= ENCODER_SECONDS]
    start = time.perf_counter()
    if (folder / "manifest.json").is_file():
        cache = ActivationCache.open(folder)
        if len(cache.items) == len(fits):
            seconds = time.perf_counter() - start
            print(f"cache: {folder} reused: {len(cache.items)} items, {cache.rows} rows x {cache.dims[args.site]} "
                  f"({cache.dtype}); {seconds:.1f} s", flush=True)
            return cache, seconds
    model = load_model(args.model)
    loaded = time.perf_counter() - start
    plan = plan_extraction(model, args.site, "audio")
    subset = SpokenSet(root=spoken.root, items=tuple(fits))  # same manifest: the cache names the set
    config = {"model": args.model, "site": args.site, "dtype": "float16", "batch_size": args.batch_size,
              "items": len(fits), "left_out_over_30s": len(spoken.items) - len(fits)}
    state = {"done": 0, "shown": time.perf_counter()}

    def progress(count: int) -> None:
        state["done"] += count
        if time.perf_counter() - state["shown"] > 60:
            state["shown"] = time.perf_counter()
            print(f"  extracted {state['done']}/{len(fits)} ({time.perf_counter() - start:.0f} s)", flush=True)
    extract(model, subset, folder, plan=plan, prompt_for=lambda item: task_prompt(item.task).for_item(item),
            dtype="float16", batch_size=args.batch_size, model_info={"spec": args.model, "class": type(model).__name__},
            provenance=provenance(command="scripts/check_ctc_probe.py (extract)", config=config, seed=None),
            progress=progress)
    cache = ActivationCache.open(folder)
    seconds = time.perf_counter() - start
    print(f"cache: {folder}: {len(cache.items)} items ({len(spoken.items) - len(fits)} over {ENCODER_SECONDS:.0f} s "
          f"left out), {cache.rows} rows x {cache.dims[args.site]} ({cache.dtype}); {seconds:.1f} s "
          f"(model load {loaded:.1f} s)", flush=True)
    return cache, seconds


def _probe(cache, spoken, args: argparse.Namespace):
    import torch

    from probes.sweep import run_probes

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    report = run_probes(cache, spoken, probes=("ctc",), sites=[args.site], test_fraction=args.test / len(cache.items),
                        seed=args.seed)
    seconds = time.perf_counter() - start
    return report, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="folder for the set, the cache and the report")
    parser.add_argument("--n", type=int, default=None, help=f"a seeded subset of the {N_SST2 + N_AG_NEWS} items")
    parser.add_argument("--test", type=int, default=TEST_ITEMS, help="held-out items (default 200)")
    parser.add_argument("--model", default="mini-ultravox")
    parser.add_argument("--site", default=SITE)
    parser.add_argument("--engine", default="piper")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the probe (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    from interp.errors import InterpError
    from interp.provenance import provenance

    started = time.perf_counter()
    try:
        spoken, set_seconds = _build_set(args.work, args)
        if not 2 <= args.test <= len(spoken.items) - 10:
            raise InterpError(f"--test {args.test}: need 2 to {len(spoken.items) - 10} held-out items of "
                              f"{len(spoken.items)}")
        cache, cache_seconds = _extract(args.work, spoken, args)
        report, probe_seconds = _probe(cache, spoken, args)
    except InterpError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    score = report.score(args.site, "ctc")
    extra = score.extra
    by_id = {item.id: item for item in spoken.items}
    train_text = {by_id[i].transcript for i in report.train_items}
    overlap = sum(by_id[i].transcript in train_text for i in report.test_items)
    print(f"probe: {args.site}, train {len(report.train_items)} items, test {len(report.test_items)} items "
          f"(held-out sentences also in training: {overlap}), r = {extra['r']} CTC frames per row, "
          f"{extra['epochs']} epochs (best {extra['best_epoch']}), torch threads {args.threads}; "
          f"{probe_seconds:.1f} s", flush=True)
    print(f"1 - CER = {score.score:.3f} [95% CI {score.low:.3f}, {score.high:.3f}] over {score.n_items} held-out items "
          f"(CER {extra['cer']:.3f})")
    for example in extra["examples"]:
        print(f"  {example['item_id']}\n    ref: {example['reference']}\n    dec: {example['decoded']}")
    full = len(report.train_items) >= MIN_TRAIN and len(report.test_items) >= TEST_ITEMS
    passed = score.score >= TARGET
    total = time.perf_counter() - started
    print(f"time per stage: set {set_seconds:.1f} s, extraction {cache_seconds:.1f} s, probe {probe_seconds:.1f} s; "
          f"total {total:.1f} s")
    verdict = ("PASS" if passed else "FAIL") if full else (
        f"reduced size (acceptance needs >= {MIN_TRAIN} train and {TEST_ITEMS} test items): "
        f"{'would pass' if passed else 'below'} the {TARGET} bar")
    print(f"acceptance (1 - CER >= {TARGET} on {TEST_ITEMS} unseen sentences, >= {MIN_TRAIN} training utterances): "
          f"{verdict}")
    out = args.work / f"ctc-check-{len(spoken.items)}.json"
    out.write_text(json.dumps({
        "site": args.site, "model": args.model, "set": str(spoken.root), "cache": str(cache.path),
        "train_items": len(report.train_items), "test_items": len(report.test_items), "score": score.score,
        "low": score.low, "high": score.high, "extra": extra, "full_size": full, "passed": passed,
        "seconds": {"set": set_seconds, "extraction": cache_seconds, "probe": probe_seconds},
        "provenance": provenance(command="scripts/check_ctc_probe.py",
                                 config={k: str(v) for k, v in vars(args).items()},
                                 seed=args.seed)}, indent=1, default=str) + "\n", encoding="utf-8")
    print(f"report: {out}")
    return 1 if full and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
