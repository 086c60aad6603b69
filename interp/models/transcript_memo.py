"""Transcripts made once per (ASR, clip) in a process and shared by every system that hears that clip.

A study runs the same Whisper on the same clips many times over: mini-cascade and mini-cascade-gemma both use
Whisper-base, and the swap ablation feeds items the recordings of other items that the cascade has already
transcribed. Whisper pads every clip to 30 s, so each costs about as much as a long one. Greedy decoding is
deterministic and, for clips padded to the same 30 s window, independent of a clip's batch companions (checked
on real speech: token-identical alone, in batches of 2, 5 and 8, for base and tiny.en), so the memo changes no
number, only the time. Each entry keeps the seconds its clip cost when it was transcribed (its share of that
batch), so that a run which records latency reports what hearing the clip costs, not the memo's lookup.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["MEMO_SIZE", "TRANSCRIPTS", "Transcribed", "TranscriptMemo", "clip_key"]

_log = logging.getLogger(__name__)

MEMO_SIZE = 8192
"""Clips the process-wide memo keeps (a transcript and a float each): a study's sets, many times over."""


@dataclass(frozen=True)
class Transcribed:
    """A clip's transcript and the seconds its transcription took (its share of the batch it was sent in)."""

    text: str
    seconds: float


def clip_key(clip: np.ndarray) -> tuple[bytes, tuple[int, ...]]:
    """(sha256 of the clip's float32 samples, its shape): what an ASR hears of a clip."""
    samples = np.ascontiguousarray(clip, dtype=np.float32)
    return hashlib.sha256(samples.tobytes()).digest(), samples.shape


class TranscriptMemo:
    """A bounded (least recently used first out), thread-safe memo of timed transcripts by (ASR identity, clip).

    The identity must differ between any two ASRs that could transcribe a clip differently (another model,
    other weights, another device or dtype); the weights are assumed frozen as loaded, as every system's are."""

    def __init__(self, size: int = MEMO_SIZE) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[Hashable, bytes, tuple[int, ...]], Transcribed] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def transcribe(self, identity: Hashable, audio: Sequence[np.ndarray],
                   run: Callable[[list[np.ndarray]], list[str]]) -> list[Transcribed]:
        """Each clip's transcript and seconds; `run` (the ASR's batched transcription) is called once, on the
        clips not in the memo (each distinct clip once, in their original order), or not at all."""
        keys = [(identity, *clip_key(clip)) for clip in audio]
        with self._lock:
            found = {key: self._entries[key] for key in keys if key in self._entries}
            for key in found:
                self._entries.move_to_end(key)
        missing = list(dict.fromkeys(key for key in keys if key not in found))
        if missing:
            first = {key: index for index, key in reversed(list(enumerate(keys)))}
            started = time.perf_counter()
            texts = run([audio[first[key]] for key in missing])
            share = (time.perf_counter() - started) / len(missing)
            made = {key: Transcribed(text, share) for key, text in zip(missing, texts, strict=True)}
            with self._lock:
                self._entries.update(made)
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
            found.update(made)
        sent = set(missing)
        hits = sum(key not in sent for key in keys)
        _log.debug("%s: %d of %d clips from the transcript memo, %d sent to the ASR", identity, hits, len(keys),
                   len(missing))
        return [found[key] for key in keys]


TRANSCRIPTS = TranscriptMemo()
"""The process's memo: every WhisperASR of a study shares it."""
