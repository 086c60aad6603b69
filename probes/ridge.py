"""Streaming ridge regression with λ chosen by cross-validation over item folds.

A probe's rows (millions of audio positions × d ≤ ~1,000 features) never fit in memory together, so
rows are reduced batch by batch to per-fold sufficient statistics: the count, the means and the centred
co-moments Σ(x − x̄)(x − x̄)ᵀ, Σ(x − x̄)(y − ȳ)ᵀ and Σ(y − ȳ)². They merge exactly (Chan et al.'s
pairwise update), so a fit with an intercept, and every fold's held-out error, are computed from them
exactly, in memory O(folds · d²), without revisiting a row. Folds hold whole items, so held-out R² asks
whether a probe generalises to unseen utterances rather than to neighbouring frames of the same one.

The fits reproduce scikit-learn: with a fixed λ the coefficients are those of
`sklearn.linear_model.Ridge(alpha=λ)`, and the chosen λ is `RidgeCV(alphas=grid, cv=folds).alpha_`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from interp.errors import InterpError

__all__ = ["RidgeAccumulator", "RidgeResult", "fit_ridge", "item_folds", "r2_score_streaming"]

log = logging.getLogger(__name__)


@dataclass
class _Moments:
    """Count, means and centred co-moments of a set of (x, y) rows: enough for an exact centred fit."""

    n: int
    mean_x: np.ndarray  # (d,)
    mean_y: np.ndarray  # (k,)
    cxx: np.ndarray  # (d, d) Σ (x − x̄)(x − x̄)ᵀ
    cxy: np.ndarray  # (d, k) Σ (x − x̄)(y − ȳ)ᵀ
    cyy: np.ndarray  # (k,)   Σ (y − ȳ)², per output

    @classmethod
    def zeros(cls, d: int, k: int) -> _Moments:
        return cls(0, np.zeros(d), np.zeros(k), np.zeros((d, d)), np.zeros((d, k)), np.zeros(k))

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray) -> _Moments:
        """Moments of one batch: x (n, d) and y (n, k) float64, n ≥ 1."""
        mean_x, mean_y = x.mean(axis=0), y.mean(axis=0)
        xc, yc = x - mean_x, y - mean_y
        return cls(x.shape[0], mean_x, mean_y, xc.T @ xc, xc.T @ yc, np.einsum("ij,ij->j", yc, yc))

    def absorb(self, other: _Moments) -> None:
        """Merge `other` into self in place (pairwise update: exact, and stable when means are large)."""
        if other.n == 0:
            return
        if self.n == 0:
            self.n, self.mean_x, self.mean_y = other.n, other.mean_x.copy(), other.mean_y.copy()
            self.cxx, self.cxy, self.cyy = other.cxx.copy(), other.cxy.copy(), other.cyy.copy()
            return
        n = self.n + other.n
        dx, dy = other.mean_x - self.mean_x, other.mean_y - self.mean_y
        weight = self.n * other.n / n
        self.cxx += other.cxx + weight * np.outer(dx, dx)
        self.cxy += other.cxy + weight * np.outer(dx, dy)
        self.cyy += other.cyy + weight * dy * dy
        self.mean_x += dx * (other.n / n)
        self.mean_y += dy * (other.n / n)
        self.n = n


def _merged(parts: Iterable[_Moments], d: int, k: int) -> _Moments:
    total = _Moments.zeros(d, k)
    for part in parts:
        total.absorb(part)
    return total


class RidgeAccumulator:
    """Per-fold sufficient statistics of probe rows, fed batch by batch; never stores a row.

    Feature and output counts are fixed by the first `update`; y given as (n,) makes a single-output
    probe (coef (d,), scalar intercept), y given as (n, k) a k-output one (coef (k, d)), as in sklearn.
    """

    def __init__(self, n_folds: int) -> None:
        if n_folds < 2:
            raise InterpError(f"cross-validation needs at least 2 folds, got {n_folds}")
        self.n_folds = n_folds
        self.n_features = 0
        self.n_outputs = 0
        self.single_output = False
        self.folds: list[_Moments] = []

    def update(self, x: np.ndarray, y: np.ndarray, fold: np.ndarray) -> None:
        """Add a batch: x (n, d), y (n,) or (n, k), fold (n,) ints in [0, n_folds). Accumulates in float64."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        fold = np.asarray(fold)
        if x.ndim != 2 or y.ndim not in (1, 2) or fold.ndim != 1 or not x.shape[0] == y.shape[0] == fold.shape[0]:
            raise InterpError(
                f"expected x (n, d), y (n,) or (n, k) and fold (n,); got {x.shape}, {y.shape} and {fold.shape}"
            )
        y2 = y.reshape(y.shape[0], -1)
        if not self.folds:
            self.n_features, self.n_outputs, self.single_output = x.shape[1], y2.shape[1], y.ndim == 1
            self.folds = [_Moments.zeros(self.n_features, self.n_outputs) for _ in range(self.n_folds)]
        elif x.shape[1] != self.n_features or y2.shape[1] != self.n_outputs or (y.ndim == 1) != self.single_output:
            expected_y = "(n,)" if self.single_output else f"(n, {self.n_outputs})"
            raise InterpError(
                f"batch has x {x.shape} and y {y.shape}; "
                f"earlier batches had x (n, {self.n_features}) and y {expected_y}"
            )
        if x.shape[0] == 0:
            return
        if not np.issubdtype(fold.dtype, np.integer) or fold.min() < 0 or fold.max() >= self.n_folds:
            raise InterpError(f"fold ids must be integers in [0, {self.n_folds}); see item_folds")
        if not (np.isfinite(x).all() and np.isfinite(y2).all()):
            raise InterpError("probe rows contain NaN or inf: drop rows without a target (e.g. unvoiced) first")
        for f in np.unique(fold):
            rows = fold == f
            self.folds[f].absorb(_Moments.of(x[rows], y2[rows]))

    @property
    def rows_per_fold(self) -> np.ndarray:
        """(n_folds,) int64 row counts."""
        return np.array([m.n for m in self.folds] if self.folds else [0] * self.n_folds, dtype=np.int64)


