"""End-to-end check of the CTranslate2 -> transformers Whisper-base conversion (mini-whisper).

Speaks 60 task sentences with piper (30 topic, seed 1; 30 sentiment, seed 2) and transcribes them from
the same model.bin three ways, all greedy (beam 1, temperature 0), English, without timestamps, float32:
1. mini-whisper: the converted transformers model (`interp.models.whisper_ct2.transcribe`);
2. faster-whisper on CTranslate2, as users run it;
3. CTranslate2's own decoder on mini-whisper's log-mel features.
(3) isolates the conversion: the same features through both implementations, so transcripts should be
identical token for token. (2) adds faster-whisper's front end, which pads short clips in log-mel space
(with 0.0) where Whisper and transformers pad the audio with silence, so a few near-tie words differ.
Prints the three WERs, the differences, the number of identical transcripts and the disagreements, then
mini-whisper's and faster-whisper's WER on the 4 shipped LibriSpeech utterances (real read speech).
Takes about 5 minutes on 2 CPU cores (the first run also converts the weights, a few seconds).
Usage: python scripts/check_whisper_conversion.py [--n 30]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import ctranslate2
import numpy as np
import transformers
from faster_whisper import WhisperModel

from interp.data.audio import SAMPLE_RATE, read_audio
from interp.data.loaders import load_librispeech
from interp.data.tasks import synthesize_suite
from interp.data.tts import PiperSettings, open_engine
from interp.models.whisper_ct2 import MiniWhisper, ct2_model_dir, load_mini_whisper, transcribe
from interp.resources import resource_path
from interp.text_metrics import normalize_transcript, word_error_rate


def _faster_whisper(model: WhisperModel, audio: list[np.ndarray]) -> list[str]:
    """faster-whisper decoding set to match `transcribe`: greedy, no fallback, no VAD, no silence skipping."""
    texts = []
    for clip in audio:
        segments, _ = model.transcribe(clip, language="en", task="transcribe", beam_size=1, temperature=0.0,
                                       without_timestamps=True, condition_on_previous_text=False,
                                       vad_filter=False, no_speech_threshold=None)
        texts.append("".join(segment.text for segment in segments).strip())
    return texts


def _ct2_on_mini_features(mini: MiniWhisper, model: ctranslate2.models.Whisper, audio: list[np.ndarray],
                          *, batch_size: int = 8) -> list[str]:
    """CTranslate2's greedy decoding from mini-whisper's prompt and log-mel features."""
    prompt = mini.processor.tokenizer.convert_tokens_to_ids(
        ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"])
    texts = []
    for start in range(0, len(audio), batch_size):
        batch = audio[start:start + batch_size]
        features = mini.processor.feature_extractor(batch, sampling_rate=SAMPLE_RATE, return_tensors="np")
        mels = np.ascontiguousarray(features.input_features, np.float32)
        results = model.generate(ctranslate2.StorageView.from_array(mels),
                                 [prompt] * len(batch), beam_size=1, suppress_blank=True, suppress_tokens=[-1])
        texts += [t.strip() for t in mini.processor.batch_decode([r.sequences_ids[0] for r in results],
                                                                  skip_special_tokens=True)]
    return texts


def _report(label: str, references: list[str], texts: list[str], mini_texts: list[str], *, show: bool) -> None:
    """WER of `texts`, its difference from mini-whisper's, and where the two disagree."""
    wer, mini_wer = word_error_rate(references, texts), word_error_rate(references, mini_texts)
    same = sum(normalize_transcript(a) == normalize_transcript(b) for a, b in zip(mini_texts, texts))
    print(f"  WER {label}: {wer:.4f}   mini-whisper - this: {mini_wer - wer:+.4f}   "
          f"identical normalised transcripts: {same}/{len(references)}   "
          f"WER of mini-whisper against it: {word_error_rate(texts, mini_texts):.4f}")
    for reference, ours, theirs in zip(references, mini_texts, texts):
        if show and normalize_transcript(ours) != normalize_transcript(theirs):
            print(f"    ref:  {reference}\n    mini: {ours}\n    this: {theirs}")


def _librispeech() -> tuple[list[np.ndarray], list[str]]:
    items = load_librispeech(resource_path("speech/librispeech"))
    return [read_audio(item.recording)[0] for item in items], [item.transcript for item in items]


def _timed(label: str, start: float) -> None:
    print(f"  {label}: {time.perf_counter() - start:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=30, help="sentences per suite (default 30, two suites)")
    args = parser.parse_args()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    start = time.perf_counter()
    items = synthesize_suite("topic", n=args.n, seed=1) + synthesize_suite("sentiment", n=args.n, seed=2)
    references = [item.transcript for item in items]
    tts = open_engine("piper")
    audio = [tts.speak(text, PiperSettings(seed=i)).samples for i, text in enumerate(references)]
    print(f"{len(audio)} sentences, {sum(a.size for a in audio) / SAMPLE_RATE:.0f} s of piper speech")
    _timed("synthesis", start)

    start = time.perf_counter()
    mini = load_mini_whisper("base")
    print(f"mini-whisper base from {mini.source}")
    _timed("load (converts on the first run)", start)
    start = time.perf_counter()
    ours = transcribe(mini, audio)
    _timed("transformers transcription", start)

    with tempfile.TemporaryDirectory() as scratch:
        reference_model = WhisperModel(str(ct2_model_dir("base", Path(scratch))), device="cpu",
                                       compute_type="float32", cpu_threads=os.cpu_count() or 1)
        start = time.perf_counter()
        theirs = _faster_whisper(reference_model, audio)
        _timed("faster-whisper transcription", start)
        start = time.perf_counter()
        same_features = _ct2_on_mini_features(mini, reference_model.model, audio)
        _timed("CTranslate2 on mini-whisper's features", start)
        libri_audio, libri_references = _librispeech()
        libri_theirs = _faster_whisper(reference_model, libri_audio)

    print(f"\nTTS sentences (n={len(references)}):")
    print(f"  WER mini-whisper (transformers): {word_error_rate(references, ours):.4f}")
    _report("faster-whisper (CTranslate2)", references, theirs, ours, show=True)
    _report("CTranslate2 on mini-whisper's features", references, same_features, ours, show=True)

    libri_ours = transcribe(mini, libri_audio)
    print(f"\nLibriSpeech (n={len(libri_references)}):")
    print(f"  WER mini-whisper (transformers): {word_error_rate(libri_references, libri_ours):.4f}")
    _report("faster-whisper (CTranslate2)", libri_references, libri_theirs, libri_ours, show=False)
    for reference, text in zip(libri_references, libri_ours):
        print(f"    ref:  {reference}\n    mini: {text}")


if __name__ == "__main__":
    main()
