"""`mini-disguise` and `disguise:asr=…,llm=…`: a speech LLM that is an ASR → LLM cascade by construction.

The positive control of the cascade-equivalence question (issue 35). It has Ultravox's interface (audio
positions in the LLM's input, a `projector` site, `llm.embed`, `llm.layers.{i}`), but its "projector" writes
the LLM's own input embeddings of the ASR's transcript, each token at the time Whisper puts it, one position
per 160 ms (mini-ultravox's rate: 10 ms mel hop × 2 × stack 8). Every analysis should therefore find a cascade
in it: behaviour like its matched cascade's, text decodable at its audio positions, answers broken by erasing it.

- **Tokens:** those the cascade's LLM reads, tokenised in context: the text before the audio loses its
  trailing whitespace to the transcript (`"Review:"` + `" The"`, not `"Review: "` + `"The"`), so with the
  fillers removed the sequence is exactly the cascade's.
- **Word times:** Whisper's own token timestamps (transformers' `return_token_timestamps`, from the
  cross-attention of the alignment heads the checkpoint's generation config lists; mini-whisper takes them
  from the CTranslate2 carrier, openai/whisper's `_ALIGNMENT_HEADS`). On 340 words of the 52 piper items of
  FILLER's check, a word's first token is stamped 0.13 s after piper's word start on average (0.11 s before
  its end): on the word's own position for 36 % of words, within one position for 80 %. The stamped
  decoding gives the same 52 transcripts as mini-whisper's plain one. An ASR without alignment heads
  (the tiny random Whisper) gets its transcript's tokens spread evenly over the clip.
- **Overflow:** a token sits at its time's position or, when that is taken, the next free one; tokens that run
  past the clip's positions append positions (the audio span grows; their time spans are cut at the clip's end).
- **Filler** (positions no token falls on): chosen by agreement with mini-cascade's few-shot sentiment answers
  and scores (the table at FILLER).
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, WhisperForConditionalGeneration, WhisperProcessor

from interp.data.audio import SAMPLE_RATE
from interp.errors import AudioError, InterpError
from interp.models.base import Site, SpeechBatch
from interp.models.cascade import Cascade, Oracle
from interp.models.checkpoints.cascade import WhisperCheckpointASR
from interp.models.checkpoints.folders import checkpoint_folder, expect_model_type, pretrained, tokenizer_of
from interp.models.checkpoints.options import LoadOptions
from interp.models.checkpoints.specs import CHECKPOINT_SPECS
from interp.models.encoded import EncodedSpeechLM, audio_spans, durations, on_device, right_pad
from interp.models.own_backbone import own_text_lm
from interp.models.prompting import encode_context
from interp.models.text_lm import TextLM
from interp.models.ultravox import ENCODER_DOWNSAMPLING, audio_token_count
from interp.models.whisper_convert import WINDOW_SECONDS
from interp.models.whisper_ct2 import transcribe

__all__ = ["DisguiseModel", "DisguisedSpeechLM", "TimedText", "timed_transcripts", "lay_out", "load_disguise",
           "FILLER", "SECONDS_PER_POSITION"]

_log = logging.getLogger(__name__)

_HEARD = 4096
"""Timed transcripts a disguise keeps (a few hundred bytes each): a study's sets, many times over."""