@dataclass(frozen=True)
class RidgeResult:
    """A ridge probe refitted on all rows with the λ that cross-validation chose, and its CV scores.

    cv_r2[i, f] is the held-out R² on fold f of the fit on the other folds with lambdas[i] (averaged
    uniformly over outputs), as sklearn's `r2_score` computes it on that fold.
    """

    alpha: float
    lambdas: np.ndarray  # (L,)
    cv_r2: np.ndarray  # (L, folds)
    coef: np.ndarray  # (d,) single output, (k, d) otherwise
    intercept: float | np.ndarray  # float single output, (k,) otherwise
    n_rows: int

    @property
    def cv_mean_r2(self) -> np.ndarray:
        """(L,) held-out R² averaged over folds: the score λ is chosen by."""
        return self.cv_r2.mean(axis=1)

    @property
    def best_score(self) -> float:
        """Mean held-out R² of the chosen λ (sklearn's `RidgeCV.best_score_`)."""
        return float(self.cv_mean_r2.max())

    def predict(self, x: np.ndarray) -> np.ndarray:
        """x (n, d) → (n,) single output or (n, k)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.coef.shape[-1]:
            raise InterpError(f"probe expects x of shape (n, {self.coef.shape[-1]}), got {x.shape}")
        return x @ self.coef.T + self.intercept


def _r2(sse: np.ndarray, sst: np.ndarray) -> float:
    """Uniform mean over outputs of 1 − SSE/SST, with sklearn's convention for a constant target
    (SST = 0: 1 if the prediction is exact, else 0)."""
    safe = np.where(sst > 0, sst, 1.0)
    per_output = np.where(sst > 0, 1.0 - sse / safe, np.where(sse == 0, 1.0, 0.0))
    return float(per_output.mean())


def _check_lambdas(lambdas: Sequence[float] | np.ndarray) -> np.ndarray:
    grid = np.asarray(lambdas, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0 or not np.all(np.isfinite(grid)) or not np.all(grid > 0):
        raise InterpError(f"the ridge λ grid must be a non-empty list of positive numbers, got {lambdas!r}")
    return grid


def fit_ridge(acc: RidgeAccumulator, lambdas: Sequence[float] | np.ndarray) -> RidgeResult:
    """Choose λ by item-fold cross-validation, then refit on all rows with it.

    For each fold f, the fit on the other folds (with intercept: centred on the training means) is
    scored on fold f from its moments alone: with w the training weights, b = ȳ_train − x̄_trainᵀw and
    δ = ȳ_f − x̄_fᵀw − b, the held-out SSE per output is Cyy_f − 2wᵀCxy_f + wᵀCxx_f w + n_f δ², and
    SST is Cyy_f (the fold's own mean, as `r2_score`). One eigendecomposition of each training Cxx serves
    every λ.

    The rule is sklearn's `RidgeCV(alphas=lambdas, cv=<the same folds>)` (a GridSearchCV over Ridge
    with its default score): the λ with the highest R² averaged over folds with equal weight, R² itself
    averaged uniformly over outputs; on an exact tie the first in grid order.
    """
    grid = _check_lambdas(lambdas)
    counts = acc.rows_per_fold
    if not np.all(counts > 0):
        empty = ", ".join(str(f) for f in np.flatnonzero(counts == 0))
        raise InterpError(f"fold(s) {empty} of {acc.n_folds} have no rows: use fewer folds or more items")
    d, k = acc.n_features, acc.n_outputs
    cv_r2 = np.empty((grid.size, acc.n_folds))
    for f, held in enumerate(acc.folds):
        train = _merged((m for g, m in enumerate(acc.folds) if g != f), d, k)
        eigenvalues, vectors = np.linalg.eigh(train.cxx)  # divide and conquer: ~4× scipy's default here
        eigenvalues = np.clip(eigenvalues, 0.0, None)
        q = vectors.T @ train.cxy  # (d, k)
        held_xx = vectors.T @ held.cxx @ vectors  # (d, d), in the training eigenbasis
        held_xy = vectors.T @ held.cxy  # (d, k)
        for i, lam in enumerate(grid):
            z = q / (eigenvalues + lam)[:, None]  # weights in the eigenbasis
            w = vectors @ z  # (d, k)
            delta = held.mean_y - held.mean_x @ w - (train.mean_y - train.mean_x @ w)
            sse = held.cyy - 2.0 * np.einsum("ij,ij->j", z, held_xy) + np.einsum("ij,ij->j", z, held_xx @ z)
            sse = np.clip(sse + held.n * delta * delta, 0.0, None)
            cv_r2[i, f] = _r2(sse, held.cyy)
    best = int(np.argmax(cv_r2.mean(axis=1)))
    alpha = float(grid[best])
    if grid.size > 1 and alpha in (grid.min(), grid.max()):
        log.warning("ridge λ %g is at the edge of the grid [%g, %g]; widen the grid", alpha, grid.min(), grid.max())
    total = _merged(acc.folds, d, k)
    w = scipy.linalg.solve(total.cxx + alpha * np.eye(d), total.cxy, assume_a="pos")
    intercept = total.mean_y - total.mean_x @ w
    log.debug("ridge: λ=%g, mean held-out R² %.4f over %d rows", alpha, cv_r2[best].mean(), total.n)
    if acc.single_output:
        return RidgeResult(alpha, grid, cv_r2, w[:, 0].copy(), float(intercept[0]), total.n)
    return RidgeResult(alpha, grid, cv_r2, w.T.copy(), intercept, total.n)


def r2_score_streaming(model: RidgeResult, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> float:
    """R² of `model` on held-out rows fed as (x, y) batches, equal to `sklearn.metrics.r2_score` on them all.

    SST uses the held-out rows' own mean (accumulated by pairwise merging); several outputs are
    averaged uniformly.
    """
    n, mean, sst, sse = 0, np.zeros(0), np.zeros(0), np.zeros(0)
    for x, y in batches:
        prediction = model.predict(x)
        y = np.asarray(y, dtype=np.float64)
        if y.shape != prediction.shape:
            raise InterpError(f"held-out y has shape {y.shape}; the probe predicts {prediction.shape}")
        if y.shape[0] == 0:
            continue
        y2, residual = y.reshape(y.shape[0], -1), (y - prediction).reshape(y.shape[0], -1)
        batch_mean = y2.mean(axis=0)
        batch_sst = ((y2 - batch_mean) ** 2).sum(axis=0)
        if n == 0:
            mean, sst, sse = batch_mean, batch_sst, np.zeros_like(batch_mean)
        else:
            diff = batch_mean - mean
            sst = sst + batch_sst + diff * diff * (n * y2.shape[0] / (n + y2.shape[0]))
            mean = mean + diff * (y2.shape[0] / (n + y2.shape[0]))
        sse = sse + (residual * residual).sum(axis=0)
        n += y2.shape[0]
    if n < 2:
        raise InterpError(f"R² needs at least 2 held-out rows, got {n}")
    return _r2(sse, sst)


def item_folds(item_ids: Sequence[object] | np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold of each row such that every item's rows share one fold: (rows,) int64 in [0, n_folds).

    Distinct items (sorted, so row order does not matter) are shuffled with `seed` and dealt round-robin,
    so fold sizes in items differ by at most one.
    """
    ids = np.asarray(item_ids)
    if ids.ndim != 1:
        raise InterpError(f"item ids must be 1-D (one per row), got shape {ids.shape}")
    items, row_item = np.unique(ids, return_inverse=True)
    if n_folds < 2 or items.size < n_folds:
        raise InterpError(f"cannot split {items.size} item(s) into {n_folds} folds: need 2 ≤ folds ≤ items")
    fold_of_item = np.empty(items.size, dtype=np.int64)
    fold_of_item[np.random.default_rng(seed).permutation(items.size)] = np.arange(items.size) % n_folds
    return fold_of_item[row_item]
