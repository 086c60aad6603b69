"""espeak-ng through the library the `espeakng-loader` wheel ships (ctypes, no system package).

Voice, rate and pitch are exact parameters, so acoustic-only labels can be made on purpose. Word times come
from espeak's word events.
"""

from __future__ import annotations

import _ctypes
import ctypes
import threading
from dataclasses import asdict

import numpy as np

from interp.data.audio import resample
from interp.data.manifest import Speech, Word
from interp.data.tts.settings import (
    EngineName,
    EspeakSettings,
    PiperSettings,
    Utterance,
    text_tokens,
)
from interp.errors import DataError

__all__ = ["EspeakEngine"]

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
_EVENT_LIST_TERMINATED, _EVENT_WORD = 0, 1
_PARAM_RATE, _PARAM_PITCH, _PARAM_RANGE = 1, 3, 4


class _EspeakEvent(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
        ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8),
    ]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                  ctypes.POINTER(_EspeakEvent))


class EspeakEngine:
    """espeak-ng in synchronous mode, loaded afresh for every utterance.

    espeak-ng keeps synthesis state in static variables across calls (the waveform generator's phase;
    espeak_Terminate does not reset it), so the same text spoken twice in one process gives different
    samples. Loading the library anew for each utterance (dlopen/dlclose, ~10 ms) makes the output a
    function of the text and settings alone. The lock serialises users of the C library's globals.
    """

    name: EngineName = "espeak"

    def __init__(self) -> None:
        import espeakng_loader

        self._library_path = espeakng_loader.get_library_path()
        self._data_path = espeakng_loader.get_data_path().encode()
        self._lock = threading.Lock()
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int]] = []
        self._callback = _SynthCallback(self._collect)
        self.rate = 22_050

    def _collect(self, wav: ctypes.Array, count: int, events: ctypes.Array) -> int:
        if wav and count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        index = 0
        while events[index].type != _EVENT_LIST_TERMINATED:
            event = events[index]
            if event.type == _EVENT_WORD:
                self._events.append((event.text_position - 1, event.sample))
            index += 1
        return 0

    def speak(self, text: str, settings: EspeakSettings | PiperSettings = EspeakSettings()) -> Utterance:
        if not isinstance(settings, EspeakSettings):
            raise TypeError("the espeak engine takes EspeakSettings")
        with self._lock:
            self._chunks, self._events = [], []
            library = ctypes.CDLL(self._library_path)
            try:
                self._synthesise(library, text, settings)
            finally:
                _ctypes.dlclose(library._handle)
            native = (np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)).astype(np.float32)
            native /= 32768
            events = list(self._events)
        words = self._words(text, native, events)
        speech = Speech(kind="tts", engine="espeak", voice=settings.voice, params=asdict(settings))
        return Utterance(samples=resample(native, from_rate=self.rate), words=words, speech=speech)

    def _synthesise(self, library: ctypes.CDLL, text: str, settings: EspeakSettings) -> None:
        library.espeak_Initialize.restype = ctypes.c_int
        self.rate = library.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self._data_path, 0)
        if self.rate <= 0:
            raise DataError("espeak-ng failed to initialise (espeakng-loader's data folder is missing?)")
        library.espeak_SetSynthCallback(self._callback)
        if library.espeak_SetVoiceByName(settings.voice.encode()) != 0:
            raise DataError(f"espeak-ng has no voice {settings.voice!r} "
                            "(try en-us, en, en-gb-x-rp, with +m1…m7 or +f1…f5)")
        for parameter, value in ((_PARAM_RATE, settings.rate_wpm), (_PARAM_PITCH, settings.pitch),
                                 (_PARAM_RANGE, settings.pitch_range)):
            library.espeak_SetParameter(parameter, value, 0)
        encoded = text.encode("utf-8")
        library.espeak_Synth(ctypes.create_string_buffer(encoded), len(encoded) + 1, 0, 0, 0, _CHARS_UTF8, None, None)
        library.espeak_Terminate()

    def _words(self, text: str, native: np.ndarray, events: list[tuple[int, int]]) -> tuple[Word, ...]:
        """Word start = espeak's word event; end = the next word's start, trimmed of trailing silence.

        espeak joins some unstressed words with their neighbour and emits one event for both ("on the"):
        a word without its own event shares the span between the events around it, by character count.
        """
        tokens = text_tokens(text)
        if not tokens:
            return ()
        anchors = {0: 0, len(tokens): native.size}
        for char, sample in events:
            for index, (_, begin, end) in enumerate(tokens):
                if begin <= char < end:
                    anchors.setdefault(index, sample)
        starts = _interpolate(anchors, [len(word) for word, _, _ in tokens])
        words = []
        for index, (word, _, _) in enumerate(tokens):
            start, next_start = starts[index], max(starts[index + 1], starts[index])
            end = _trim_end(native, start, next_start, self.rate)
            words.append(Word(word, round(start / self.rate, 4), round(end / self.rate, 4)))
        return tuple(words)


def _interpolate(anchors: dict[int, int], lengths: list[int]) -> list[int]:
    """Start sample of every token (and of the end, at index len(lengths)) from the anchored ones,
    spreading each gap between anchors over its tokens in proportion to their lengths."""
    known = sorted(anchors)
    starts = [0] * (len(lengths) + 1)
    for left, right in zip(known, known[1:]):
        span, width = anchors[right] - anchors[left], sum(lengths[left:right])
        for index in range(left, right):
            starts[index] = anchors[left] + span * sum(lengths[left:index]) // width
    starts[-1] = anchors[len(lengths)]
    return starts


def _trim_end(samples: np.ndarray, start: int, end: int, rate: int) -> int:
    """Last sample of [start, end) above -35 dB of the utterance's loudest 5 ms frame (drops trailing pause)."""
    frame = max(1, rate // 200)
    segment = samples[start:end]
    if segment.size < frame:
        return end
    frames = segment[: segment.size // frame * frame].reshape(-1, frame)
    rms = np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1))
    peak = np.sqrt((samples.astype(np.float64) ** 2).mean()) * 4 + 1e-9
    loud = np.nonzero(rms > peak * 10 ** (-35 / 20))[0]
    return end if loud.size == 0 else start + (int(loud[-1]) + 1) * frame
