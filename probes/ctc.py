"""CTC text decodability: can a linear map read an item's characters off its audio rows?

One row of a speech LLM's audio positions often spans more than one character (Ultravox stacks 8
Whisper frames, 160 ms, into one row), so each row is expanded to r CTC frames: the probe maps a row's
d features to r × len(CHARSET) logits (blank = index 0), frame k·r + j being slot j of row k. r is one
number for a whole sweep, so that the scores of its sites are comparable; `choose_frames_per_row` picks
the smallest r with which every training item can emit its transcript (CTC needs one frame per
character plus one blank between repeated characters).

Training: features standardised with the training items' mean and standard deviation; weights start
at zero (a linear probe has no symmetry to break, and zero leaves nothing to seed); Adam over
mini-batches of whole items in a seeded order, `torch.nn.CTCLoss(zero_infinity=True)`; early stopping
on the CTC loss of a held-out share of the training items, keeping the best epoch's weights.

Score = 1 − CER of greedy decoding (argmax per frame, collapse repeats, drop blanks) on held-out items,
CER = Σ edits / Σ reference characters over items (pooled, as ASR benchmarks do), with a percentile
bootstrap interval over held-out items (`interp.estimates.bootstrap_ci`: per-item edits and lengths
resampled together, ratio of sums).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from interp.errors import InterpError
from interp.estimates import Estimate, bootstrap_ci
from probes.targets import BLANK, CHARSET

__all__ = [
    "CtcExample", "CtcFit", "CtcItem", "CtcProbe", "CtcResult", "MAX_FRAMES_PER_ROW",
    "choose_frames_per_row", "ctc_length", "ctc_probe", "edit_distance", "fit_ctc_probe", "greedy_decode",
]

log = logging.getLogger(__name__)

MAX_FRAMES_PER_ROW = 8
"""Cap on r: beyond it a row would have to carry most of a word, which is no longer a per-position probe."""

_LEARNING_RATE = 1e-2
_BATCH_ITEMS = 8
_MAX_EPOCHS = 200
_PATIENCE = 10  # epochs without a better validation loss before stopping
_VALIDATION_SHARE = 0.15
_N_BOOT = 1000
_N_EXAMPLES = 3
_N_CLASSES = len(CHARSET)


@dataclass(frozen=True)
class CtcItem:
    """One item for the probe: its audio rows (rows, d) float32 and its CTC labels (chars,) int64 ≥ 1."""

    item_id: str
    features: np.ndarray
    labels: np.ndarray


def ctc_length(labels: np.ndarray) -> int:
    """Frames CTC needs to emit `labels`: one per character plus a blank between each repeated pair."""
    labels = np.asarray(labels)
    return int(labels.size + np.count_nonzero(labels[1:] == labels[:-1]))


def choose_frames_per_row(rows: Sequence[int], labels: Sequence[np.ndarray], *,
                          max_r: int = MAX_FRAMES_PER_ROW) -> int:
    """Smallest r ≥ 1 with rows_i · r ≥ ctc_length(labels_i) for every item, capped at max_r.

    rows: audio rows per training item; labels: their CTC labels. At the cap, items that still cannot
    fit are logged (their CTC loss is infinite and zeroed, so they do not train the probe).
    """
    if len(rows) != len(labels) or not rows:
        raise InterpError(f"need one label sequence per item and at least one item, got {len(rows)} and {len(labels)}")
    counts = np.asarray(rows, dtype=np.int64)
    if (counts < 1).any():
        raise InterpError("every CTC item needs at least one audio row")
    needed = np.array([ctc_length(label) for label in labels], dtype=np.int64)
    r = int(max(1, np.ceil(needed / counts).max()))
    if r > max_r:
        short = int(np.count_nonzero(counts * max_r < needed))
        log.warning("CTC: %d of %d items need more than %d frames per row; r is capped at %d and they are skipped "
                    "in training", short, counts.size, max_r, max_r)
        return max_r
    return r


def greedy_decode(log_probs: np.ndarray) -> np.ndarray:
    """Best path of CTC frames (frames, classes): argmax per frame, repeats collapsed, blanks dropped → (chars,)."""
    best = np.asarray(log_probs).argmax(axis=-1)
    keep = np.ones(best.size, dtype=bool)
    keep[1:] = best[1:] != best[:-1]
    best = best[keep]
    return best[best != BLANK].astype(np.int64)


def edit_distance(reference: np.ndarray, hypothesis: np.ndarray) -> int:
    """Levenshtein distance between two label sequences (substitution, insertion, deletion cost 1).

    One numpy row per reference symbol; insertions within a row are the running minimum of
    cur[j] − j (cur[j] = min over k ≤ j of cur[k] + j − k), so a row is O(len(hypothesis)) in numpy.
    """
    ref, hyp = np.asarray(reference), np.asarray(hypothesis)
    steps = np.arange(hyp.size + 1)
    previous = steps.copy()
    for i, symbol in enumerate(ref, start=1):
        current = np.empty_like(previous)
        current[0] = i
        current[1:] = np.minimum(previous[:-1] + (hyp != symbol), previous[1:] + 1)
        previous = np.minimum.accumulate(current - steps) + steps
    return int(previous[-1])


@dataclass(frozen=True)
class CtcProbe:
    """A fitted CTC probe: standardisation, then logits = W·z + b reshaped to r frames per row.

    mean, scale: (d,) float64; weight: (r·classes, d) float32; bias: (r·classes,) float32.
    """

    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    frames_per_row: int

    def log_probs(self, features: np.ndarray) -> np.ndarray:
        """(rows, d) → (rows·r, classes) float32 log-probabilities, frames in time order."""
        z = ((np.asarray(features, dtype=np.float64) - self.mean) / self.scale).astype(np.float32)
        logits = (z @ self.weight.T + self.bias).reshape(-1, _N_CLASSES)
        return (torch.log_softmax(torch.from_numpy(logits), dim=-1)).numpy()

    def decode(self, features: np.ndarray) -> np.ndarray:
        """Greedy labels (chars,) int64 of one item's rows (rows, d)."""
        return greedy_decode(self.log_probs(features))