STACK_FACTOR = 8
"""mini-ultravox's projector stacks 8 encoder frames into one position."""
_HOP_SECONDS = 0.01
SECONDS_PER_POSITION = _HOP_SECONDS * ENCODER_DOWNSAMPLING * STACK_FACTOR
FILLER = " -"
"""What a position no token falls on holds: "mean" (the mean input embedding), "zeros", or a text of one token
whose embedding is used. " -" (space-hyphen) by measurement: mini-disguise against mini-cascade, few-shot
sentiment, uncalibrated, on the piper sets of `interp data synth sentiment --seed 0 --n 12` / `--seed 1 --n 40`
(mini-cascade: accuracy 0.75 / 0.775, answers "positive" 31 % of the time):

    filler        κ (12)  κ (40)  agreement (52)  accuracy (52)  margin r  "positive"
    " -"          1.00    0.94    0.98            0.79           0.91      33 %
    "\\n\\n"      1.00    0.68    0.90            0.67           0.83      21 %
    "  " (2 sp.)  1.00    0.62    0.87            0.79           0.89      37 %
    "\\n"         0.80    0.78    0.90            0.83           0.88      37 %
    "." / ","     0.43    0.70    0.87            0.67           0.92      21 %
    " "           0.43    0.63    0.85            0.65           0.95      19 %
    "..."         0.43    0.54    0.83            0.64           0.94      14 %
    zeros         0.00    0.29    0.75            0.56           0.92       6 %
    mean          0.00    0.10    0.71            0.52           0.67       2 %
    <|im_end|>    0.00    0.46    0.79            0.60           0.86      10 %
    <|endoftext|> 0.00   -0.05    0.67            0.52           0.24       2 %

Most fillers keep the answers' margins correlated (r ≈ 0.9) but pull SmolLM2 towards "negative"; a spaced
hyphen reads as a pause and keeps both. The choice was made on these sets; on a held-out one (`--seed 2 --n 40`,
`interp behave --prompts few-shot`) κ is 0.71 (agreement 0.90, accuracy 0.725 for both systems), so the
12-item test's κ ≥ 0.9 holds for the sets it was chosen on, not for every set. Masking the fillers out of
attention instead did worse (κ 0.25 / 0.58): the position gaps alone move a 135 M model's answers."""


@dataclass(frozen=True)
class TimedText:
    """A transcript and, where the ASR gives them, the start time in seconds of each of its characters."""

    text: str
    char_times: np.ndarray | None


def _whisper_parts(asr: object) -> tuple[WhisperForConditionalGeneration, WhisperProcessor]:
    """(model, processor) of a Whisper ASR: mini-whisper (WhisperASR), a checkpoint folder's, or a cascade's."""
    asr = getattr(asr, "asr", asr)
    holder = getattr(asr, "whisper", asr)
    if not isinstance(getattr(holder, "model", None), WhisperForConditionalGeneration):
        raise InterpError(f"{getattr(asr, 'name', asr)!r} is not a Whisper ASR; a disguise needs one for its word "
                          "times (asr= takes a Whisper folder, mini-whisper, mini-whisper-tiny or a cascade)")
    return holder.model, holder.processor


def _timed(tokenizer, ids: Sequence[int], times: Sequence[float]) -> TimedText:
    """One item's Whisper tokens and their timestamps → its transcript, stripped as `transcribe` strips it,
    with each character timed by its token (None where decoding token by token does not give the same text)."""
    special = set(tokenizer.all_special_ids)
    kept = [(int(i), float(t)) for i, t in zip(ids, times) if int(i) not in special]
    pieces = [tokenizer.decode([i]) for i, _ in kept]
    whole = tokenizer.decode([i for i, _ in kept])
    text = whole.strip()
    if "".join(pieces) != whole:
        return TimedText(text, None)
    chars = np.repeat([t for _, t in kept], [len(piece) for piece in pieces])
    lead = len(whole) - len(whole.lstrip())
    return TimedText(text, chars[lead:lead + len(text)])


def timed_transcripts(whisper: WhisperForConditionalGeneration, processor: WhisperProcessor,
                      audio: Sequence[np.ndarray], *, batch_size: int = 8) -> list[TimedText]:
    """Each clip's greedy transcript (as `whisper_ct2.transcribe` decodes it) with its characters' times.

    Without alignment heads in the generation config there are no timestamps: the plain transcripts come back
    with char_times None. Raises AudioError for a clip over Whisper's 30 s window."""
    if not getattr(whisper.generation_config, "alignment_heads", None):
        return [TimedText(text, None) for text in transcribe(_Whisper(whisper, processor), list(audio))]
    clips = [np.asarray(clip, dtype=np.float32) for clip in audio]
    for index, clip in enumerate(clips):
        if clip.ndim != 1 or clip.size > WINDOW_SECONDS * SAMPLE_RATE:
            raise AudioError(f"clip {index}: a disguise transcribes mono clips of at most {WINDOW_SECONDS} s")
    timed: list[TimedText] = []
    for start in range(0, len(clips), batch_size):
        features = processor.feature_extractor(clips[start:start + batch_size], sampling_rate=SAMPLE_RATE,
                                               return_tensors="pt", return_attention_mask=True)
        with torch.inference_mode():
            out = whisper.generate(input_features=features.input_features.to(whisper.device, whisper.dtype),
                                   attention_mask=features.attention_mask.to(whisper.device),
                                   return_token_timestamps=True)
        timed += [_timed(processor.tokenizer, ids.tolist(), times.tolist())
                  for ids, times in zip(out["sequences"], out["token_timestamps"])]
    return timed


