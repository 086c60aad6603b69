"""CTC probe: frames-per-row rule, greedy decoding, edit distance, and decodability of planted characters."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from interp.errors import InterpError
from interp.text_metrics import _word_edits  # an independent Levenshtein, used only as the reference
from probes.ctc import (
    CtcItem,
    choose_frames_per_row,
    ctc_length,
    ctc_probe,
    edit_distance,
    fit_ctc_probe,
    greedy_decode,
)
from probes.targets import BLANK, CHARSET, encode_chars

WORDS = "the quick brown fox jumps over lazy dog pack my box with five dozen liquor jugs".split()
N_CLASSES = len(CHARSET)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def ctc_path(labels: np.ndarray, frames: int, rng: np.random.Generator) -> np.ndarray:
    """A valid CTC alignment of `labels` over `frames` frames: blanks between repeats, spare blanks at random."""
    path: list[int] = []
    for k, label in enumerate(labels.tolist()):
        if k and labels[k - 1] == label:
            path.append(BLANK)
        path.append(label)
    spare = np.sort(rng.integers(0, len(path) + 1, size=frames - len(path)))
    return np.insert(np.array(path, dtype=np.int64), spare, BLANK)


def planted_rows(labels: np.ndarray, rows: int, r: int, rng: np.random.Generator, *, noise: float = 0.1,
                 extra_dims: int = 20) -> np.ndarray:
    """(rows, r·classes + extra_dims) float32: row k one-hot encodes CTC frames k·r … k·r + r − 1, plus noise."""
    frames = ctc_path(labels, rows * r, rng).reshape(rows, r)
    x = np.zeros((rows, r * N_CLASSES + extra_dims), dtype=np.float32)
    for slot in range(r):
        x[np.arange(rows), slot * N_CLASSES + frames[:, slot]] = 1.0
    return x + noise * rng.standard_normal(x.shape).astype(np.float32)


def planted_items(n: int, seed: int, *, r: int = 2, planted: bool = True) -> list[CtcItem]:
    """Items of 2–4 random words whose rows carry r CTC frames each (or pure noise, planted=False)."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        labels = encode_chars(" ".join(rng.choice(WORDS, size=int(rng.integers(2, 5)))))
        rows = int(np.ceil(ctc_length(labels) / r)) + int(rng.integers(0, 2))
        x = planted_rows(labels, rows, r, rng)
        items.append(CtcItem(f"item-{i:03d}", x if planted else rng.standard_normal(x.shape).astype(np.float32),
                             labels))
    return items


def test_ctc_length_counts_one_blank_between_repeated_characters() -> None:
    assert ctc_length(encode_chars("hello")) == 6
    assert ctc_length(encode_chars("aaa")) == 5
    assert ctc_length(encode_chars("abc")) == 3
    assert ctc_length(np.zeros(0, dtype=np.int64)) == 0


def test_frames_per_row_is_the_smallest_that_fits_every_item() -> None:
    labels = [encode_chars("hello"), encode_chars("abc")]  # need 6 and 3 frames
    assert choose_frames_per_row([6, 3], labels) == 1
    assert choose_frames_per_row([3, 3], labels) == 2
    assert choose_frames_per_row([2, 3], labels) == 3
    assert choose_frames_per_row([5, 1], labels) == 3  # the second item needs 3 frames from one row


def test_frames_per_row_is_capped_and_says_how_many_items_do_not_fit(caplog: pytest.LogCaptureFixture) -> None:
    labels = [encode_chars("a long transcript"), encode_chars("ab")]
    with caplog.at_level(logging.WARNING, logger="probes.ctc"):
        assert choose_frames_per_row([1, 1], labels, max_r=4) == 4
    assert "1 of 2 items need more than 4 frames per row" in caplog.text
    with pytest.raises(InterpError, match="at least one audio row"):
        choose_frames_per_row([0, 2], labels)


def test_greedy_decode_collapses_repeats_then_drops_blanks() -> None:
    a, b = CHARSET.index("a"), CHARSET.index("b")
    best = [BLANK, a, a, BLANK, a, b, b, BLANK, BLANK, b]
    log_probs = np.log(np.full((len(best), N_CLASSES), 0.01))
    log_probs[np.arange(len(best)), best] = 0.0
    np.testing.assert_array_equal(greedy_decode(log_probs), [a, a, b, b])


def test_edit_distance_equals_a_reference_levenshtein() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        ref = rng.integers(1, 5, size=int(rng.integers(0, 12)))
        hyp = rng.integers(1, 5, size=int(rng.integers(0, 12)))
        assert edit_distance(ref, hyp) == _word_edits(ref.tolist(), hyp.tolist())
    assert edit_distance(encode_chars("kitten"), encode_chars("sitting")) == 3


def test_planted_characters_are_decoded_and_noise_is_not() -> None:
    """Positive control (rows one-hot encode their CTC frames) beside a negative one (noise of the same shape)."""
    for planted, check in ((True, lambda s: s >= 0.9), (False, lambda s: s <= 0.2)):
        items = planted_items(80, seed=1, planted=planted)
        train, test = items[:64], items[64:]
        r = choose_frames_per_row([item.features.shape[0] for item in train], [item.labels for item in train])
        assert r == 2
        result = ctc_probe(train, iter(test), frames_per_row=r, seed=0)
        assert check(result.score.value), (planted, result)
        assert result.score.low <= result.score.value <= result.score.high
        assert result.cer == pytest.approx(1.0 - result.score.value)
        assert (result.n_train_items, result.n_test_items, result.frames_per_row) == (64, 16, 2)
        assert [example.item_id for example in result.examples] == ["item-064", "item-065", "item-066"]
    assert result.examples[0].reference == "".join(CHARSET[i] for i in test[0].labels)


def test_fit_is_deterministic_for_a_seed() -> None:
    items = planted_items(20, seed=2)
    first, second = (fit_ctc_probe(items, frames_per_row=2, seed=5) for _ in range(2))
    np.testing.assert_array_equal(first.probe.weight, second.probe.weight)
    assert (first.epochs, first.best_epoch, first.n_fit_items, first.n_validation_items) == (
        second.epochs, second.best_epoch, 17, 3)
    with pytest.raises(InterpError, match="at least 2 training items"):
        fit_ctc_probe(items[:1], frames_per_row=2, seed=0)
