"""Answering one item: what a system hears or reads, how it answers, and the checks made before a run writes.

* Systems with `score_choices` answer forced-choice items by log-likelihood (interp.behavior.scoring); the raw
  answer is the argmax, calibrated later over the whole file (interp.behavior.harness.finalise_choices).
* Systems without scores (`EndpointSystem`) and open tasks: greedy generation, then the parsing and matching
  rules of interp.behavior.scoring. `transcribe` items are scored by word error rate (interp.text_metrics);
  correct means a normalised exact match.
* The oracle (and any bare text LLM) reads the item's gold transcript instead of its audio; an implicit cascade
  reads the item's logit-lens text (recorded as lens_text); a cascade's ASR transcript is recorded beside its answer.
* `audio`: where a run hears something other than each item's own recording (an ablation,
  interp.data.ablation.AblatedAudio.audio), the function giving the samples heard for an item.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from interp.behavior.prediction import Prediction
from interp.behavior.scoring import match_answer, parse_choice, words
from interp.behavior.systems import System
from interp.data.manifest import Item, SpokenSet
from interp.models.cascade import Cascade, Oracle
from interp.models.encoded import EncodedSpeechLM
from interp.models.implicit_cascade import ImplicitCascade
from interp.models.prompting import choice_delimiter, continuation_ids, split_prompt
from interp.models.text_lm import TextLM
from interp.task_prompts import PromptStyle, TaskPrompt, task_prompt
from interp.text_metrics import normalize_transcript, word_error_rate

__all__ = ["ASR_BATCH", "AudioSource", "Heard", "reads_text", "input_of", "transcribe_batch", "answer_item",
           "check_scoring"]

AudioSource = Callable[[Item], np.ndarray]
"""The samples a system hears for an item ((samples,) float32 at 16 kHz); by default the item's own recording."""

ASR_BATCH = 8
"""Items a cascade transcribes in one ASR batch (Whisper pads every clip to 30 s, so batching is several times
faster)."""


@dataclass(frozen=True)
class Heard:
    """A cascade's transcript of one item from a batched ASR pass, and the item's share of its seconds."""

    transcript: str
    seconds: float


@dataclass(frozen=True)
class _Response:
    """What a system answered: scores (choices,) float64 or a generated reply, and the seconds it took."""

    scores: np.ndarray | None
    reply: str | None
    transcript: str | None
    latency_s: float


def reads_text(system: System) -> bool:
    """True for systems that read a text instead of audio: the gold transcript (the oracle, a bare text LLM) or
    the item's logit-lens text (an implicit cascade)."""
    return isinstance(system, (Oracle, TextLM, ImplicitCascade))


def input_of(system: System) -> str:
    """What the system answers from, as a run's config records it: audio, the gold transcript or lens text."""
    if isinstance(system, ImplicitCascade):
        return system.input
    return "gold transcript" if reads_text(system) else "audio"


def transcribe_batch(system: System, spoken_set: SpokenSet, items: Sequence[Item], *,
                     audio: AudioSource | None = None) -> dict[str, Heard]:
    """A cascade's transcripts of `items` (of what `audio` gives, default their own recordings) in one ASR batch,
    with each item's share of the time; empty for other systems. An ASR with `transcribe_timed` (WhisperASR,
    whose memo answers clips heard before) gives each clip's own seconds, the memo's included."""
    if not isinstance(system, Cascade):
        return {}
    audio = audio or spoken_set.load_audio
    started = time.perf_counter()
    clips = [audio(item) for item in items]
    timed = getattr(system.asr, "transcribe_timed", None)
    if timed is None:
        texts = system.asr.transcribe(clips)
        share = (time.perf_counter() - started) / len(items)
        return {item.id: Heard(text, share) for item, text in zip(items, texts)}
    loading = (time.perf_counter() - started) / len(items)
    return {item.id: Heard(text, loading + seconds) for item, (text, seconds) in zip(items, timed(clips))}