@dataclass(frozen=True)
class _Whisper:
    """What whisper_ct2.transcribe reads."""

    model: WhisperForConditionalGeneration
    processor: WhisperProcessor


def lay_out(times: Sequence[float], positions: int, *, seconds_per_position: float = SECONDS_PER_POSITION
            ) -> list[int]:
    """Token index at each audio position (-1: filler). Token k sits at floor(times[k] / s) or, when that is
    taken, the next free position; positions are appended when tokens run past `positions`."""
    slots: list[int] = []
    next_free = 0
    for time in times:
        slots.append(max(math.floor(time / seconds_per_position + 1e-9), next_free))
        next_free = slots[-1] + 1
    laid = [-1] * max(positions, next_free)
    for index, slot in enumerate(slots):
        laid[slot] = index
    return laid


def _positions(samples: int) -> int:
    """Audio positions of a clip, as mini-ultravox counts them (mel frames of 10 ms, padded up)."""
    return audio_token_count(math.ceil(samples / (_HOP_SECONDS * SAMPLE_RATE)), stack_factor=STACK_FACTOR)


class DisguiseModel(nn.Module):
    """UltravoxModel's shape around a text LLM: `projector` (an identity, so hooks see and may edit its output)
    returns the laid-out rows, which are written over each item's placeholder span."""

    def __init__(self, language_model: nn.Module, filler: Tensor) -> None:
        super().__init__()
        self.language_model = language_model
        self.projector = nn.Identity()
        self.register_buffer("filler", filler.detach().clone(), persistent=False)

    def embed(self, input_ids: Tensor, audio_ids: Tensor, audio_token_start_idx: Tensor,
              audio_token_len: Tensor) -> Tensor:
        """input_ids: (batch, seq); audio_ids: (batch, positions), the LLM token id at each audio position or
        -1 for the filler. Returns (batch, seq, d_llm)."""
        table = self.language_model.get_input_embeddings()
        embeds = table(input_ids)
        rows = table(audio_ids.clamp(min=0))
        laid = self.projector(torch.where((audio_ids >= 0)[..., None], rows, self.filler.to(rows.dtype)))
        spliced = []
        for index in range(embeds.shape[0]):
            start, length = int(audio_token_start_idx[index]), int(audio_token_len[index])
            spliced.append(torch.cat([embeds[index, :start], laid[index, :length], embeds[index, start + length:]]))
        return torch.stack(spliced)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, audio_ids: Tensor, audio_token_start_idx: Tensor,
                audio_token_len: Tensor, **kwargs: object):
        embeds = self.embed(input_ids, audio_ids, audio_token_start_idx, audio_token_len)
        return self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)


def filler_row(llm: TextLM, filler: str) -> Tensor:
    """(d_llm,) the filler's embedding: "mean" and "zeros" by name, else the embedding of the token `filler` encodes
    to (the mean of its tokens' where a tokenizer splits it)."""
    table = llm.model.get_input_embeddings()
    if filler == "zeros":
        return torch.zeros(table.weight.shape[1], dtype=table.weight.dtype, device=table.weight.device)
    if filler == "mean":
        return (table.weight.mean(0) * getattr(table, "embed_scale", 1.0)).detach()
    ids = llm.tokenizer(filler, add_special_tokens=False)["input_ids"]
    if not ids:
        raise InterpError(f"filler {filler!r} is no token for {llm.name}; give a text, mean or zeros")
    if len(ids) > 1:  # another tokenizer may split it: the mean of its tokens stands for it
        _log.info("filler %r is %d tokens for %s; their mean embedding fills", filler, len(ids), llm.name)
    with torch.no_grad():
        return table(torch.tensor(ids, device=table.weight.device)).mean(0)


