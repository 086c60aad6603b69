"""interp.stats against scikit-learn, statsmodels and scipy, and the vectorised bootstrap against a plain loop."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.multitest import multipletests

from interp.errors import InterpError
from interp.stats import (
    accuracy,
    accuracy_by_snr,
    accuracy_with_ci,
    benjamini_hochberg,
    bootstrap_ci,
    bootstrap_indices,
    cohen_kappa,
    error_overlap,
    kappa_with_ci,
    mcnemar,
    pairwise_kappa,
)


def _related(rng: np.random.Generator, base: np.ndarray, keep: float, labels: np.ndarray) -> np.ndarray:
    """A copy of `base` with each item replaced by a random label with probability 1 - keep."""
    return np.where(rng.random(base.size) < keep, base, rng.choice(labels, base.size))


def _sklearn_kappa(a: np.ndarray, b: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cohen_kappa_score(a, b)


@pytest.mark.parametrize("seed", range(40))
def test_kappa_equals_sklearn_on_random_labels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_labels = int(rng.integers(2, 6))
    labels = np.array(["A", "B", "C", "D", "E"])[:n_labels] if seed % 2 else np.arange(n_labels)
    n = int(rng.integers(2, 300))
    a = rng.choice(labels, n)
    b = _related(rng, a, rng.random(), labels)
    expected = _sklearn_kappa(a, b)
    if math.isnan(expected):  # both raters used one identical label: the documented difference
        assert len(set(a) | set(b)) == 1 and cohen_kappa(a, b) == 1.0
    else:
        assert abs(cohen_kappa(a, b) - expected) <= 1e-12


def test_kappa_edge_cases() -> None:
    assert cohen_kappa(["x", "y", "x"], ["x", "y", "x"]) == 1.0 == _sklearn_kappa(["x", "y", "x"], ["x", "y", "x"])
    # both raters give one identical class: sklearn nan (0/0), documented rule 1.0
    assert math.isnan(_sklearn_kappa(["x"] * 5, ["x"] * 5))
    assert cohen_kappa(["x"] * 5, ["x"] * 5) == 1.0
    # each rater constant but different: kappa 0, as sklearn
    assert cohen_kappa(["x"] * 5, ["y"] * 5) == 0.0 == _sklearn_kappa(["x"] * 5, ["y"] * 5)
    # complete disagreement on two balanced classes
    assert cohen_kappa([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0, abs=1e-15)
    with pytest.raises(InterpError, match="empty"):
        cohen_kappa([], [])
    with pytest.raises(InterpError, match="lengths"):
        cohen_kappa([1, 2], [1])


def test_accuracy_and_its_interval() -> None:
    correct = np.array([True] * 30 + [False] * 10)
    assert accuracy(correct) == 0.75
    assert accuracy([1, 0, 0, 0]) == 0.25
    with pytest.raises(InterpError, match="booleans"):
        accuracy([0, 2])
    estimate = accuracy_with_ci(correct, n_boot=500, seed=3)
    assert estimate.n == 40 and estimate.value == 0.75
    assert estimate.low < 0.75 < estimate.high
    assert estimate == accuracy_with_ci(correct, n_boot=500, seed=3)
    assert not np.array_equal(bootstrap_indices(40, 500, seed=3), bootstrap_indices(40, 500, seed=4))
    assert estimate == bootstrap_ci(accuracy, correct, n_boot=500, seed=3)


def test_bootstrap_ci_is_paired_and_percentile() -> None:
    rng = np.random.default_rng(0)
    a = rng.random(50) < 0.7
    b = a.copy()
    difference = bootstrap_ci(lambda x, y: accuracy(x) - accuracy(y), a, b, n_boot=200)
    assert (difference.value, difference.low, difference.high) == (0.0, 0.0, 0.0)  # identical systems, paired
    indices = bootstrap_indices(50, 200, seed=0)
    assert indices.shape == (200, 50) and indices.min() >= 0 and indices.max() < 50
    draws = a[indices].mean(axis=1)
    estimate = bootstrap_ci(accuracy, a, n_boot=200, level=0.9)
    assert (estimate.low, estimate.high) == tuple(np.quantile(draws, [0.05, 0.95]))
    with pytest.raises(InterpError, match="level"):
        bootstrap_ci(accuracy, a, level=1.0)


def test_kappa_with_ci_equals_loop_over_the_same_resamples() -> None:
    rng = np.random.default_rng(5)
    a = rng.choice(np.array(["yes", "no", "maybe"]), 120)
    b = _related(rng, a, 0.6, np.array(["yes", "no", "maybe"]))
    estimate = kappa_with_ci(a, b, n_boot=300, seed=2)
    assert estimate == bootstrap_ci(cohen_kappa, a, b, n_boot=300, seed=2)
    assert estimate.low < estimate.value < estimate.high and estimate.value == cohen_kappa(a, b)


def test_pairwise_bootstrap_equals_naive_loop() -> None:
    rng = np.random.default_rng(11)
    choices = np.array(["A", "B", "C", "D"])
    gold = rng.choice(choices, 400)
    predictions = {f"s{i}": _related(rng, gold, 0.4 + 0.1 * i, choices) for i in range(4)}
    predictions["constant"] = np.full(400, "A")  # kappa with a constant rater is exactly 0 on every resample
    result = pairwise_kappa(predictions, gold, n_boot=200, seed=7)
    indices = bootstrap_indices(400, 200, seed=7)
    naive_kappa = np.array([[cohen_kappa(predictions[a][rows], predictions[b][rows]) for a, b in result.pairs]
                            for rows in indices])
    naive_accuracy = np.array([[accuracy(predictions[s][rows] == gold[rows]) for s in result.systems]
                               for rows in indices])
    assert result.kappa_draws.shape == (200, 10) and result.accuracy_draws.shape == (200, 5)
    np.testing.assert_allclose(result.kappa_draws, naive_kappa, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(result.accuracy_draws, naive_accuracy)
    for a, b in result.pairs:
        assert result.kappa[a, b] == kappa_with_ci(predictions[a], predictions[b], n_boot=200, seed=7)
        difference = result.accuracy_difference[a, b]
        assert difference.value == pytest.approx(result.accuracy[a].value - result.accuracy[b].value, abs=1e-15)
        assert difference.low <= difference.value <= difference.high
    for system in result.systems:
        assert result.accuracy[system] == accuracy_with_ci(predictions[system] == gold, n_boot=200, seed=7)
    with pytest.raises(InterpError, match="two systems"):
        pairwise_kappa({"only": gold}, gold)
    with pytest.raises(InterpError, match="lengths"):
        pairwise_kappa({"a": gold, "b": gold[:-1]}, gold)


def test_error_overlap() -> None:
    gold = np.array([0, 0, 0, 0, 1, 1])
    a = np.array([1, 2, 3, 0, 1, 0])
    b = np.array([1, 3, 0, 2, 1, 0])
    overlap = error_overlap(a, b, gold, n_choices=4)
    # both wrong on items 0, 1, 5; same wrong answer on 0 and 5
    assert (overlap.value, overlap.n_both_wrong, overlap.chance) == (2 / 3, 3, 1 / 3)
    none = error_overlap(a, gold, gold, n_choices=4)
    assert math.isnan(none.value) and none.n_both_wrong == 0
    assert error_overlap(a, b, gold, n_choices=2).chance == 1.0
    with pytest.raises(InterpError, match="n_choices"):
        error_overlap(a, b, gold, n_choices=1)


def _table(correct_a: np.ndarray, correct_b: np.ndarray) -> np.ndarray:
    return np.array([[np.sum(correct_a & correct_b), np.sum(correct_a & ~correct_b)],
                     [np.sum(~correct_a & correct_b), np.sum(~correct_a & ~correct_b)]])


@pytest.mark.parametrize("seed", range(30))
def test_mcnemar_equals_statsmodels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 40)) if seed < 15 else int(rng.integers(60, 400))
    correct_a = rng.random(n) < rng.uniform(0.3, 0.9)
    correct_b = np.where(rng.random(n) < rng.uniform(0.3, 0.95), correct_a, rng.random(n) < 0.5)
    result = mcnemar(correct_a, correct_b)
    table = _table(correct_a, correct_b)
    assert (result.b, result.c) == (table[0, 1], table[1, 0])
    exact = result.b + result.c < 25
    reference = sm_mcnemar(table, exact=exact, correction=True)
    methods = {0: "no discordant pairs", 1: "exact binomial", 2: "chi-squared with continuity correction"}
    assert result.method == methods[0 if result.b + result.c == 0 else 1 if exact else 2]
    assert result.statistic == pytest.approx(reference.statistic, rel=1e-12, abs=1e-12)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(("b", "c"), [(0, 0), (0, 1), (5, 5), (0, 24), (12, 12), (0, 25), (13, 12), (30, 10)])
def test_mcnemar_edge_counts(b: int, c: int) -> None:
    correct_a = np.array([True] * b + [False] * c + [True] * 3 + [False] * 2)
    correct_b = np.array([False] * b + [True] * c + [True] * 3 + [False] * 2)
    result = mcnemar(correct_a, correct_b)
    reference = sm_mcnemar(_table(correct_a, correct_b), exact=b + c < 25, correction=True)
    assert (result.b, result.c) == (b, c)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-9, abs=1e-12)
    assert result.statistic == pytest.approx(reference.statistic, rel=1e-12)
    if b + c == 0:
        assert (result.statistic, result.p_value, result.method) == (0.0, 1.0, "no discordant pairs")
    elif b == c:  # exact regime (b + c < 25 in the cases above): no evidence either way
        assert result.p_value == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_benjamini_hochberg_equals_statsmodels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = rng.random(int(rng.integers(1, 60))) ** 3
    if seed % 3 == 0:  # ties
        p = np.round(p, 1)
    np.testing.assert_allclose(benjamini_hochberg(p), multipletests(p, method="fdr_bh")[1], rtol=0, atol=1e-15)


@pytest.mark.parametrize("p", [
    [1.0, 1.0, 1.0], [0.03], [0.01, 0.01, 0.01, 0.04], [0.0, 1.0, 0.5], [0.04, 0.01, 0.03, 0.02], [0.0, 0.0]])
def test_benjamini_hochberg_edge_cases(p: list[float]) -> None:
    q = benjamini_hochberg(p)
    np.testing.assert_allclose(q, multipletests(p, method="fdr_bh")[1], rtol=0, atol=1e-15)
    assert np.all(q >= np.asarray(p)) and np.all(q <= 1.0)


def test_benjamini_hochberg_empty_and_invalid() -> None:
    empty = benjamini_hochberg([])
    assert empty.shape == (0,) and empty.dtype == np.float64
    with pytest.raises(InterpError, match="NaN"):
        benjamini_hochberg([0.01, float("nan")])
    with pytest.raises(InterpError, match=r"\[0, 1\]"):
        benjamini_hochberg([0.01, 1.5])


def test_accuracy_by_snr_table() -> None:
    records = ([("e2e", 0.0, i % 4 == 0) for i in range(20)] + [("cascade", None, True)] * 10
               + [("e2e", None, i % 5 != 0) for i in range(20)] + [("cascade", 10, i % 2 == 0) for i in range(10)]
               + [("e2e", 10.0, True)] * 5)
    table = accuracy_by_snr(records, n_boot=200)
    assert [(row.snr_db, row.system) for row in table] == [
        (None, "e2e"), (None, "cascade"), (10.0, "e2e"), (10.0, "cascade"), (0.0, "e2e")]
    assert [(row.n, row.accuracy) for row in table] == [(20, 0.8), (10, 1.0), (5, 1.0), (10, 0.5), (20, 0.25)]
    e2e_clean = accuracy_with_ci([c for s, snr, c in records if s == "e2e" and snr is None], n_boot=200)
    assert (table[0].low, table[0].high) == (e2e_clean.low, e2e_clean.high)
    assert all(row.low <= row.accuracy <= row.high for row in table)
    with pytest.raises(InterpError, match="finite"):
        accuracy_by_snr([("e2e", float("nan"), True)])
