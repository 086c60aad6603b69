"""What caching activations costs: extraction ÷ plain forward, streaming read speed, memory vs items.

1. Same items, same batches, one process: the plain forward (audio → batch → logits) against the
   extraction loop writing 9 LLM layers at audio positions in float16 (hooks + copies + HDF5 shards).
   The plain forward is timed before and after the extraction and averaged. Extraction stops the pass
   after its last site, so the sites end at the LLM's last layer: both runs compute every layer, and
   extraction skips only the unembedding.
2. Streaming read of one site (`ActivationCache.iter_batches`) of a synthetic float16 cache, in MB/s
   of decoded float32 rows handed to the caller.
3. Peak RSS of an extraction process at 100 and at 1,000 items (a fresh process each): rows go to disk
   shard by shard, so memory must not grow with the number of items.
Usage: python benchmarks/bench_extract.py [--model mini-ultravox] [--items 32] [--rss-model tiny-ultravox]
Against nnsight and TransformerLens on the same items and sites: benchmarks/bench_extract_peers.py.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from activations import ActivationCache, CacheHeader, CacheWriter, ItemMeta, ItemRows
from activations.extract import extract, plan_extraction
from interp.data.manifest import SpokenSet
from interp.models.mini import load_model
from interp.task_prompts import task_prompt

SITES = "llm.layers.5,8,11,14,17,20,23,26,29"  # ends at the last layer: the whole LLM runs in both

_RSS_CHILD = """
import json, sys
from pathlib import Path
from activations.extract import extract, plan_extraction
from interp.data.manifest import SpokenSet
from interp.models.mini import load_model
from interp.task_prompts import task_prompt
model_name, data, out, limit, sites = sys.argv[1:6]
model = load_model(model_name)
spoken = SpokenSet.open(Path(data))
extract(model, spoken, Path(out), plan=plan_extraction(model, sites, "audio"), limit=int(limit),
        prompt_for=lambda item: task_prompt(item.task).for_item(item), batch_size=8)
peak_kb = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])  # ru_maxrss inherits the parent's
print(json.dumps({"peak_rss_mb": peak_kb / 1024}))
"""


def _spoken_set(folder: Path, n: int) -> SpokenSet:
    """A pitch-suite set spoken by espeak (fast to make; the model does not care what is said)."""
    subprocess.run([sys.executable, "-m", "interp", "data", "synth", "pitch", "--n", str(n), "--seed", "0",
                    "--out", str(folder)], check=True, capture_output=True)
    return SpokenSet.open(folder)


def _plain_forward(model, spoken: SpokenSet, items, batch_size: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        batch = model.prepare([spoken.load_audio(it) for it in chunk],
                              [task_prompt(it.task).for_item(it) for it in chunk])
        with torch.no_grad():
            model.logits(batch)
    return time.perf_counter() - start


def _overhead(args, spoken: SpokenSet, work: Path) -> None:
    model = load_model(args.model)
    items = list(spoken.items[:args.items])
    plan = plan_extraction(model, args.sites, "audio")
    _plain_forward(model, spoken, items[:args.batch_size], args.batch_size)  # warm-up
    before = _plain_forward(model, spoken, items, args.batch_size)
    start = time.perf_counter()
    extract(model, spoken, work / "overhead", plan=plan, dtype="float16", batch_size=args.batch_size,
            limit=args.items, prompt_for=lambda item: task_prompt(item.task).for_item(item))
    extraction = time.perf_counter() - start
    after = _plain_forward(model, spoken, items, args.batch_size)
    plain = (before + after) / 2
    print(f"{args.model}, {args.items} items, batch {args.batch_size}, {len(plan.sites)} sites ({args.sites}), float16")
    print(f"plain forward: {plain:.2f} s (runs: {before:.2f}, {after:.2f})")
    print(f"extraction:    {extraction:.2f} s")
    print(f"extraction / plain forward: {extraction / plain:.3f}")


def _read_speed(work: Path, rows: int, dim: int) -> None:
    header = CacheHeader(model="synthetic", sites={"s": dim}, dtype="float16", positions="audio", dataset="synthetic")
    rng = np.random.default_rng(0)
    per_item = 250
    with CacheWriter.open(work / "read", header, items_per_shard=64) as writer:
        for index in range(rows // per_item):
            edges = np.arange(per_item + 1, dtype=np.float32) * 0.16
            writer.add(ItemMeta(id=f"i{index:06d}", index=index, transcript="x", label=None, duration=40.0),
                       ItemRows(pos=np.arange(per_item), kind=np.zeros(per_item, np.uint8), t_start=edges[:-1],
                                t_end=edges[1:], token_id=np.full(per_item, -1),
                                sites={"s": rng.standard_normal((per_item, dim), dtype=np.float32)}))
    cache = ActivationCache.open(work / "read")
    start, total = time.perf_counter(), 0
    for x, _ in cache.iter_batches("s", batch_rows=65536):
        total += x.nbytes
    seconds = time.perf_counter() - start
    print(f"streaming read of one site: {cache.rows} rows x {dim} float16 -> float32, {total / 1e6:.0f} MB in "
          f"{seconds:.2f} s = {total / 1e6 / seconds:.0f} MB/s")


def _rss(args, folder: Path, work: Path) -> None:
    for n in args.rss_items:
        out = subprocess.run([sys.executable, "-c", _RSS_CHILD, args.rss_model, str(folder), str(work / f"rss{n}"),
                              str(n), args.rss_sites], check=True, capture_output=True, text=True)
        peak = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]
        print(f"peak RSS extracting {n} items with {args.rss_model} ({args.rss_sites}): {peak:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mini-ultravox")
    parser.add_argument("--sites", default=SITES)
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--read-rows", type=int, default=200_000)
    parser.add_argument("--read-dim", type=int, default=576)
    parser.add_argument("--rss-model", default="tiny-ultravox")
    parser.add_argument("--rss-sites", default="llm.layers.*")
    parser.add_argument("--rss-items", type=int, nargs="+", default=[100, 1000])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        spoken = _spoken_set(work / "set", max(max(args.rss_items), args.items))
        _overhead(args, spoken, work)
        _read_speed(work, args.read_rows, args.read_dim)
        _rss(args, work / "set", work)


if __name__ == "__main__":
    main()
