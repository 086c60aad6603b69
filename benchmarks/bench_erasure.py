"""What LEACE erasure costs in the forward pass: forward with erasure at 9 LLM layers ÷ plain forward.

Same items, same prepared batches, one process, rounds interleaved (plain, erased, plain, erased, …) so that
load on a shared machine hits both alike. The eraser is a real one: the `text` concept fitted on a cache of
the same items at the 9 layers (extracted first, audio positions, float32), unless --eraser gives a file.
Only `model.logits(batch)` is timed (feature extraction in `prepare` is done once, before).
Prints the ratio of the per-round minima (the least disturbed runs) and of the medians; target ≤ 1.15.
Usage: python benchmarks/bench_erasure.py [--model mini-ultravox] [--data sets/sentiment] [--items 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from activations import ActivationCache
from activations.extract import extract, plan_extraction
from interp.data.manifest import SpokenSet
from interp.erasure import Eraser, apply_eraser, fit_eraser
from interp.models.mini import load_model
from interp.task_prompts import task_prompt

SITES = "llm.layers.0,3,6,9,12,15,18,21,24"
TARGET = 1.15


def _forward(model, batches) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        for batch in batches:
            model.logits(batch)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mini-ultravox")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1] / "sets" / "sentiment")
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--sites", default=SITES)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--eraser", type=Path, default=None, help="an eraser file (default: fit text on the items)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    spoken = SpokenSet.open(args.data)
    items = list(spoken.items[:args.items])
    model = load_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        if args.eraser is not None:
            eraser = Eraser.load(args.eraser)
        else:
            fit_start = time.perf_counter()
            plan = plan_extraction(model, args.sites, "audio")
            extract(model, spoken, Path(tmp) / "cache", plan=plan, dtype="float32", batch_size=args.batch_size,
                    limit=args.items, prompt_for=lambda item: task_prompt(item.task).for_item(item))
            eraser = fit_eraser(ActivationCache.open(Path(tmp) / "cache"), spoken, "text", args.sites,
                                tokenizer=model.tokenizer)
            print(f"fitted the text eraser on {args.items} items in {time.perf_counter() - fit_start:.1f} s "
                  "(extraction + fit)", file=sys.stderr)
    batches = [model.prepare([spoken.load_audio(it) for it in items[i:i + args.batch_size]],
                             [task_prompt(it.task).for_item(it) for it in items[i:i + args.batch_size]])
               for i in range(0, len(items), args.batch_size)]
    sites = list(eraser.sites)

    def erased() -> float:
        with apply_eraser(model, eraser, sites=sites):
            return _forward(model, batches)

    _forward(model, batches[:1])  # warm-up, both paths
    erased()
    plain_times, erased_times = [], []
    for _ in range(args.rounds):
        plain_times.append(_forward(model, batches))
        erased_times.append(erased())
    ranks = ", ".join(f"{e['site'].rsplit('.', 1)[-1]}:{e['rank']}" for e in eraser.summary())
    audio_rows = sum(int(b.audio_mask.sum()) for b in batches)
    tokens = sum(int(b.attention_mask.sum()) for b in batches)
    print(f"{args.model}, {len(items)} items in {len(batches)} batches of {args.batch_size} ({tokens} positions, "
          f"{audio_rows} audio), torch threads {torch.get_num_threads()}, {args.rounds} rounds")
    print(f"eraser: concept {eraser.concept}, {len(sites)} sites, d {eraser.summary()[0]['d']}, rank per layer {ranks}")
    print(f"plain forward:  min {min(plain_times):.3f} s, median {statistics.median(plain_times):.3f} s "
          f"({', '.join(f'{t:.3f}' for t in plain_times)})")
    print(f"erased forward: min {min(erased_times):.3f} s, median {statistics.median(erased_times):.3f} s "
          f"({', '.join(f'{t:.3f}' for t in erased_times)})")
    ratio = min(erased_times) / min(plain_times)
    print(f"erasure forward / plain forward: {ratio:.3f} (min), "
          f"{statistics.median(erased_times) / statistics.median(plain_times):.3f} (median); target <= {TARGET}")


if __name__ == "__main__":
    main()
