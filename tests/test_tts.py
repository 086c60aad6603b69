"""Both TTS engines: 16 kHz output, same input gives the same samples, word timings inside the audio."""

from __future__ import annotations

import numpy as np
import pytest

from interp.data.audio import SAMPLE_RATE
from interp.data.tts import EspeakSettings, PiperSettings, open_engine
from interp.errors import DataError

TEXT = "The old lamp was standing on the table, next to 3 books."
WORDS = ["The", "old", "lamp", "was", "standing", "on", "the", "table", "next", "to", "3", "books"]


@pytest.mark.parametrize(("engine", "settings"), [("espeak", EspeakSettings()), ("piper", PiperSettings(seed=1))])
def test_same_input_gives_same_samples(engine: str, settings: EspeakSettings | PiperSettings) -> None:
    """Speaking a text twice, with another text in between, gives identical samples."""
    tts = open_engine(engine)
    first = tts.speak(TEXT, settings)
    tts.speak("Something else entirely, to move any internal state.", settings)
    again = tts.speak(TEXT, settings)
    assert np.array_equal(first.samples, again.samples)
    assert first.samples.dtype == np.float32 and 2.0 < first.duration < 6.0


@pytest.mark.parametrize(("engine", "one", "other"), [
    ("espeak", EspeakSettings(pitch=20), EspeakSettings(pitch=80)),
    ("piper", PiperSettings(seed=1), PiperSettings(seed=2)),
])
def test_settings_change_the_samples(engine: str, one: object, other: object) -> None:
    """A different pitch (espeak) or noise seed (piper) gives different audio: the parameters are live."""
    tts = open_engine(engine)
    a, b = tts.speak(TEXT, one).samples, tts.speak(TEXT, other).samples
    assert a.size != b.size or not np.allclose(a, b)


@pytest.mark.parametrize(("engine", "settings"), [("espeak", EspeakSettings()), ("piper", PiperSettings())])
def test_word_times_cover_each_word_in_order(engine: str, settings: object) -> None:
    """Every word gets a time span inside the audio, spans are ordered and do not overlap."""
    utterance = open_engine(engine).speak(TEXT, settings)
    assert [w.text for w in utterance.words] == WORDS
    ends = 0.0
    for word in utterance.words:
        assert ends - 1e-3 <= word.t_start < word.t_end <= utterance.duration + 0.01
        ends = word.t_end
    assert utterance.words[-1].t_end > 0.7 * utterance.duration


def test_word_times_follow_the_speech_rate() -> None:
    """Slower espeak speech moves the last word later: timings come from the audio, not from the text."""
    tts = open_engine("espeak")
    fast = tts.speak(TEXT, EspeakSettings(rate_wpm=260)).words[-1].t_start
    slow = tts.speak(TEXT, EspeakSettings(rate_wpm=110)).words[-1].t_start
    assert slow > 1.8 * fast


def test_espeak_output_has_speech_energy_at_16khz() -> None:
    """The resampled signal is 16 kHz speech: its duration matches the word times and it is not silent."""
    utterance = open_engine("espeak").speak(TEXT, EspeakSettings())
    assert utterance.samples.size == pytest.approx(utterance.duration * SAMPLE_RATE)
    assert np.sqrt(np.mean(utterance.samples**2)) > 0.01


def test_unknown_engine_and_voice_are_refused() -> None:
    """Bad engine or voice names raise DataError listing what exists."""
    with pytest.raises(DataError, match="choose one of piper, espeak"):
        open_engine("festival")
    with pytest.raises(DataError, match="no voice 'xx-nope'"):
        open_engine("espeak").speak("hello", EspeakSettings(voice="xx-nope"))