class DisguisedSpeechLM(EncodedSpeechLM):
    """A Whisper ASR and a text LLM as a speech LLM whose audio positions hold the transcript's embeddings.

    The placeholder id is the tokenizer's eos (as Ultravox's); audio positions are found by start and length.
    """

    audio_markup = "<|audio|>"

    def __init__(self, asr: object, llm: TextLM, *, name: str, filler: str = FILLER) -> None:
        self.whisper, self.processor = _whisper_parts(asr)
        self.llm = llm
        self.tokenizer = llm.tokenizer
        self.name = name
        self.filler = filler
        self.model = DisguiseModel(llm.model, filler_row(llm, filler)).eval()
        self.placeholder_id = int(self.tokenizer.eos_token_id)
        self.pad_id = llm.pad_id
        self._heard: OrderedDict[bytes, TimedText] = OrderedDict()

    def _timed(self, audio: Sequence[np.ndarray]) -> list[TimedText]:
        """Each clip's timed transcript, Whisper run only on clips not heard before. Scoring, extraction, the
        implicit cascade and every erased evaluation feed the same clips again; Whisper is deterministic, so the
        memo (the last _HEARD clips, by the sha256 of their samples) changes no number, only the time."""
        keys = [hashlib.sha256(np.ascontiguousarray(clip, dtype=np.float32).tobytes()).digest() for clip in audio]
        missing = [index for index, key in enumerate(keys) if key not in self._heard]
        if missing:
            heard = timed_transcripts(self.whisper, self.processor, [audio[index] for index in missing])
            self._heard.update(zip((keys[index] for index in missing), heard))
        for key in keys:
            self._heard.move_to_end(key)
        while len(self._heard) > _HEARD:
            self._heard.popitem(last=False)
        return [self._heard[key] for key in keys]

    def _laid_ids(self, before: str, timed: TimedText, samples: int) -> tuple[list[int], list[int]]:
        """(ids before the audio, the id at each audio position, -1 for the filler): the transcript tokenised
        after the text before it, whose trailing whitespace joins the transcript's first token."""
        head_text = before.rstrip() if timed.text else before
        space = before[len(head_text):]
        head, positions = encode_context(self.tokenizer, head_text), _positions(samples)
        if not timed.text:
            return head, [-1] * positions
        encoded = self.tokenizer(space + timed.text, add_special_tokens=False, return_offsets_mapping=True)
        ids = encoded["input_ids"]
        if timed.char_times is None:
            times = [k * samples / SAMPLE_RATE / len(ids) for k in range(len(ids))]
        else:
            last = len(timed.text) - 1
            times = [float(timed.char_times[min(max(start - len(space), 0), last)])
                     for start, _ in encoded["offset_mapping"]]
        return head, [ids[k] if k >= 0 else -1 for k in lay_out(times, positions)]

    def _encode(self, audio: Sequence[np.ndarray], parts: Sequence[tuple[str, str]],
                suffixes: Sequence[Sequence[int]]) -> SpeechBatch:
        seconds = durations(audio)
        timed = self._timed(audio)
        rows, starts, laid = [], [], []
        for (before, after), heard, clip, suffix in zip(parts, timed, audio, suffixes):
            head, positions = self._laid_ids(before, heard, len(clip))
            tail = self.tokenizer(after, add_special_tokens=False)["input_ids"]
            rows.append(head + [self.placeholder_id] * len(positions) + tail + list(suffix))
            starts.append(len(head))
            laid.append(positions)
        input_ids, attention_mask = right_pad(rows, pad_id=self.pad_id)
        audio_ids, _ = right_pad(laid, pad_id=-1)
        audio_mask = torch.zeros(input_ids.shape, dtype=torch.bool)
        for index, (start, positions) in enumerate(zip(starts, laid)):
            audio_mask[index, start:start + len(positions)] = True
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "audio_ids": audio_ids,
                  "audio_token_start_idx": torch.tensor(starts), "audio_token_len": torch.tensor(list(map(len, laid)))}
        return SpeechBatch(inputs=inputs, input_ids=input_ids, attention_mask=attention_mask, audio_mask=audio_mask,
                           audio_span=audio_spans(audio_mask, seconds, seconds_per_position=SECONDS_PER_POSITION))

    def sites(self) -> dict[str, Site]:
        return {"projector": Site("projector", self.model.projector, seconds_per_row=SECONDS_PER_POSITION),
                **self.llm.sites()}

    @property
    def final_norm(self) -> nn.Module:
        return self.llm.final_norm

    @property
    def unembed(self) -> nn.Module:
        return self.llm.unembed

    @property
    def _text_model(self) -> nn.Module:
        return self.model.language_model

    @torch.no_grad()
    def generate(self, audio: np.ndarray, prompt: str, *, max_new_tokens: int = 32) -> str:
        batch = self.prepare([audio], [prompt])
        inputs = on_device(batch.inputs, self.model)
        embeds = self.model.embed(inputs["input_ids"], inputs["audio_ids"], inputs["audio_token_start_idx"],
                                  inputs["audio_token_len"])
        output = self.model.language_model.generate(
            inputs_embeds=embeds, attention_mask=inputs["attention_mask"], max_new_tokens=max_new_tokens,
            do_sample=False, pad_token_id=self.pad_id)
        return self.tokenizer.decode(output[0], skip_special_tokens=True).strip()


