"""Uncertainty and significance for comparing systems answering the same items.

An end-to-end speech LLM and an ASR -> LLM cascade are judged on the same items, so every comparison here is
paired: bootstrap intervals resample items (one index matrix shared by all systems and pairs, drawn by
interp.estimates.bootstrap_indices), agreement is Cohen's kappa, accuracy differences are tested with McNemar's
test and many tests are corrected with Benjamini-Hochberg. Point values match scikit-learn / statsmodels
(tested); the places where a definition had to be chosen are stated in each docstring.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as _scipy_stats

from interp.errors import InterpError
from interp.estimates import (
    Estimate,
    bootstrap_indices,
    check_bootstrap,
    percentile_interval,
    same_length,
)

__all__ = [
    "PairwiseAgreement", "ErrorOverlap", "McNemar", "SnrAccuracy", "accuracy", "accuracy_with_ci", "cohen_kappa",
    "kappa_with_ci", "pairwise_kappa", "error_overlap", "mcnemar", "benjamini_hochberg", "accuracy_by_snr",
]

_EXACT_BELOW = 25  # McNemar: exact binomial test when b + c is below this, chi-squared otherwise
_ROWS_PER_CHUNK = 256  # resamples turned into item multiplicities at a time (bounds memory)


@dataclass(frozen=True)
class PairwiseAgreement:
    """Accuracy of every system and kappa / accuracy difference of every pair, from one set of resamples.

    pairs: (a, b) for a listed before b in `systems`; accuracy_difference[(a, b)] is accuracy(a) - accuracy(b).
    accuracy_draws (n_boot, n_systems) and kappa_draws (n_boot, n_pairs) are the bootstrap values, columns in
    `systems` / `pairs` order.
    """

    systems: tuple[str, ...]
    pairs: tuple[tuple[str, str], ...]
    accuracy: dict[str, Estimate]
    kappa: dict[tuple[str, str], Estimate]
    accuracy_difference: dict[tuple[str, str], Estimate]
    accuracy_draws: np.ndarray
    kappa_draws: np.ndarray


@dataclass(frozen=True)
class ErrorOverlap:
    """P(same answer | both wrong) over the n_both_wrong items, beside its chance level 1 / (n_choices - 1)."""

    value: float
    n_both_wrong: int
    chance: float


@dataclass(frozen=True)
class McNemar:
    """McNemar's test. b: items only system A got right; c: items only system B got right."""

    b: int
    c: int
    statistic: float
    p_value: float
    method: str


@dataclass(frozen=True)
class SnrAccuracy:
    """Accuracy of one system at one noise level (snr_db None: clean speech), with its bootstrap interval."""

    system: str
    snr_db: float | None
    n: int
    accuracy: float
    low: float
    high: float


