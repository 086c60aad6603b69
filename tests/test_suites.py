"""Built-in suites: balanced, seeded, and for the acoustic controls the label lives in the voice only."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import parselmouth
import pytest

from interp.data.manifest import SpokenSet
from interp.data.tasks import synthesize_suite
from interp.errors import DataError
from tests.helpers import run_cli


def _best_threshold_accuracy(values: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of the best single threshold on one feature (either direction)."""
    best = 0.0
    for threshold in values:
        predicted = (values >= threshold).astype(int)
        best = max(best, float(np.mean(predicted == labels)), float(np.mean(predicted != labels)))
    return best


def _transcript_only_accuracy(spoken: SpokenSet) -> float:
    """Accuracy of the best rule that sees only the transcript: the majority label of each transcript."""
    by_text: dict[str, Counter] = {}
    for item in spoken.items:
        by_text.setdefault(item.transcript, Counter())[item.label] += 1
    return sum(c.most_common(1)[0][1] for c in by_text.values()) / len(spoken)


def _median_f0(samples: np.ndarray) -> float:
    pitch = parselmouth.Sound(samples.astype(np.float64), sampling_frequency=16000).to_pitch(
        pitch_floor=50.0, pitch_ceiling=500.0)
    f0 = pitch.selected_array["frequency"]
    return float(np.median(f0[f0 > 0]))


@pytest.fixture(scope="module", params=["pitch", "rate"])
def voice_suite(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> SpokenSet:
    out = tmp_path_factory.mktemp("suite") / request.param
    result = run_cli("data", "synth", request.param, "--n", "40", "--seed", "0", "--out", out)
    assert result.returncode == 0, result.stderr
    return SpokenSet.open(out)


def test_voice_suite_label_is_not_in_the_transcript(voice_suite: SpokenSet) -> None:
    """Each transcript is spoken once with each label, so the words predict the label at chance (0.5)."""
    assert len(voice_suite) == 40
    assert Counter(item.label for item in voice_suite.items) == {0: 20, 1: 20}
    assert _transcript_only_accuracy(voice_suite) == 0.5


def test_voice_suite_label_is_in_the_audio(voice_suite: SpokenSet) -> None:
    """Pitch: Praat's median F0 separates high from low; rate: seconds per word separates fast from slow."""
    labels = np.array([item.label for item in voice_suite.items])
    if voice_suite.items[0].task == "pitch":
        feature = np.array([_median_f0(voice_suite.load_audio(item)) for item in voice_suite.items])
    else:
        feature = np.array([item.duration / len(item.words) for item in voice_suite.items])
    assert _best_threshold_accuracy(feature, labels) >= 0.95


def test_voice_suite_varies_voices(voice_suite: SpokenSet) -> None:
    """Within one label the voice and the other parameters vary, so acoustics are not constant."""
    high = [item.speech for item in voice_suite.items if item.label == 1]
    assert len({speech.voice for speech in high}) >= 4
    assert len({speech.params["pitch_range"] for speech in high}) >= 5


@pytest.mark.parametrize(("task", "classes"), [("sentiment", 2), ("topic", 4), ("yesno", 2)])
def test_text_suites_are_balanced_unique_and_seeded(task: str, classes: int) -> None:
    """100 items: equal labels, distinct transcripts, the same seed gives the same texts."""
    items = synthesize_suite(task, n=100, seed=0)
    assert Counter(item.label for item in items) == {label: 100 // classes for label in range(classes)}
    assert len({item.transcript for item in items}) == 100
    assert items == synthesize_suite(task, n=100, seed=0)
    assert items != synthesize_suite(task, n=100, seed=1)


def test_yesno_answers_follow_category_membership() -> None:
    """A 'yes' question names a member of its category and a 'no' one a member of another category."""
    from interp.data import tasks

    for item in synthesize_suite("yesno", n=60, seed=3):
        member = next(m for members in tasks._CATEGORIES.values() for m in members if f" {m} " in item.transcript)
        category = next(c for c in tasks._CATEGORIES if item.transcript.rstrip("?").endswith(c))
        assert (member in tasks._CATEGORIES[category]) == (item.answer == "yes"), item.transcript


def test_unknown_suite_and_odd_pair_count_are_refused() -> None:
    with pytest.raises(DataError, match="unknown task 'colour'"):
        synthesize_suite("colour", n=10, seed=0)
    with pytest.raises(DataError, match="must be even"):
        synthesize_suite("pitch", n=7, seed=0)


def test_synth_cli_writes_provenance(sentiment_set: Path) -> None:
    """The set records the command, its config, seed, versions, torch threads and git commit."""
    import json

    provenance = json.loads((sentiment_set / "provenance.json").read_text())
    assert provenance["command"] == "interp data synth"
    assert provenance["config"]["task"] == "sentiment" and provenance["seed"] == 0
    assert "numpy" in provenance["versions"] and "git_commit" in provenance
    assert provenance["torch_threads"] == 1  # interp --threads 1 data synth ...
