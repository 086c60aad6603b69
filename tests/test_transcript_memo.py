"""The process-wide transcript memo: each (ASR, clip) is transcribed once, every WhisperASR of the same weights
shares it, the seconds recorded are the clip's own, and no transcript changes."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import pytest

from interp.behavior.answering import transcribe_batch
from interp.data.audio import SAMPLE_RATE, read_audio
from interp.data.loaders import load_librispeech
from interp.models import whisper_ct2
from interp.models.cascade import Cascade
from interp.models.mini import WhisperASR
from interp.models.transcript_memo import TRANSCRIPTS, TranscriptMemo, clip_key
from interp.resources import resource_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")

_TRANSCRIBE = whisper_ct2.transcribe


class Runs:
    """A stand-in ASR run that records every batch it is sent."""

    def __init__(self) -> None:
        self.batches: list[list[np.ndarray]] = []

    def __call__(self, clips: list[np.ndarray]) -> list[str]:
        self.batches.append(list(clips))
        return [text_of(clip) for clip in clips]


def text_of(clip: np.ndarray) -> str:
    return f"{clip.shape}:{float(np.sum(clip)):.6f}"


def noise(seconds: float, seed: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(SAMPLE_RATE * seconds))).astype(np.float32)


def test_only_clips_not_in_the_memo_are_sent_once_each_in_order() -> None:
    memo, run = TranscriptMemo(), Runs()
    a, b, c = noise(1.0, 0), noise(0.5, 1), noise(0.7, 2)
    first = memo.transcribe("asr", [a, b], run)
    again = memo.transcribe("asr", [c, a, c, b], run)
    assert len(run.batches) == 2 and len(run.batches[1]) == 1 and run.batches[1][0] is c
    assert [entry.text for entry in again] == [text_of(c), text_of(a), text_of(c), text_of(b)]
    assert again[1] == first[0] and again[3] == first[1]  # the seconds too: the clip's original cost
    assert memo.transcribe("asr", [b, a], run) == [first[1], first[0]] and len(run.batches) == 2


def test_a_changed_sample_a_changed_shape_or_another_asr_is_another_key() -> None:
    memo, run = TranscriptMemo(), Runs()
    clip = noise(1.0, 0)
    changed = clip.copy()
    changed[1234] += 1e-6
    memo.transcribe("asr", [clip], run)
    assert clip_key(changed) != clip_key(clip)
    assert clip_key(clip.astype(np.float64)) == clip_key(clip)  # the ASR hears float32 samples
    memo.transcribe("asr", [changed], run)
    memo.transcribe("asr", [clip.reshape(2, -1)], run)
    memo.transcribe("other asr", [clip], run)
    assert [len(batch) for batch in run.batches] == [1, 1, 1, 1]
    memo.transcribe("asr", [clip, changed], run)
    assert len(run.batches) == 4


def test_the_memo_forgets_the_least_recently_used_and_errors_store_nothing() -> None:
    memo, run = TranscriptMemo(size=2), Runs()
    a, b, c = noise(0.3, 0), noise(0.3, 1), noise(0.3, 2)
    memo.transcribe("asr", [a, b], run)
    memo.transcribe("asr", [a], run)  # a is now the most recent
    memo.transcribe("asr", [c], run)  # b goes
    assert len(memo) == 2 and len(run.batches) == 2
    memo.transcribe("asr", [a, c], run)
    assert len(run.batches) == 2
    memo.transcribe("asr", [b], run)
    assert len(run.batches) == 3

    def fails(clips: list[np.ndarray]) -> list[str]:
        raise RuntimeError("the ASR failed")

    with pytest.raises(RuntimeError):
        memo.transcribe("asr", [noise(0.3, 3)], fails)
    memo.transcribe("asr", [noise(0.3, 3)], run)
    assert len(run.batches) == 4


def test_transcribe_batch_records_the_asrs_own_seconds_or_times_the_call() -> None:
    items = [SimpleNamespace(id="a"), SimpleNamespace(id="b")]
    clips = {"a": noise(0.3, 0), "b": noise(0.3, 1)}

    class Timed:
        name = "timed"

        def transcribe_timed(self, audio):
            return [("one", 1.5), ("two", 2.5)]

    class Plain:
        name = "plain"

        def transcribe(self, audio):
            return ["one", "two"]

    timed = transcribe_batch(Cascade(Timed(), None, name="c"), None, items, audio=lambda item: clips[item.id])
    assert [heard.transcript for heard in timed.values()] == ["one", "two"]
    assert 1.5 <= timed["a"].seconds < 1.6 and 2.5 <= timed["b"].seconds < 2.6
    plain = transcribe_batch(Cascade(Plain(), None, name="c"), None, items, audio=lambda item: clips[item.id])
    assert plain["a"].transcript == "one" and plain["a"].seconds == plain["b"].seconds < 0.1


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    """Two short shipped LibriSpeech utterances and the first 2 s of a third."""
    recordings = [read_audio(item.recording)[0] for item in load_librispeech(resource_path("speech/librispeech"))]
    return [recordings[1], recordings[2], recordings[0][:2 * SAMPLE_RATE]]


@pytest.fixture(scope="module")
def base() -> WhisperASR:
    return WhisperASR("base", name="mini-whisper")


@pytest.fixture(scope="module")
def alone(base: WhisperASR, clips: list[np.ndarray]) -> list[str]:
    """Each clip transcribed on its own, without the memo."""
    return [_TRANSCRIBE(base.whisper, [clip])[0] for clip in clips]


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[list[np.ndarray]]]:
    """The batches that reach Whisper (whisper_ct2.transcribe) during a test."""
    batches: list[list[np.ndarray]] = []

    def counted(whisper, audio, **options):
        batches.append(list(audio))
        return _TRANSCRIBE(whisper, audio, **options)

    monkeypatch.setattr(whisper_ct2, "transcribe", counted)
    yield batches


@pytest.mark.slow
def test_whisper_asrs_of_one_variant_share_transcripts_and_their_seconds(base, clips, alone, sent) -> None:
    TRANSCRIPTS.clear()
    first = base.transcribe_timed(clips)
    assert len(sent) == 1 and len(sent[0]) == 3
    assert [text for text, _ in first] == alone  # in a batch of 3 as alone: greedy decoding is batch-independent
    assert all(seconds > 0 for _, seconds in first)
    other = WhisperASR("base", name="another")
    assert other.memo_key == base.memo_key
    assert other.transcribe_timed(clips[::-1]) == first[::-1] and len(sent) == 1  # no Whisper call
    assert other.transcribe(clips) == alone
    heard = transcribe_batch(Cascade(other, None, name="cascade"), None, [SimpleNamespace(id="x")],
                             audio=lambda item: clips[0])
    assert first[0][1] <= heard["x"].seconds < first[0][1] + 0.05 and len(sent) == 1
    changed = clips[2].copy()
    changed[100] += 1e-4
    assert base.transcribe([clips[0], changed]) == [alone[0], alone[2]]
    assert len(sent) == 2 and len(sent[1]) == 1 and sent[1][0] is changed


@pytest.mark.slow
def test_another_variant_does_not_hear_bases_transcripts(base, clips, sent) -> None:
    base.transcribe(clips[2:])
    calls = len(sent)
    tiny = WhisperASR("tiny.en", name="mini-whisper-tiny")
    assert tiny.memo_key != base.memo_key
    assert tiny.transcribe(clips[2:]) == [_TRANSCRIBE(tiny.whisper, clips[2:])[0]]
    assert len(sent) == calls + 1
