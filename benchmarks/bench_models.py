"""Throughput of mini-cascade and mini-ultravox on CPU, and peak memory with both loaded.

Each system answers the same forced-choice items (the topic suite, spoken by piper); the baseline,
run in the same process, is the oracle (SmolLM2 reading the gold transcript), so the ratios show what
hearing the audio costs. Peak RSS is read from the OS after both models are loaded and used.
Takes about two minutes on 2 CPU cores. Usage: python benchmarks/bench_models.py [--n 24]
"""

from __future__ import annotations

import argparse
import resource
import time

from interp.data.tasks import synthesize_suite
from interp.data.tts import open_engine, vary_settings
from interp.models.mini import load_model

PROMPT = "What is this news about?\nNews: <|audio|>\nAnswer with one word: World, Sports, Business or Science."
CHOICES = ["World", "Sports", "Business", "Science"]


def _items_per_second(answer, inputs) -> float:
    start = time.perf_counter()
    for sample in inputs:
        answer(sample)
    return len(inputs) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=24, help="items per system (default 24)")
    args = parser.parse_args()
    import numpy as np

    items = synthesize_suite("topic", n=args.n, seed=3)
    piper = open_engine("piper")
    rng = np.random.default_rng(0)
    audio = [piper.speak(item.transcript, vary_settings("piper", rng)).samples for item in items]
    oracle, cascade, ultravox = load_model("oracle"), load_model("mini-cascade"), load_model("mini-ultravox")
    rows = [
        ("oracle (baseline)", _items_per_second(lambda t: oracle.score_choices(t, PROMPT, CHOICES),
                                                [item.transcript for item in items])),
        ("mini-cascade", _items_per_second(lambda a: cascade.score_choices(a, PROMPT, CHOICES), audio)),
        ("mini-ultravox", _items_per_second(lambda a: ultravox.score_choices(a, PROMPT, CHOICES), audio)),
    ]
    baseline = rows[0][1]
    print(f"{args.n} topic items, 4 choices each, CPU")
    print(f"{'system':20s} {'items/s':>8s} {'vs oracle':>10s}")
    for name, rate in rows:
        print(f"{name:20s} {rate:8.2f} {rate / baseline:10.2f}")
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"peak RSS with oracle, mini-cascade and mini-ultravox loaded (one shared SmolLM2): {peak_gb:.2f} GB")


if __name__ == "__main__":
    main()