def _respond(system: System, source: np.ndarray | str, item: Item, prompt: TaskPrompt,
             heard: Heard | None) -> _Response:
    """Scores of the item's choices where the system (or a cascade's LLM) has them, else a greedy reply."""
    item_prompt = prompt.for_item(item)
    started = time.perf_counter() - (heard.seconds if heard else 0.0)
    transcript = None
    if isinstance(system, Cascade):
        transcript = heard.transcript if heard else system.transcribe(source)
        llm, source = system.llm, transcript
    else:
        llm = system
    scores = reply = None
    if item.choices and hasattr(llm, "score_choices"):
        scores = np.asarray(llm.score_choices(source, item_prompt, list(item.choices)), dtype=np.float64)
    else:
        reply = llm.generate(source, item_prompt, max_new_tokens=prompt.max_new_tokens)
    return _Response(scores, reply, transcript, round(time.perf_counter() - started, 6))


@dataclass(frozen=True)
class _Judgement:
    """The answer read from a response, and whether it is right."""

    prediction: int | str
    correct: bool
    scores: tuple[float, ...] | None = None
    raw_prediction: int | None = None
    wer: float | None = None
    ref_words: int | None = None


def _judge(item: Item, response: _Response) -> _Judgement:
    """Forced choice: argmax of the scores, else the parsed reply; transcribe: WER and normalised exact match;
    open tasks: the reply's first line matched against the accepted answers."""
    if item.choices:
        scores = response.scores
        raw = int(np.argmax(scores)) if scores is not None else parse_choice(response.reply, item.choices)
        return _Judgement(raw, raw == item.label, scores=None if scores is None else tuple(float(s) for s in scores),
                          raw_prediction=raw)
    if item.task == "transcribe":
        hypothesis = response.reply.strip()
        return _Judgement(hypothesis, normalize_transcript(hypothesis) == normalize_transcript(item.transcript),
                          wer=word_error_rate([item.transcript], [hypothesis]), ref_words=len(words(item.transcript)))
    answer, correct = match_answer(response.reply, item.label)
    return _Judgement(answer, correct)


def answer_item(system: System, spoken_set: SpokenSet, item: Item, prompt: TaskPrompt, *,
                heard: Heard | None = None, audio: AudioSource | None = None) -> Prediction:
    """One predictions line for one item (uncalibrated: `prediction` is the raw answer).

    heard: for a cascade, its transcript from a batched ASR pass (`transcribe_batch`), so the ASR is not run
    again; its seconds count in the item's latency. audio: what a system that hears is given for the item
    (default its own recording); systems that read text ignore it."""
    if isinstance(system, ImplicitCascade):
        source = system.text_for(item)
    else:
        source = item.transcript if reads_text(system) else (audio or spoken_set.load_audio)(item)
    response = _respond(system, source, item, prompt, heard)
    judged = _judge(item, response)
    noise = item.speech.noise
    return Prediction(
        id=item.id, task=item.task, label=item.label, n_choices=len(item.choices), prediction=judged.prediction,
        correct=judged.correct, parent_id=noise.parent_id if noise else None, snr_db=noise.snr_db if noise else None,
        scores=judged.scores, raw_prediction=judged.raw_prediction, calibration="none", latency_s=response.latency_s,
        asr_transcript=response.transcript, wer=judged.wer, ref_words=judged.ref_words, reply=response.reply,
        lens_text=source if isinstance(system, ImplicitCascade) else None,
    )


def check_scoring(system: System, spoken_set: SpokenSet, *, prompt_style: PromptStyle) -> None:
    """Refuse, before anything is written, a task prompt without its one audio slot, or a choice that cannot be
    scored as the system's model would write it (empty, or merging with the prompt's last token): checked on the
    first item of each task and choice set. Raises InterpError (ScoringError)."""
    llm = system.llm if isinstance(system, (Cascade, Oracle)) else system
    seen: set[tuple[str, tuple[str, ...]]] = set()
    for item in spoken_set.items:
        if (item.task, item.choices) in seen:
            continue
        seen.add((item.task, item.choices))
        prompt = task_prompt(item.task, prompt_style).for_item(item)
        split_prompt(prompt)
        if not item.choices:
            continue
        if isinstance(llm, TextLM):
            continuation_ids(llm.tokenizer, llm.render(prompt, item.transcript), item.choices,
                             delimiter=choice_delimiter(prompt))
        elif isinstance(llm, EncodedSpeechLM):
            continuation_ids(llm.tokenizer, llm.answer_context(prompt), item.choices,
                             delimiter=choice_delimiter(prompt))
