"""Bag-of-characters probe: does an item's mean audio state say which characters its transcript holds?

The CTC probe asks whether characters can be read off in order, position by position; this one asks
only whether the pooled state of the whole utterance carries its character counts (28 outputs, from
`probes.targets.bag_of_characters`), a weaker, order-free notion of "the text is in there". Each item is
one row (the mean of its audio rows), so folds and held-out scores are over items by construction.

R² is averaged uniformly over the outputs that vary among the held-out items: a letter absent from them
(often q, x, z in short sets) has no variance to explain, and sklearn's convention (1 if predicted
exactly, else 0) would let such letters swing the score. The interval is a percentile bootstrap over
held-out items (`interp.estimates.bootstrap_ci`, 1,000 resamples).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from interp.errors import InterpError
from interp.estimates import Estimate, bootstrap_ci
from probes.ridge import RidgeAccumulator, fit_ridge, item_folds
from probes.targets import bag_of_characters

__all__ = ["BocResult", "PooledRows", "RELATIVE_LAMBDAS", "boc_probe", "boc_targets", "lambda_grid",
           "r2_over_varying_outputs"]

RELATIVE_LAMBDAS = np.logspace(-6, 6, 25)
"""Ridge λ candidates in units of the mean eigenvalue of the centred scatter matrix Σ(x − x̄)(x − x̄)ᵀ.

Activations are probed unstandardised (their scale differs by orders of magnitude between sites and
models), so a fixed absolute grid would sit at an edge for some site; a relative one does not.
"""

_N_BOOT = 1000


def lambda_grid(scatter_trace: float, d: int) -> np.ndarray:
    """RELATIVE_LAMBDAS × trace(scatter)/d: the λ grid of a ridge probe on features whose scatter has that trace.

    A zero trace (constant features) falls back to the relative grid itself. Returns (25,) float64.
    """
    scale = scatter_trace / d if scatter_trace > 0 else 1.0
    return RELATIVE_LAMBDAS * scale


class PooledRows:
    """Streaming per-item mean of rows: sums and counts (items, d) float64, filled batch by batch."""

    def __init__(self, n_items: int, d: int) -> None:
        self.sums = np.zeros((n_items, d))
        self.counts = np.zeros(n_items, dtype=np.int64)

    def update(self, x: np.ndarray, item: np.ndarray) -> None:
        """Add rows x (rows, d) belonging to items `item` (rows,) int in [0, n_items); summed in float64."""
        if item.size == 0:
            return
        order = np.argsort(item, kind="stable")
        distinct, starts = np.unique(item[order], return_index=True)
        self.sums[distinct] += np.add.reduceat(x[order].astype(np.float64), starts, axis=0)
        self.counts += np.bincount(item, minlength=self.counts.size)

    def means(self, items: np.ndarray) -> np.ndarray:
        """(len(items), d) float64 mean row of each listed item; every one must have a row."""
        if (self.counts[items] == 0).any():
            raise InterpError("an item to pool has no audio rows")
        return self.sums[items] / self.counts[items, None]


def boc_targets(transcripts: Sequence[str]) -> np.ndarray:
    """Character counts of each transcript: (items, 28) float64 (see `bag_of_characters`)."""
    return np.stack([bag_of_characters(text) for text in transcripts])


def r2_over_varying_outputs(y: np.ndarray, prediction: np.ndarray) -> float:
    """Mean over outputs with Σ(y − ȳ)² > 0 of 1 − SSE/SST, on rows (items, k); NaN if no output varies."""
    centred = y - y.mean(axis=0)
    sst = np.einsum("ij,ij->j", centred, centred)
    residual = y - prediction
    sse = np.einsum("ij,ij->j", residual, residual)
    varying = sst > 0
    if not varying.any():
        return float("nan")
    return float(np.mean(1.0 - sse[varying] / sst[varying]))


@dataclass(frozen=True)
class BocResult:
    """Held-out bag-of-characters R² of one site, the λ cross-validation chose, and item counts."""

    score: Estimate
    alpha: float
    cv_r2: float
    n_varying_outputs: int
    n_train_items: int
    n_test_items: int


def boc_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
              n_folds: int, seed: int) -> BocResult:
    """Ridge from pooled states to character counts, λ by item-fold CV on the training items, R² on the test items.

    train_x (items, d), train_y (items, 28), likewise for test; float. Memory O(items · d + folds · d²).
    """
    if test_x.shape[0] < 2:
        raise InterpError(f"bag-of-characters R² needs at least 2 held-out items, got {test_x.shape[0]}")
    acc = RidgeAccumulator(n_folds)
    acc.update(train_x, train_y, item_folds(np.arange(train_x.shape[0]), n_folds, seed))
    scatter = float(np.sum((train_x - train_x.mean(axis=0)) ** 2))
    model = fit_ridge(acc, lambda_grid(scatter, train_x.shape[1]))
    prediction = model.predict(test_x)
    score = bootstrap_ci(r2_over_varying_outputs, np.asarray(test_y, dtype=np.float64), prediction,
                         n_boot=_N_BOOT, seed=seed)
    varying = int(np.count_nonzero(np.ptp(test_y, axis=0) > 0))
    return BocResult(score, model.alpha, model.best_score, varying, train_x.shape[0], test_x.shape[0])
