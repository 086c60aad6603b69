"""Speed of the vectorised paired bootstrap (`interp.stats.pairwise_kappa`) against a plain loop over resamples.

Random answers of several systems to the same multiple-choice items (correlated through a shared item
difficulty and a shared lure answer) are scored both ways on the same resamples: kappa of every pair and
accuracy of every system. The loop computes kappa with plain numpy per pair and per resample; when it is
asked to run on fewer resamples (--naive-resamples) its time is scaled to all of them, and the output says so.
Both times include drawing the resamples; each is the best of --repeat runs. The two must agree on the
resamples both computed. Takes about 5 s on 2 CPU cores. Usage:
    python benchmarks/bench_stats.py [--items 10000 --systems 6 --resamples 1000 --classes 4 --seed 0]
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np

from interp.estimates import bootstrap_indices
from interp.stats import pairwise_kappa


def _answers(n_items: int, n_systems: int, n_classes: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Gold answers and each system's answers; systems are right more often on easy items and share lures."""
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, n_classes, n_items)
    easiness = rng.random(n_items)
    lure = (gold + rng.integers(1, n_classes, n_items)) % n_classes
    predictions = {}
    for system in range(n_systems):
        skill = 0.55 + 0.35 * system / max(n_systems - 1, 1)
        correct = rng.random(n_items) < np.clip(skill + 0.4 * (easiness - 0.5), 0.0, 1.0)
        other_wrong = (gold + rng.integers(1, n_classes, n_items)) % n_classes
        wrong = np.where(rng.random(n_items) < 0.5, lure, other_wrong)
        predictions[f"system{system}"] = np.where(correct, gold, wrong)
    return gold, predictions


def _naive(gold: np.ndarray, codes: np.ndarray, n_classes: int,
           indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per resample: accuracy of every system and kappa (p_o - p_e) / (1 - p_e) of every pair, one at a time."""
    n_systems = codes.shape[1]
    pairs = list(itertools.combinations(range(n_systems), 2))
    kappa = np.empty((len(indices), len(pairs)))
    accuracy = np.empty((len(indices), n_systems))
    for r, rows in enumerate(indices):
        sample, sample_gold = codes[rows], gold[rows]
        shares = [np.bincount(sample[:, s], minlength=n_classes) / len(rows) for s in range(n_systems)]
        for s in range(n_systems):
            accuracy[r, s] = np.mean(sample[:, s] == sample_gold)
        for p, (a, b) in enumerate(pairs):
            observed = np.mean(sample[:, a] == sample[:, b])
            expected = float(shares[a] @ shares[b])
            kappa[r, p] = 1.0 if expected == 1.0 else (observed - expected) / (1.0 - expected)
    return kappa, accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10000)
    parser.add_argument("--systems", type=int, default=6)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--classes", type=int, choices=(2, 4), default=4)
    parser.add_argument("--naive-resamples", type=int, default=None,
                        help="run the loop on only this many resamples and scale its time (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="report the best of this many runs of each")
    args = parser.parse_args()

    gold, predictions = _answers(args.items, args.systems, args.classes, args.seed)
    n_pairs = args.systems * (args.systems - 1) // 2
    print(f"{args.items} items x {args.systems} systems ({n_pairs} pairs), {args.classes} classes, "
          f"{args.resamples} resamples, best of {args.repeat} runs")

    vectorised = naive = float("inf")
    naive_resamples = min(args.naive_resamples or args.resamples, args.resamples)
    codes = np.stack(list(predictions.values()), axis=1)
    for _ in range(args.repeat):
        start = time.perf_counter()
        result = pairwise_kappa(predictions, gold, n_boot=args.resamples, seed=args.seed)
        vectorised = min(vectorised, time.perf_counter() - start)
        start = time.perf_counter()
        indices = bootstrap_indices(args.items, args.resamples, args.seed)
        kappa, accuracy = _naive(gold, codes, args.classes, indices[:naive_resamples])
        naive = min(naive, (time.perf_counter() - start) * args.resamples / naive_resamples)

    kappa_error = np.max(np.abs(kappa - result.kappa_draws[:naive_resamples]))
    accuracy_error = np.max(np.abs(accuracy - result.accuracy_draws[:naive_resamples]))
    if kappa_error > 1e-12 or accuracy_error > 1e-12:
        raise SystemExit(f"disagreement: kappa {kappa_error:.3g}, accuracy {accuracy_error:.3g}")
    print(f"agreement on {naive_resamples} resamples: max |kappa diff| {kappa_error:.1e}, "
          f"max |accuracy diff| {accuracy_error:.1e}")
    print(f"vectorised: {vectorised:.2f} s")
    scaled = "" if naive_resamples == args.resamples else f" (measured on {naive_resamples} resamples, scaled)"
    print(f"naive: {naive:.2f} s{scaled}")
    print(f"speed-up: {naive / vectorised:.1f}x")


if __name__ == "__main__":
    main()
