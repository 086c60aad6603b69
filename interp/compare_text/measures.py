"""The two measures of speech vs text inside one LLM: linear CKA and a cross-modal bag-of-characters probe.

Both read word-aligned matrices: row w of X (audio side) and of Y (text side) is the same word of the same item,
as the speech model heard it and as its own LLM read it. CKA asks whether the two sets of states share their
geometry (up to rotation and scale); the probe asks whether what a readout learnt on text states reads the same
from audio states, which CKA cannot tell (it is blind to where the two clouds sit and how they are rotated).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from interp.errors import InterpError
from probes.boc import lambda_grid, r2_over_varying_outputs
from probes.ridge import RidgeAccumulator, RidgeResult, fit_ridge, item_folds

__all__ = ["linear_cka", "shuffled_cka", "ProbeScores", "cross_modal_probe", "split_items"]

_log = logging.getLogger(__name__)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019, eq. 5) of x (n, d1) and y (n, d2), rows paired: in [0, 1].

    CKA = ‖Yᵀ X‖²_F / (‖Xᵀ X‖_F ‖Yᵀ Y‖_F) on column-centred X, Y. It is invariant to orthogonal maps and to
    isotropic scaling of either side, not to other linear maps. Computed in float64 through whichever Gram form
    is smaller (n × n when n < d, else d × d); both give the same number. NaN when a side has no variance
    (every row equal); InterpError for fewer than 2 rows or unpaired rows.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise InterpError(f"CKA needs paired rows x (n, d1) and y (n, d2); got {x.shape} and {y.shape}")
    if x.shape[0] < 2:
        raise InterpError(f"CKA needs at least 2 paired rows, got {x.shape[0]}")
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    if x.shape[0] < max(x.shape[1], y.shape[1]):
        k, m = x @ x.T, y @ y.T
        cross, norm_x, norm_y = float(np.sum(k * m)), np.linalg.norm(k), np.linalg.norm(m)
    else:
        cross = float(np.linalg.norm(y.T @ x) ** 2)
        norm_x, norm_y = np.linalg.norm(x.T @ x), np.linalg.norm(y.T @ y)
    if norm_x == 0 or norm_y == 0:
        return float("nan")
    return cross / float(norm_x * norm_y)


def shuffled_cka(x: np.ndarray, y: np.ndarray, *, n_perm: int = 10, seed: int = 0) -> float:
    """Mean linear CKA of y against x with its rows (words) randomly re-paired, `n_perm` times: the chance level
    of these two matrices. Linear CKA of unrelated states is far from 0 when the words are few against the width
    (with n < d every centred Gram matrix is close to a multiple of the centring matrix), so a layer's CKA is
    read against this level, not against 0."""
    rng = np.random.default_rng(seed)
    return float(np.mean([linear_cka(x[rng.permutation(x.shape[0])], y) for _ in range(n_perm)]))


@dataclass(frozen=True)
class ProbeScores:
    """Held-out R² of word-level bag-of-characters probes (on the test items' words).

    text_to_text and audio_to_audio are the within-modality references (trained and tested on one side);
    text_to_audio is the cross-modal score (trained on text-side words, tested on audio-side words);
    text_to_audio_centred does the same after moving the audio states by (text mean − audio mean) of the
    training words, so a constant offset between the modalities does not count against the transfer.
    """

    text_to_text: float
    audio_to_audio: float
    text_to_audio: float
    text_to_audio_centred: float
    alpha_text: float
    alpha_audio: float
    n_train_words: int
    n_test_words: int

    def to_dict(self) -> dict[str, float | int | None]:
        return {key: (None if isinstance(value, float) and not np.isfinite(value) else value)
                for key, value in self.__dict__.items()}


def split_items(n_items: int, test_fraction: float, seed: int) -> np.ndarray:
    """(n_items,) bool, True for a test item: round(test_fraction · n) items (at least 1, at most n − 1),
    drawn with `seed`. Words of one item never straddle the split, so a probe is scored on unseen utterances."""
    if n_items < 2:
        raise InterpError(f"the cross-modal probe needs at least 2 items with word timings, got {n_items}")
    if not 0.0 < test_fraction < 1.0:
        raise InterpError(f"test fraction must lie strictly between 0 and 1, got {test_fraction}")
    n_test = min(max(1, round(test_fraction * n_items)), n_items - 1)
    test = np.zeros(n_items, dtype=bool)
    test[np.random.default_rng(seed).permutation(n_items)[:n_test]] = True
    return test


def _fit(x: np.ndarray, y: np.ndarray, groups: np.ndarray, n_folds: int, seed: int) -> RidgeResult:
    """Ridge x → y with λ by cross-validation over folds of items (`groups`); over folds of words when the
    training side holds a single item (tiny sets), with a log line saying so."""
    distinct = np.unique(groups).size
    if distinct < 2:
        _log.info("one training item: the ridge λ is cross-validated over words, not items")
        groups = np.arange(x.shape[0])
        distinct = x.shape[0]
    folds = min(n_folds, distinct)
    if folds < 2:
        raise InterpError(f"the cross-modal probe needs at least 2 training words, got {x.shape[0]}")
    acc = RidgeAccumulator(folds)
    acc.update(x, y, item_folds(groups, folds, seed))
    scatter = float(np.sum((x - x.mean(axis=0)) ** 2))
    return fit_ridge(acc, lambda_grid(scatter, x.shape[1]))


def cross_modal_probe(text: np.ndarray, audio: np.ndarray, targets: np.ndarray, groups: np.ndarray,
                      test: np.ndarray, *, n_folds: int = 5, seed: int = 0) -> ProbeScores:
    """Bag-of-characters ridge probes on word means: text (n, d) and audio (n, d) paired by row, targets (n, k),
    groups (n,) each word's item, test (n,) bool for the test items' words. See `ProbeScores`.

    The cross-modal score uses the text probe as fitted; R² is averaged over the outputs that vary among the
    test words (probes.boc.r2_over_varying_outputs), so absent letters do not count.
    """
    text, audio = np.asarray(text, dtype=np.float64), np.asarray(audio, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    train = ~test
    if test.sum() < 2 or train.sum() < 2:
        raise InterpError(f"the cross-modal probe needs at least 2 training and 2 test words, got "
                          f"{int(train.sum())} and {int(test.sum())}")
    on_text = _fit(text[train], targets[train], groups[train], n_folds, seed)
    on_audio = _fit(audio[train], targets[train], groups[train], n_folds, seed)
    shift = text[train].mean(axis=0) - audio[train].mean(axis=0)
    truth = targets[test]
    return ProbeScores(
        text_to_text=r2_over_varying_outputs(truth, on_text.predict(text[test])),
        audio_to_audio=r2_over_varying_outputs(truth, on_audio.predict(audio[test])),
        text_to_audio=r2_over_varying_outputs(truth, on_text.predict(audio[test])),
        text_to_audio_centred=r2_over_varying_outputs(truth, on_text.predict(audio[test] + shift)),
        alpha_text=on_text.alpha, alpha_audio=on_audio.alpha,
        n_train_words=int(train.sum()), n_test_words=int(test.sum()))