@dataclass(frozen=True)
class CtcFit:
    """A probe and how its training went: epochs run, the epoch kept, its validation loss, item counts."""

    probe: CtcProbe
    epochs: int
    best_epoch: int
    validation_loss: float
    n_fit_items: int
    n_validation_items: int


def _standardiser(features: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of all rows, float64; a constant feature gets scale 1."""
    d = features[0].shape[1]
    n, total, squares = 0, np.zeros(d), np.zeros(d)
    for x in features:
        x64 = x.astype(np.float64)
        n, total, squares = n + x.shape[0], total + x64.sum(axis=0), squares + (x64 * x64).sum(axis=0)
    mean = total / n
    std = np.sqrt(np.clip(squares / n - mean * mean, 0.0, None))
    return mean, np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), std, 1.0)


class _Batcher:
    """CTC losses of padded mini-batches of items under a linear map (weight (r·classes, d), bias)."""

    def __init__(self, features: list[torch.Tensor], labels: list[np.ndarray], frames_per_row: int) -> None:
        self.features, self.labels, self.r = features, labels, frames_per_row
        self.loss_fn = torch.nn.CTCLoss(blank=BLANK, reduction="mean", zero_infinity=True)

    def loss(self, weight: torch.Tensor, bias: torch.Tensor, members: np.ndarray) -> torch.Tensor:
        """CTCLoss 'mean' of the items `members`: each item's loss per target character, averaged."""
        x = torch.nn.utils.rnn.pad_sequence([self.features[i] for i in members])  # (rows, batch, d)
        rows, batch = x.shape[0], x.shape[1]
        logits = torch.nn.functional.linear(x, weight, bias).reshape(rows, batch, self.r, _N_CLASSES)
        frames = logits.permute(0, 2, 1, 3).reshape(rows * self.r, batch, _N_CLASSES)  # frame = row·r + slot
        lengths = torch.tensor([self.features[i].shape[0] * self.r for i in members])
        targets = torch.from_numpy(np.concatenate([self.labels[i] for i in members]))
        target_lengths = torch.tensor([self.labels[i].size for i in members])
        return self.loss_fn(torch.log_softmax(frames, dim=-1), targets, lengths, target_lengths)

    def mean_loss(self, weight: torch.Tensor, bias: torch.Tensor, members: np.ndarray) -> float:
        """`loss` over all `members`, computed in batches and averaged with equal weight per item."""
        with torch.no_grad():
            total = sum(float(self.loss(weight, bias, members[s:s + _BATCH_ITEMS])) * members[s:s + _BATCH_ITEMS].size
                        for s in range(0, members.size, _BATCH_ITEMS))
        return total / members.size


def fit_ctc_probe(items: Sequence[CtcItem], *, frames_per_row: int, seed: int) -> CtcFit:
    """Train a CTC probe on `items` (all of one site), early-stopping on a seeded held-out share of them.

    Memory: the items' rows twice (as given, and standardised float32 for torch). Deterministic for a seed.
    """
    if len(items) < 2:
        raise InterpError(f"a CTC probe needs at least 2 training items (one to validate on), got {len(items)}")
    if frames_per_row < 1:
        raise InterpError(f"CTC frames per row must be at least 1, got {frames_per_row}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(items))
    n_val = max(1, int(round(_VALIDATION_SHARE * len(items))))
    validation, fit = order[:n_val], order[n_val:]
    mean, scale = _standardiser([item.features for item in items])
    features = [torch.from_numpy(((item.features - mean) / scale).astype(np.float32)) for item in items]
    batcher = _Batcher(features, [np.asarray(item.labels, dtype=np.int64) for item in items], frames_per_row)
    weight = torch.zeros(frames_per_row * _N_CLASSES, mean.size, requires_grad=True)
    bias = torch.zeros(frames_per_row * _N_CLASSES, requires_grad=True)
    optimiser = torch.optim.Adam([weight, bias], lr=_LEARNING_RATE)
    best_loss, best_epoch, best_params = np.inf, 0, (weight.detach().clone(), bias.detach().clone())
    epoch = 0
    for epoch in range(1, _MAX_EPOCHS + 1):
        shuffled = fit[rng.permutation(fit.size)]
        for start in range(0, shuffled.size, _BATCH_ITEMS):
            optimiser.zero_grad()
            batcher.loss(weight, bias, shuffled[start:start + _BATCH_ITEMS]).backward()
            optimiser.step()
        val_loss = batcher.mean_loss(weight, bias, validation)
        if val_loss < best_loss:
            best_loss, best_epoch, best_params = val_loss, epoch, (weight.detach().clone(), bias.detach().clone())
        elif epoch - best_epoch >= _PATIENCE:
            break
    log.debug("CTC probe: %d epochs, best %d (validation loss %.4f)", epoch, best_epoch, best_loss)
    probe = CtcProbe(mean, scale, best_params[0].numpy(), best_params[1].numpy(), frames_per_row)
    return CtcFit(probe, epoch, best_epoch, best_loss, int(fit.size), int(validation.size))


@dataclass(frozen=True)
class CtcExample:
    """A held-out item's reference characters and the probe's greedy decoding."""

    item_id: str
    reference: str
    decoded: str


@dataclass(frozen=True)
class CtcResult:
    """Held-out CTC decodability of one site: score = 1 − CER with its bootstrap interval over items."""

    score: Estimate
    cer: float
    frames_per_row: int
    epochs: int
    best_epoch: int
    n_train_items: int
    n_test_items: int
    examples: tuple[CtcExample, ...]


def _text(labels: np.ndarray) -> str:
    return "".join(CHARSET[i] for i in labels)


def _one_minus_cer(edits: np.ndarray, lengths: np.ndarray) -> float:
    total = lengths.sum()
    return float(1.0 - edits.sum() / total) if total > 0 else float("nan")


def ctc_probe(train: Sequence[CtcItem], test: Iterable[CtcItem], *, frames_per_row: int, seed: int) -> CtcResult:
    """Fit on `train`, decode each `test` item greedily, score 1 − CER with a 1,000-resample item bootstrap.

    test may be a generator (items are decoded one at a time, so held-out rows need not fit in memory).
    """
    fit = fit_ctc_probe(train, frames_per_row=frames_per_row, seed=seed)
    edits, lengths, examples = [], [], []
    for item in test:
        decoded = fit.probe.decode(item.features)
        edits.append(edit_distance(item.labels, decoded))
        lengths.append(item.labels.size)
        if len(examples) < _N_EXAMPLES:
            examples.append(CtcExample(item.item_id, _text(item.labels), _text(decoded)))
    if not lengths or sum(lengths) == 0:
        raise InterpError("CTC scoring needs held-out items with at least one reference character")
    edit_array, length_array = np.array(edits, dtype=np.float64), np.array(lengths, dtype=np.float64)
    score = bootstrap_ci(_one_minus_cer, edit_array, length_array, n_boot=_N_BOOT, seed=seed)
    return CtcResult(score, 1.0 - score.value, frames_per_row, fit.epochs, fit.best_epoch, len(train),
                     len(lengths), tuple(examples))