def load_disguise(spec: str, *, options: LoadOptions, load: Callable[[str], object]) -> DisguisedSpeechLM:
    """The disguise a `disguise:asr=A,llm=B` spec names. A part that is a path is a checkpoint folder (a Whisper
    for asr=, a causal LM for llm=); anything else goes to `load` (a model name; for llm=, also a speech-LLM
    spec, whose own language model is used). `llm=` comes last: everything after it is its value, commas too.
    Raises InterpError for a malformed spec or a part of the wrong kind, WeightsMissing for a bad folder."""
    fields = re.fullmatch(r"disguise:\s*asr=([^,]+),\s*llm=(.+)", spec.strip())
    if fields is None:
        raise InterpError(f"{spec!r} must name both parts, asr first: {CHECKPOINT_SPECS['disguise']}")
    asr_value, llm_value = (value.strip() for value in fields.groups())
    if _is_path(asr_value):
        folder = checkpoint_folder(Path(asr_value).expanduser(), "Whisper")
        expect_model_type(folder, "whisper", what="a WhisperForConditionalGeneration checkpoint as asr=")
        asr: object = WhisperCheckpointASR(pretrained(WhisperForConditionalGeneration, folder, options),
                                           WhisperProcessor.from_pretrained(folder, local_files_only=True),
                                           name=f"whisper:{folder.name}", source=str(folder))
    else:
        asr = load(asr_value)
    if _is_path(llm_value):
        folder = checkpoint_folder(Path(llm_value).expanduser(), "causal LM")
        llm = TextLM(pretrained(AutoModelForCausalLM, folder, options), tokenizer_of(folder), name=folder.name)
    else:
        llm = _text_lm_of(load(llm_value), llm_value)
    return DisguisedSpeechLM(asr, llm, name=spec)


def _is_path(value: str) -> bool:
    """A spec part is a folder when it looks like a path (a name has neither a slash nor a colon)."""
    return "/" in value or value.startswith((".", "~")) or Path(value).expanduser().is_dir()


def _text_lm_of(system: object, value: str) -> TextLM:
    """The text LLM a loaded system reads with: itself, a cascade's or the oracle's LLM, a speech LLM's own."""
    if isinstance(system, TextLM):
        return system
    if isinstance(system, (Cascade, Oracle)):
        return system.llm
    if isinstance(system, EncodedSpeechLM):
        return own_text_lm(system)
    raise InterpError(f"llm={value} has no text LLM to read a transcript with")