def _labels(values: object, name: str) -> np.ndarray:
    """A non-empty 1-D array of labels."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise InterpError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        raise InterpError(f"{name} is empty: the statistic is undefined without items")
    return array


def _correct(values: object, name: str) -> np.ndarray:
    """A non-empty 1-D boolean array; 0/1 numbers are accepted."""
    array = _labels(values, name)
    if array.dtype == bool:
        return array
    bad = ~np.isin(array, (0, 1))
    if bad.any():
        raise InterpError(f"{name} must hold booleans (or 0/1), got {array[bad].tolist()[0]!r}")
    return array.astype(bool)


def accuracy(correct: object) -> float:
    """Fraction of items answered correctly (`correct` is one boolean per item)."""
    return float(_correct(correct, "correct").mean())


def accuracy_with_ci(correct: object, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> Estimate:
    """Accuracy with its percentile bootstrap interval (same resamples as `bootstrap_ci(accuracy, correct)`)."""
    check_bootstrap(n_boot, level)
    correct = _correct(correct, "correct")
    draws = correct[bootstrap_indices(correct.size, n_boot, seed)].mean(axis=1)
    low, high = percentile_interval(draws, level)
    return Estimate(float(correct.mean()), float(low), float(high), correct.size)


def _encode(*label_arrays: np.ndarray) -> tuple[list[np.ndarray], int]:
    """Integer codes 0..K-1 for labels of any hashable kind, one code table shared by all arrays."""
    _, codes = np.unique(np.concatenate(label_arrays), return_inverse=True)
    splits = np.cumsum([len(array) for array in label_arrays])[:-1]
    return np.split(codes.ravel(), splits), int(codes.max()) + 1


def _kappa_from_counts(n: float, agree: np.ndarray | int, chance: np.ndarray | int) -> np.ndarray:
    """Kappa (n * agree - chance) / (n^2 - chance), where chance = sum_k rowcount_k * colcount_k; 1 where 0 / 0.

    Every input is an integer count (held exactly in float64), so one division is the only rounding.
    """
    numerator = n * agree - chance
    denominator = n * n - chance
    undefined = denominator == 0
    return np.where(undefined, 1.0, numerator / np.where(undefined, 1.0, denominator))


def cohen_kappa(a: object, b: object) -> float:
    """Cohen's kappa between two raters' labels (any hashable labels, one per item).

    Equals `sklearn.metrics.cohen_kappa_score(a, b)` (to rounding), except in one case: when both raters give
    the same single label to every item, observed and expected agreement are both 1 and the formula is 0 / 0;
    scikit-learn returns nan there, this returns 1.0 (perfect agreement). That is the only 0 / 0 case: expected
    agreement 1 forces observed agreement 1. Empty or unequal-length inputs raise InterpError.
    """
    a, b = _labels(a, "a"), _labels(b, "b")
    n = same_length({"a": a, "b": b})
    (code_a, code_b), k = _encode(a, b)
    chance = np.dot(np.bincount(code_a, minlength=k), np.bincount(code_b, minlength=k))
    return float(_kappa_from_counts(n, np.count_nonzero(code_a == code_b), chance))


def _resampled_sums(indices: np.ndarray, indicators: np.ndarray) -> np.ndarray:
    """(n_boot, n_columns) counts of each 0/1 column of `indicators` (n_items, n_columns) in each resample.

    Each block of resamples becomes a (rows, n_items) multiplicity matrix (bincount) multiplied by the columns.
    Every partial sum is an integer at most n_items, so float32 is exact below 2^24 items and halves the traffic.
    """
    n_boot, n_items = indices.shape
    dtype = np.float32 if n_items < 2**24 else np.float64
    columns = indicators.astype(dtype)
    sums = np.empty((n_boot, columns.shape[1]))
    for start in range(0, n_boot, _ROWS_PER_CHUNK):
        block = indices[start:start + _ROWS_PER_CHUNK]
        offsets = np.arange(block.shape[0])[:, None] * n_items
        multiplicity = np.bincount((block + offsets).ravel(), minlength=block.size).reshape(block.shape)
        sums[start:start + block.shape[0]] = multiplicity.astype(dtype) @ columns
    return sums


def _agreement_indicators(codes: list[np.ndarray], k: int, pairs: list[tuple[int, int]]) -> np.ndarray:
    """Per item, n_systems * k + n_pairs 0/1 columns: each system's label one-hot, then each pair's agreement."""
    code_matrix = np.stack(codes, axis=1)  # (n_items, n_systems)
    one_hot = (code_matrix[:, :, None] == np.arange(k)).reshape(len(code_matrix), -1)
    first, second = zip(*pairs)
    return np.concatenate([one_hot, code_matrix[:, list(first)] == code_matrix[:, list(second)]], axis=1)


def _kappa_from_sums(sums: np.ndarray, n_items: int, k: int, pairs: list[tuple[int, int]]) -> np.ndarray:
    """Kappa (rows, n_pairs) from summed `_agreement_indicators` columns (a row per resample, or all items)."""
    label_counts = sums[:, :-len(pairs)].reshape(len(sums), -1, k)
    first, second = (list(side) for side in zip(*pairs))
    chance = np.einsum("rpk,rpk->rp", label_counts[:, first], label_counts[:, second])
    return _kappa_from_counts(float(n_items), sums[:, -len(pairs):], chance)


def kappa_with_ci(a: object, b: object, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> Estimate:
    """`cohen_kappa(a, b)` with a paired percentile bootstrap interval (both raters resampled by item together)."""
    check_bootstrap(n_boot, level)
    a, b = _labels(a, "a"), _labels(b, "b")
    n = same_length({"a": a, "b": b})
    codes, k = _encode(a, b)
    sums = _resampled_sums(bootstrap_indices(n, n_boot, seed), _agreement_indicators(codes, k, [(0, 1)]))
    low, high = percentile_interval(_kappa_from_sums(sums, n, k, [(0, 1)])[:, 0], level)
    return Estimate(cohen_kappa(a, b), float(low), float(high), n)


def pairwise_kappa(predictions: Mapping[str, object], gold: object, *, n_boot: int = 1000, level: float = 0.95,
                   seed: int = 0) -> PairwiseAgreement:
    """Accuracy of each system and kappa / accuracy difference of every pair, all on the same resamples.

    predictions: system name -> one answer per item (items aligned with `gold`); at least two systems. The
    resamples are `bootstrap_indices(n_items, n_boot, seed)`, shared by every system and pair, so intervals are
    paired and each accuracy interval equals `accuracy_with_ci(pred == gold, ...)`. Kappa follows `cohen_kappa`.
    Cost: one (n_boot, n_items) x (n_items, n_systems * (n_classes + 1) + n_pairs) matrix product.
    """
    check_bootstrap(n_boot, level)
    if len(predictions) < 2:
        raise InterpError(f"pairwise_kappa needs at least two systems, got {len(predictions)}")
    systems = tuple(predictions)
    arrays = {name: _labels(values, f"predictions[{name!r}]") for name, values in predictions.items()}
    gold = _labels(gold, "gold")
    n = same_length({"gold": gold, **{f"predictions[{name!r}]": values for name, values in arrays.items()}})
    (*codes, gold_codes), k = _encode(*arrays.values(), gold)
    index_pairs = list(itertools.combinations(range(len(systems)), 2))
    correct = np.stack(codes, axis=1) == gold_codes[:, None]
    indicators = np.concatenate([_agreement_indicators(codes, k, index_pairs), correct], axis=1)
    # row 0: all items (the point estimates); rows 1..n_boot: the resamples
    sums = np.vstack([indicators.sum(axis=0), _resampled_sums(bootstrap_indices(n, n_boot, seed), indicators)])
    kappa = _kappa_from_sums(sums[:, :-len(systems)], n, k, index_pairs)
    accuracy = sums[:, -len(systems):] / n
    first, second = (list(side) for side in zip(*index_pairs))
    difference = accuracy[:, first] - accuracy[:, second]
    pairs = tuple((systems[i], systems[j]) for i, j in index_pairs)

    def estimates(values: np.ndarray, names: Sequence[Any]) -> dict[Any, Estimate]:
        """Row 0 as the values, rows 1.. as the draws, one column per name."""
        low, high = percentile_interval(values[1:], level)
        return {name: Estimate(float(values[0, c]), float(low[c]), float(high[c]), n)
                for c, name in enumerate(names)}

    return PairwiseAgreement(
        systems=systems,
        pairs=pairs,
        accuracy=estimates(accuracy, systems),
        kappa=estimates(kappa, pairs),
        accuracy_difference=estimates(difference, pairs),
        accuracy_draws=accuracy[1:],
        kappa_draws=kappa[1:],
    )


def error_overlap(pred_a: object, pred_b: object, gold: object, n_choices: int) -> ErrorOverlap:
    """How often two systems give the same wrong answer, among items both get wrong.

    Chance is 1 / (n_choices - 1): two independent wrong picks among the n_choices - 1 wrong options. When no
    item is wrong for both, value is nan (undefined) and n_both_wrong is 0. n_choices must be at least 2.
    """
    if n_choices < 2:
        raise InterpError(f"n_choices must be at least 2 for a wrong answer to exist, got {n_choices}")
    pred_a, pred_b, gold = _labels(pred_a, "pred_a"), _labels(pred_b, "pred_b"), _labels(gold, "gold")
    same_length({"pred_a": pred_a, "pred_b": pred_b, "gold": gold})
    both_wrong = (pred_a != gold) & (pred_b != gold)
    n_both = int(np.count_nonzero(both_wrong))
    value = float(np.mean(pred_a[both_wrong] == pred_b[both_wrong])) if n_both else float("nan")
    return ErrorOverlap(value, n_both, 1.0 / (n_choices - 1))


def mcnemar(correct_a: object, correct_b: object) -> McNemar:
    """McNemar's test that two systems are equally accurate on the same items.

    Rule on the discordant counts b (only A right) and c (only B right): when b + c < 25, the exact two-sided
    binomial test of min(b, c) successes in b + c trials at p = 0.5 (statistic: min(b, c)); otherwise the
    continuity-corrected chi-squared (|b - c| - 1)^2 / (b + c) with 1 degree of freedom. With no discordant
    items, statistic 0 and p 1.0 (method "no discordant pairs"). In the two regimes, matches statsmodels'
    `mcnemar(table, exact=True)` and `mcnemar(table, exact=False, correction=True)`.
    """
    correct_a, correct_b = _correct(correct_a, "correct_a"), _correct(correct_b, "correct_b")
    same_length({"correct_a": correct_a, "correct_b": correct_b})
    b = int(np.count_nonzero(correct_a & ~correct_b))
    c = int(np.count_nonzero(~correct_a & correct_b))
    if b + c == 0:
        return McNemar(b, c, 0.0, 1.0, "no discordant pairs")
    if b + c < _EXACT_BELOW:
        p_value = _scipy_stats.binomtest(min(b, c), b + c, 0.5).pvalue
        return McNemar(b, c, float(min(b, c)), float(p_value), "exact binomial")
    statistic = (abs(b - c) - 1) ** 2 / (b + c)
    return McNemar(b, c, float(statistic), float(_scipy_stats.chi2.sf(statistic, 1)),
                   "chi-squared with continuity correction")


def benjamini_hochberg(p_values: object) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values), in the input order.

    Equals statsmodels' `multipletests(p, method="fdr_bh")[1]`. Empty input gives an empty array. NaN is not
    passed through: a NaN or a value outside [0, 1] raises InterpError, because one missing test would silently
    change the number of tests m and so every other q-value.
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise InterpError(f"p_values must be one-dimensional, got shape {p.shape}")
    if np.isnan(p).any():
        raise InterpError(f"p_values holds {int(np.isnan(p).sum())} NaN: drop the failed tests before correcting")
    if ((p < 0) | (p > 1)).any():
        raise InterpError(f"p_values must lie in [0, 1], got values from {p.min()} to {p.max()}")
    order = np.argsort(p)
    ranked = p[order] / (np.arange(1, p.size + 1) / p.size)
    q = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
    out = np.empty_like(p)
    out[order] = q
    return out


def accuracy_by_snr(records: Iterable[tuple[str, float | None, bool]], *, n_boot: int = 1000,
                    level: float = 0.95, seed: int = 0) -> list[SnrAccuracy]:
    """Accuracy per (system, noise level) from rows (system, snr_db or None for clean speech, correct).

    Rows of the table: clean first, then SNR from highest to lowest; within a level, systems in order of first
    appearance. Each cell's interval is `accuracy_with_ci` on its own items with the same seed.
    """
    cells: dict[tuple[float | None, str], list[bool]] = {}
    first_seen: dict[str, int] = {}
    for system, snr_db, correct in records:
        if snr_db is not None and not np.isfinite(snr_db):
            raise InterpError(f"SNR of a {system!r} row is {snr_db}: use None for clean speech, else a finite dB")
        first_seen.setdefault(system, len(first_seen))
        cells.setdefault((None if snr_db is None else float(snr_db), system), []).append(correct)

    def order(cell: tuple[float | None, str]) -> tuple[bool, float, int]:
        snr_db, system = cell
        return (snr_db is not None, 0.0 if snr_db is None else -snr_db, first_seen[system])

    table = []
    for snr_db, system in sorted(cells, key=order):
        estimate = accuracy_with_ci(cells[snr_db, system], n_boot=n_boot, level=level, seed=seed)
        table.append(SnrAccuracy(system, snr_db, estimate.n, estimate.value, estimate.low, estimate.high))
    return table
