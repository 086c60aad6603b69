"""Bag-of-tokens precision and recall of the lens against each item's transcript (PRECISION_RULE).

* precision of an item = share of its kept top-1 lens tokens (one per audio row; a token repeated on several
  rows counts once per row) whose normalised text is among the reference tokens (interp.lens.tokens);
  undefined (NaN, item left out of that layer's mean) when no top-1 token of the item is kept.
* recall of an item = share of the DISTINCT normalised tokens of the transcript tokenised with a leading space
  (its words as they occur mid-utterance) that occur among the item's kept top-1 lens tokens.
* per layer: the mean over items, with a percentile bootstrap interval over items
  (interp.estimates.bootstrap_ci, seeded).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from interp.estimates import Estimate, bootstrap_ci
from interp.lens.logit_lens import LensResult
from interp.lens.tokens import TokenNormalizer

__all__ = ["PRECISION_RULE", "TokenScore", "token_score", "LayerScore", "LensScores", "score_lens"]

PRECISION_RULE = (
    "precision = share of an item's kept top-1 lens tokens (one per audio row, repeats counted per row) found "
    "among the reference tokens; recall = share of the distinct normalised tokens of ' ' + transcript found "
    "among the item's kept top-1 lens tokens; per layer the mean over items with a defined value, 95% "
    "percentile bootstrap interval over items")


@dataclass(frozen=True)
class TokenScore:
    """Bag-of-tokens scores of one item at one layer (NaN where undefined)."""

    precision: float
    recall: float
    kept: int
    found: int
    reference: int


def token_score(top1: Iterable[int], transcript: str, normalizer: TokenNormalizer) -> TokenScore:
    """Precision and recall of an item's top-1 lens tokens against its transcript (see PRECISION_RULE)."""
    kept = [t for t in normalizer.tokens(top1) if t is not None]
    reference = normalizer.reference(transcript)
    found = sum(t in reference for t in kept)
    words = normalizer.transcript_tokens(transcript)
    lens_set = set(kept)
    recall = sum(t in lens_set for t in words) / len(words) if words else math.nan
    return TokenScore(precision=found / len(kept) if kept else math.nan, recall=recall, kept=len(kept),
                      found=found, reference=len(words))


@dataclass(frozen=True)
class LayerScore:
    """Mean precision / recall over items at one layer with bootstrap intervals (None when no item counts)."""

    layer: int
    precision: Estimate | None
    recall: Estimate | None
    n_items: int
    n_rows: int
    n_tokens: int


@dataclass(frozen=True)
class LensScores:
    """Per layer: LayerScore; per item and layer: precision / recall `(items,)` float64, NaN where undefined."""

    layers: dict[int, LayerScore]
    precision: dict[int, np.ndarray]
    recall: dict[int, np.ndarray]
    n_boot: int
    level: float
    seed: int


def _mean_ci(values: np.ndarray, *, n_boot: int, level: float, seed: int) -> Estimate | None:
    defined = values[~np.isnan(values)]
    if defined.size == 0:
        return None
    return bootstrap_ci(np.mean, defined, n_boot=n_boot, level=level, seed=seed)


def score_lens(result: LensResult, normalizer: TokenNormalizer, *, n_boot: int = 1000, level: float = 0.95,
               seed: int = 0) -> LensScores:
    """Bag-of-tokens precision and recall of every item at every layer of the result, with bootstrap CIs."""
    present = np.unique(result.item)
    layers, precision, recall = {}, {}, {}
    for layer, lens in result.layers.items():
        p = np.full(len(result.items), np.nan)
        r = np.full(len(result.items), np.nan)
        kept = 0
        for index in present.tolist():
            score = token_score(lens.top1[result.item_rows(index)], result.items[index].transcript, normalizer)
            p[index], r[index] = score.precision, score.recall
            kept += score.kept
        precision[layer], recall[layer] = p, r
        layers[layer] = LayerScore(layer, _mean_ci(p, n_boot=n_boot, level=level, seed=seed),
                                   _mean_ci(r, n_boot=n_boot, level=level, seed=seed),
                                   n_items=int((~np.isnan(p)).sum()), n_rows=result.rows, n_tokens=kept)
    return LensScores(layers, precision, recall, n_boot, level, seed)
