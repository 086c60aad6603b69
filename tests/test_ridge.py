"""Streaming ridge: fits, held-out scores and λ choice equal scikit-learn's on the same rows and folds."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.metrics import r2_score
from sklearn.model_selection import cross_val_score

from interp.errors import InterpError
from probes.ridge import RidgeAccumulator, fit_ridge, item_folds, r2_score_streaming

GRID = np.logspace(-2, 5, 15)


def _problem(seed: int, *, n_items: int = 60, d: int = 30, k: int | None = None, noise: float = 1.0):
    """Rows grouped in items of 3–12 rows; features with non-zero means so the intercept matters.

    Returns (x, y, item id per row). Coefficients are small against the noise, so the best λ is inside
    GRID rather than at an edge.
    """
    rng = np.random.default_rng(seed)
    rows_per_item = rng.integers(3, 13, size=n_items)
    items = np.repeat(np.array([f"item-{i:03d}" for i in range(n_items)]), rows_per_item)
    x = rng.standard_normal((items.size, d)) * rng.uniform(0.5, 2.0, size=d) + rng.uniform(-3, 3, size=d)
    w = 0.15 * rng.standard_normal((d,) if k is None else (d, k))
    y = 4.0 + x @ w + noise * rng.standard_normal((items.size, *w.shape[1:]))
    return x, y, items


def _accumulate(x: np.ndarray, y: np.ndarray, fold: np.ndarray, n_folds: int, batch: int = 37) -> RidgeAccumulator:
    acc = RidgeAccumulator(n_folds)
    for start in range(0, x.shape[0], batch):
        acc.update(x[start : start + batch], y[start : start + batch], fold[start : start + batch])
    return acc


def _batches(x: np.ndarray, y: np.ndarray, batch: int = 23):
    return ((x[s : s + batch], y[s : s + batch]) for s in range(0, x.shape[0], batch))


def _sklearn_folds(fold: np.ndarray, n_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(n_folds)]


@pytest.mark.parametrize("alpha", [0.1, 10.0, 1000.0])
def test_fixed_lambda_fit_equals_sklearn_ridge(alpha: float) -> None:
    x, y, items = _problem(0)
    fold = item_folds(items, 5, seed=0)
    result = fit_ridge(_accumulate(x, y, fold, 5), [alpha])
    reference = Ridge(alpha=alpha).fit(x, y)
    np.testing.assert_allclose(result.coef, reference.coef_, rtol=1e-6, atol=1e-12 * np.abs(reference.coef_).max())
    assert result.intercept == pytest.approx(reference.intercept_, rel=1e-6)
    x_test, y_test, _ = _problem(1)
    ours = r2_score_streaming(result, _batches(x_test, y_test))
    assert ours == pytest.approx(r2_score(y_test, reference.predict(x_test)), abs=1e-4)
    assert ours == pytest.approx(r2_score(y_test, result.predict(x_test)), abs=1e-10)


def test_held_out_fold_scores_equal_sklearn_cross_validation() -> None:
    """Each fold's R², computed from moments only, is Ridge refitted without the fold and scored on it."""
    x, y, items = _problem(2)
    fold = item_folds(items, 4, seed=1)
    result = fit_ridge(_accumulate(x, y, fold, 4), GRID[[3, 8]])
    for i, alpha in enumerate(GRID[[3, 8]]):
        expected = cross_val_score(Ridge(alpha=alpha), x, y, cv=_sklearn_folds(fold, 4))
        np.testing.assert_allclose(result.cv_r2[i], expected, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("seed", [3, 4, 5, 6, 7])
def test_chosen_lambda_equals_ridgecv_on_the_same_item_folds(seed: int) -> None:
    x, y, items = _problem(seed, noise=[0.5, 1.0, 2.0, 1.5, 3.0][seed - 3])
    fold = item_folds(items, 5, seed=seed)
    result = fit_ridge(_accumulate(x, y, fold, 5), GRID)
    reference = RidgeCV(alphas=GRID, cv=_sklearn_folds(fold, 5)).fit(x, y)
    assert result.alpha == reference.alpha_
    assert GRID[0] < result.alpha < GRID[-1]
    assert result.best_score == pytest.approx(reference.best_score_, abs=1e-10)
    np.testing.assert_allclose(result.coef, reference.coef_, rtol=1e-6)


def test_multi_output_matches_sklearn() -> None:
    x, y, items = _problem(8, k=3)
    fold = item_folds(items, 5, seed=8)
    result = fit_ridge(_accumulate(x, y, fold, 5), GRID)
    reference = RidgeCV(alphas=GRID, cv=_sklearn_folds(fold, 5)).fit(x, y)
    assert result.alpha == reference.alpha_
    assert result.coef.shape == (3, x.shape[1]) and result.intercept.shape == (3,)
    np.testing.assert_allclose(result.coef, reference.coef_, rtol=1e-6)
    np.testing.assert_allclose(result.intercept, reference.intercept_, rtol=1e-6)
    x_test, y_test, _ = _problem(9, k=3)
    assert r2_score_streaming(result, _batches(x_test, y_test)) == pytest.approx(
        r2_score(y_test, reference.predict(x_test)), abs=1e-4
    )


def test_planted_signal_is_recovered_and_shuffled_targets_are_not() -> None:
    rng = np.random.default_rng(10)
    x, _, items = _problem(10, n_items=120, d=40)
    w = rng.standard_normal(40)
    y = x @ w + 0.01 * rng.standard_normal(x.shape[0])
    test = np.isin(items, np.unique(items)[:30])  # held-out items, never seen in training or CV
    train_fold = item_folds(items[~test], 5, seed=0)
    planted = fit_ridge(_accumulate(x[~test], y[~test], train_fold, 5), GRID)
    assert r2_score_streaming(planted, _batches(x[test], y[test])) >= 0.99
    shuffled_y = rng.permutation(y)
    shuffled = fit_ridge(_accumulate(x[~test], shuffled_y[~test], train_fold, 5), GRID)
    assert r2_score_streaming(shuffled, _batches(x[test], shuffled_y[test])) <= 0.05


def test_item_folds_keep_items_whole_balanced_and_seeded() -> None:
    rng = np.random.default_rng(11)
    items = rng.choice([f"utt{i}" for i in range(23)], size=500)
    fold = item_folds(items, 5, seed=3)
    for item in np.unique(items):
        assert np.unique(fold[items == item]).size == 1
    items_per_fold = np.bincount([fold[items == item][0] for item in np.unique(items)], minlength=5)
    assert items_per_fold.max() - items_per_fold.min() <= 1
    np.testing.assert_array_equal(fold, item_folds(items, 5, seed=3))
    assert not np.array_equal(fold, item_folds(items, 5, seed=4))
    order = rng.permutation(items.size)  # an item's fold does not depend on row order
    np.testing.assert_array_equal(item_folds(items[order], 5, seed=3), fold[order])
    with pytest.raises(InterpError):
        item_folds(items[:3], 5, seed=0)


def test_bad_input_is_refused_with_an_interp_error() -> None:
    x, y, items = _problem(12)
    acc = _accumulate(x, y, np.zeros(x.shape[0], dtype=np.int64), 3)
    with pytest.raises(InterpError, match="no rows"):
        fit_ridge(acc, GRID)
    with pytest.raises(InterpError, match="positive"):
        fit_ridge(acc, [0.0, 1.0])
    with pytest.raises(InterpError, match="NaN"):
        acc.update(x[:2], np.array([1.0, np.nan]), np.array([1, 2]))
    with pytest.raises(InterpError, match="earlier batches"):
        acc.update(x[:2, :5], y[:2], np.array([1, 2]))
    with pytest.raises(InterpError, match="fold ids"):
        acc.update(x[:2], y[:2], np.array([1, 3]))


def test_lambda_at_the_grid_edge_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    x, y, items = _problem(13, noise=0.01)
    fold = item_folds(items, 5, seed=0)
    with caplog.at_level(logging.WARNING, logger="probes.ridge"):
        result = fit_ridge(_accumulate(x, y, fold, 5), GRID[8:])
    assert result.alpha == GRID[8] and "edge of the grid" in caplog.text
