"""A statistic with its bootstrap interval: the `Estimate` record and the one resampler every interval uses.

Base layer, so that probes, the lens and the run statistics share one definition of an interval (and one stream
of resamples per seed) without importing each other. The vectorised intervals of paired comparisons (kappa,
accuracy differences) live in interp.stats and draw their resamples from `bootstrap_indices` here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from interp.errors import InterpError

__all__ = ["Estimate", "bootstrap_indices", "bootstrap_ci", "estimate_dict", "check_bootstrap",
           "percentile_interval", "same_length"]


@dataclass(frozen=True)
class Estimate:
    """A statistic on all n items with its bootstrap percentile interval [low, high].

    low / high are numpy's (linear) quantiles (1 - level) / 2 and (1 + level) / 2 of the resampled statistic.
    """

    value: float
    low: float
    high: float
    n: int


def estimate_dict(estimate: Estimate) -> dict[str, float | int]:
    """The JSON form of an estimate in result files: {"value", "low", "high", "n"}."""
    return {"value": estimate.value, "low": estimate.low, "high": estimate.high, "n": estimate.n}


def same_length(arrays: Mapping[str, np.ndarray]) -> int:
    """The common length of the named arrays; InterpError naming them when they differ."""
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) != 1:
        found = ", ".join(f"{name}={length}" for name, length in lengths.items())
        raise InterpError(f"one value per item expected, got lengths {found}")
    return next(iter(lengths.values()))


def check_bootstrap(n_boot: int, level: float) -> None:
    """InterpError unless n_boot >= 1 and 0 < level < 1."""
    if n_boot < 1:
        raise InterpError(f"n_boot must be at least 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise InterpError(f"level must lie strictly between 0 and 1, got {level}")


def percentile_interval(draws: np.ndarray, level: float) -> np.ndarray:
    """Percentile interval per column: rows (low, high) at quantiles (1 - level) / 2 and (1 + level) / 2."""
    return np.quantile(draws, [(1.0 - level) / 2.0, (1.0 + level) / 2.0], axis=0)


def bootstrap_indices(n_items: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """The (n_boot, n_items) item indices of the bootstrap resamples: numpy Generator(seed), with replacement.

    Every interval of the toolkit draws its resamples here, so one seed means the same resamples everywhere.
    """
    if n_items < 1:
        raise InterpError(f"cannot resample {n_items} items")
    if n_boot < 1:
        raise InterpError(f"n_boot must be at least 1, got {n_boot}")
    return np.random.default_rng(seed).integers(0, n_items, size=(n_boot, n_items))


def bootstrap_ci(statistic: Callable[..., float], *arrays: object, n_boot: int = 1000, level: float = 0.95,
                 seed: int = 0) -> Estimate:
    """statistic(*arrays) with a percentile bootstrap interval over items.

    All arrays are indexed by the same item and resampled with the same indices (a paired bootstrap), e.g.
    `bootstrap_ci(lambda a, b: accuracy(a) - accuracy(b), correct_a, correct_b)`. Calls `statistic` once per
    resample; interp.stats' `accuracy_with_ci`, `kappa_with_ci` and `pairwise_kappa` are the vectorised forms.
    """
    if not arrays:
        raise InterpError("bootstrap_ci needs at least one array to resample")
    check_bootstrap(n_boot, level)
    data = [np.asarray(array) for array in arrays]
    if any(array.ndim == 0 for array in data):
        raise InterpError("bootstrap_ci resamples arrays indexed by item along axis 0, got a scalar")
    n = same_length({f"array {i}": array for i, array in enumerate(data)})
    draws = np.array([statistic(*(array[rows] for array in data)) for rows in bootstrap_indices(n, n_boot, seed)])
    low, high = percentile_interval(draws, level)
    return Estimate(float(statistic(*data)), float(low), float(high), n)
