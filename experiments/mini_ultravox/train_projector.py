"""Train mini-ultravox's projector on CPU by distillation (issue 6).

Whisper-base's encoder and SmolLM2-135M-Instruct stay frozen (fp32, eval mode); only the Ultravox projector
(stack 8, hidden MINI_ULTRAVOX_PROJECTOR_HIDDEN, ln_mid) trains.

Stages, all under --work and each skipped when its output is already there (so a killed run resumes):
1. sentences.json: training sentences from (a) templates + vocabulary written here (everyday statements,
   questions, news-like, reviews-like; none of interp/data/tasks.py's templates or word lists) and (b)
   sentences sampled from SmolLM2 on varied prompts (seeded, 6-25 words, ASCII letters and punctuation only,
   no digits) and (c) real English text that every installation carries (--real-fraction): sentences of the
   Python language reference (the standard library's pydoc_data) and of installed distributions'
   descriptions (package metadata), same filter, sampled with the seed (which sentences exist depends on the
   Python and package versions). Validation sentences come from a held-out
   template family and SmolLM2 samples on held-out topics/prompt styles, never from (c). Sentences equal to
   a built-in suite item are dropped. --sentences FILE starts from a sentences.json made before instead, so
   another machine trains on the same sentences whatever its packages, without the ~20 min of SmolLM2
   sampling: experiments/mini_ultravox/data/sentences.json.gz is the shipped projector's list as remade on 2026-11-26
   (its held-out part is the shipped one; part of its real text differs from the original's, model card).
   With --n-extra N, extra_sentences.json adds N training sentences from (d) WordNet 3.0's usage examples
   (short everyday sentences over a wide vocabulary: a few thousand of them cut the share of held-out words
   holding a token no training transcript has from 17 % to 5 %). They get no teacher logits, so they join
   the CTC and "repeat" rows but never the KL rows (raise --kl-batch to keep as many KL rows per step).
   --n-extra-2 M adds M more from the sentences --n-extra left (extra_sentences_2.json, shards extra2-*), so
   a folder holding links to an earlier folder's shards grows without preparing them again.
   --n-fortunes K adds K sentences of (e) Debian's fortune cookies (quotations, jokes, proverbs: the
   conversational English the other sources lack; fortune_sentences.json, shards fortune-*), none that an
   earlier block picked; they are spoken and used like (d). --n-fortunes-2 adds a second such block
   (fortune_sentences_2.json, shards fortune2-*) from those --n-fortunes left, and --n-fortunes-3 a third
   (fortune_sentences_3.json, shards fortune3-*) from those the first two left.
   --n-flite N speaks the first N training sentences again in (f) Debian's flite voices (`apt-get install
   flite`: slt, rms, awb, kal16; diphone and statistical-parametric speech, another kind than piper's neural
   voice and espeak-ng's formants), with varied duration and pitch (flite_settings). Each keeps its
   sentence's KL prompt and the teacher's targets (read from the train shards, not computed again), so
   these items carry KL rows heard in new voices (split flite, shards flite-*). flite is used for training
   only: held-out speech stays piper and espeak-ng.
   Each item gets a TTS engine and settings: training uses interp.data.tts.vary_settings; validation uses
   settings outside those ranges (piper length/noise scales beyond vary_settings' bounds; espeak variants
   m5/m6/f5, which vary_settings never picks, rate and pitch outside its ranges).
2. shards/{split}-NNNN.safetensors + .json: per utterance the frozen encoder's output (audio_tower on that
   clip's mel features alone, no padding to 30 s; float16), the transcript's token ids and, for training
   items, one KL prompt with the teacher's greedy response (SmolLM2 reading the transcript in place of the
   audio, <= --kl-max-tokens tokens) and, at each response position, the teacher's top-k (--top-k) token
   ids and full-vocabulary log-probabilities.
3. Training, in two phases over one step counter.
   Phase 1 (--ctc-steps, no LLM pass, cheap): CTC alignment of each audio position with the transcript.
   The projector's output at every audio position is scored against SmolLM2's (tied) token embeddings,
   logits = audio · E[v]ᵀ over the tokens v of the training transcripts plus a blank (the single-space
   token), and CTC(transcript tokens) is minimised, batch --ctc-batch-size. It makes each audio position
   look like the embedding of the token being spoken, which the frozen LLM can read; the cross-entropy
   alone, on a few thousand utterances, memorised them instead (held-out WER ≈ 1.0, history/MODEL_CARD.md).
   Phase 2 (--steps): per step a batch of items gives
   - cross-entropy rows: "Repeat exactly what you heard: <|audio|>" (prompt built as UltravoxSpeechLM does,
     through chat_text) with target = transcript tokens + eos (<|im_end|>), averaged over target tokens;
   - KL rows (the first --kl-batch items of the batch): the item's KL prompt (task-style few-shot prompts of
     interp.task_prompts, chat instructions and plain continuation) followed by the teacher's response;
     KL(teacher || student) at each response position over the teacher's top-k tokens plus one "rest of
     the vocabulary" bucket (exact for a (k+1)-outcome coarsening of both distributions), averaged over
     positions.
   loss = ce + --kl-weight * kl + --ctc-weight * ctc. AdamW; each phase has its own linear warmup then
   cosine decay to 5 % of --lr; grad-norm clip 1.
   Encoder outputs of a batch are zero-padded to its longest item, which matches one clip alone (the
   projector stacks frames from 0, and the last partial group is zero-padded either way).
   With --augment every training item's encoder frames are perturbed afresh at each step (see
   augment_frames: speed change, a shifted start, short time masks, 10 % of values dropped), against
   memorising a few thousand fixed inputs; validation always sees the frames unchanged. Off by default: on
   the shipped recipe it improved the CTC head's held-out reading (0.497 -> 0.432 WER) but made the
   generated "repeat" worse (0.690 -> 0.752), experiments/mini_ultravox/history/MODEL_CARD.md.
   Batches and their perturbations are a deterministic function of (seed, step), so resuming from a
   checkpoint continues exactly.
   --init PATH starts from an exported projector instead of a fresh one (recorded with its sha256 in
   train_config.json and the card, which also nests the init file's own card as "init_card"): with
   --ctc-steps 0 it continues distillation of an earlier run, e.g. on its own data in a work folder holding
   links to that run's shards. Give it --first-batch with the phase-2 steps of the run it continues (on the
   same data and seed): otherwise its steps draw that run's batches again, in the same order. Or give it
   --draw-from with the splits to draw from (e.g. train,fortune: the teacher-logit items and a block that
   run never heard; the CTC vocabulary stays the whole pool's).
4. Every --eval-every steps: greedy "repeat" generation through the student on the first --eval-items
   validation items, WER (interp.text_metrics) logged ("val_wer"), beside the WER of the CTC head's greedy
   reading of the same audio ("val_ctc_wer"); at the end on all validation items.
   --export PATH writes the projector's state dict (keys of UltravoxModel.multi_modal_projector) as
   safetensors, float32, plus PATH with .json: a model-card stub (data, steps, wall time, losses, WER).

Files in --work: log.jsonl (one line per step: step, loss, ce, kl, ctc, lr, items_per_s, elapsed_s, phase-1
lines without ce and kl; eval lines carry "val_wer" and "val_ctc_wer"), checkpoint.safetensors (projector),
train_state.pt (optimizer, scheduler, step),
prep_stats.json (data-prep timings). --max-minutes counts from the start of the process (data prep included)
and stops cleanly with a checkpoint (and the export, marked "completed": false).

Usage:
  python -m experiments.mini_ultravox.train_projector --work runs/projector --n-train 3000 --n-val 120 \
      --ctc-steps 1500 --steps 2000 --batch-size 8 --lr 1e-3 --seed 0 --max-minutes 150 \
      --export interp/resources/mini_ultravox_projector.safetensors
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from interp.models.base import AUDIO_PLACEHOLDER
from interp.models.prompting import PlainPrompt, chat_text, split_prompt
from interp.models.ultravox import UltravoxProjector
from interp.task_prompts import task_prompt

_log = logging.getLogger("train_projector")

DATA_VERSION = 2
REPEAT_PROMPT = task_prompt("transcribe").prompt  # "Repeat exactly what you heard: <|audio|>"
SHARD_SIZE = 32
MAX_SECONDS = 29.0
# Splits whose items get teacher targets (KL rows): the main training sentences and their flite voicing.
TEACHER_SPLITS = ("train", "flite")

# ---------------------------------------------------------------------------------------------- sentences

_NAMES = ["Maria", "Tom", "Priya", "Omar", "Lucy", "Daniel", "Sofia", "Ahmed", "Chloe", "Marcus", "Nina",
          "Victor", "Hannah", "Ravi", "Olivia", "Samuel", "Yuki", "Pedro", "Fatima", "George", "Ellen", "Tariq"]
_RELATIONS = ["my sister", "our neighbour", "the teacher", "my uncle", "a local farmer", "the new manager",
              "her grandfather", "his cousin", "the doctor", "a young student", "my best friend", "the landlord"]
_PLACES = ["the library", "the park", "the market", "the harbour", "the old bridge", "the bakery", "the gym",
           "the post office", "the hospital", "the airport", "the village square", "the garden", "the beach",
           "the office", "the school", "the supermarket", "the swimming pool", "the train station"]
_TIMES = ["on Monday", "last night", "early this morning", "after lunch", "in the spring", "every weekend",
          "before sunrise", "at midnight", "next Friday", "two weeks ago", "during the summer", "later today",
          "on Saturday afternoon", "around noon", "this evening", "last winter"]
_ACTIVITIES = [("fix the broken fence", "fixed the broken fence"), ("paint the kitchen", "painted the kitchen"),
               ("learn to swim", "learned to swim"), ("bake fresh bread", "baked fresh bread"),
               ("plant some tomatoes", "planted some tomatoes"), ("clean the garage", "cleaned the garage"),
               ("write a long letter", "wrote a long letter"), ("visit her parents", "visited her parents"),
               ("call the plumber", "called the plumber"), ("walk the dog", "walked the dog"),
               ("wash the car", "washed the car"), ("study for the exam", "studied for the exam"),
               ("cook dinner for everyone", "cooked dinner for everyone"),
               ("repair the bicycle", "repaired the bicycle"),
               ("sell the old piano", "sold the old piano"), ("move the heavy boxes", "moved the heavy boxes"),
               ("feed the chickens", "fed the chickens"), ("climb the hill", "climbed the hill")]
_OBJECTS = ["umbrella", "notebook", "blanket", "kettle", "suitcase", "ladder", "mirror", "candle", "wallet",
            "helmet", "jacket", "teapot", "carpet", "radio", "envelope", "backpack", "scarf", "pillow",
            "flashlight", "calendar"]
_ADJECTIVES = ["heavy", "quiet", "narrow", "bright", "ancient", "crowded", "tiny", "enormous", "muddy", "shiny",
               "warm", "cold", "empty", "noisy", "fragile", "colourful", "rusty", "soft", "dusty", "strange"]
_ROOMS = ["hallway", "attic", "basement", "living room", "bedroom", "bathroom", "cellar", "study"]
_WEATHER = ["windy", "foggy", "hot", "freezing", "stormy", "humid", "sunny", "chilly"]
_FOODS = ["soup", "toast", "rice", "salad", "noodles", "pancakes", "cheese", "biscuits"]
_DRINKS = ["tea", "coffee", "orange juice", "milk", "lemonade", "hot chocolate"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_NUMBERS = ["two", "three", "four", "five", "six", "twelve", "twenty", "forty", "a hundred"]
_CITIES = ["Dublin", "Oslo", "Toronto", "Melbourne", "Chicago", "Lisbon", "Denver", "Glasgow", "Auckland",
           "Boston", "Helsinki", "Prague"]
_COUNTRIES = ["Norway", "Chile", "Ireland", "Mexico", "Ghana", "Portugal", "Finland", "Thailand", "Morocco",
              "Australia"]
_REVIEW_SUBJECTS = ["sandwich", "hiking trail", "podcast", "theme park", "bakery", "headphones", "sofa",
                    "documentary", "taxi ride", "dentist", "pizza", "spa", "bus tour", "board game", "keyboard",
                    "guidebook", "hostel", "soup", "workshop", "sushi bar"]
_GOOD = ["pleasant", "tasty", "comfortable", "reliable", "cheerful", "fresh", "friendly", "clever", "affordable",
         "relaxing", "thrilling", "generous", "spotless", "cozy", "elegant"]
_BAD = ["greasy", "overpriced", "flimsy", "confusing", "stale", "rude", "cramped", "slow", "grimy", "clumsy",
        "shallow", "soggy", "unreliable", "chaotic", "cold"]
_ANIMALS = ["owls", "bats", "foxes", "cats", "hedgehogs", "raccoons"]
_ORGS = ["the city council", "the health ministry", "the school board", "the national park service",
         "the football club", "the transport authority"]
_CIVIC = ["build a new cycle lane", "repair the old harbour wall", "plant a thousand trees", "open a night bus",
          "close the main road for a festival", "rebuild the public library"]
_THEMES = ["ancient ships", "modern design", "the history of maps", "early photography", "desert plants"]

_TRAIN_TEMPLATES = [
    "{name} wants to {act} {time}.", "{name} {acted} {time}.", "{Rel} left the {obj} at {place}.",
    "The {adj} {obj} is in the {room}.", "We are going to {place} {time} to {act}.",
    "I forgot my {obj} at {place} again.", "{name} and {name2} met at {place} {time}.",
    "It was too {weather} to {act}, so we stayed at home.", "Please remember to {act} {time}.",
    "{Rel} said the {obj} was too {adj}.", "Where did you put the {adj} {obj}?",
    "Could you {act} before {day}?", "Why is the {obj} lying on the floor of the {room}?",
    "How long does it take to walk to {place}?", "Do you know if {name} is coming {time}?",
    "What time does {place} close on {day}?", "Have you ever tried to {act}?",
    "Would you like some {food} with your {drink}?", "The city council of {city} approved a plan to {civic}.",
    "Firefighters rescued {num} people from a building near {city} {time}.",
    "Local farmers in {country} expect a good harvest after the {weather} summer.",
    "The museum in {city} will open a new exhibition about {theme}.",
    "Scientists in {country} counted {num} {animals} in a single forest.",
    "{Org} announced {num} new bus routes for the city.", "The {rsub} was {good} but a little {bad}.",
    "I would not recommend this {rsub}, it was {bad}.", "Our {rsub} turned out {good} and {good2}.",
    "For the price, the {rsub} felt rather {bad}.", "Five stars, the {rsub} is {good}.",
    "The staff were {good}, yet the {rsub} was {bad}.", "The forecast says it will be {weather} {time}.",
    "{Animals} usually sleep during the day and hunt at night.", "{name} drank some {drink} and went to bed.",
    "There are {num} {obj}s in the {room}, but nobody knows why.",
    "If it stays {weather}, {name} will {act} {time}.", "I think {name} has already {acted}.",
]
_VAL_TEMPLATES = [
    "After {time}, {name} finally decided to {act}.", "Is there a {adj} {obj} somewhere near {place}?",
    "According to the radio, {city} had its coldest winter in years.",
    "My neighbour keeps a {adj} {obj} beside the {room} door.",
    "The {rsub} we tried last week was surprisingly {good}.",
    "Nobody expected the festival in {city} to be so {adj}.",
    "Why would anyone {act} in the middle of the night?",
    "Every morning {name} drinks {drink} and reads the paper.",
    "Honestly, the {rsub} could have been less {bad}.", "Did {name} really {act} all alone?",
]

_LM_TRAIN_TOPICS = ["cooking", "the weather", "a train journey", "gardening", "a football match",
                    "a visit to the dentist", "shopping for shoes", "a rainy afternoon", "school homework",
                    "a birthday party", "the ocean", "a new job", "learning a language", "a lost cat",
                    "the night sky", "a mountain hike", "a noisy neighbour", "a job interview", "fixing a car",
                    "a library", "a summer holiday", "a farm", "a hospital", "a music lesson", "a city at night",
                    "a bakery", "a science experiment", "a family dinner", "winter clothes", "a long flight"]
_LM_TRAIN_STYLES = ["Write one short sentence about {t}.", "Write a single sentence someone might say about {t}.",
                    "Write one question a person might ask about {t}.",
                    "Write one sentence from a news report about {t}.", "Write a one sentence review of {t}."]
_LM_VAL_TOPICS = ["a bicycle repair shop", "a chess tournament", "a thunderstorm", "a wedding", "a power cut",
                  "a flower market", "a museum guide", "a camping trip", "a broken phone", "a piano recital"]
_LM_VAL_STYLES = ["Describe {t} in one sentence.", "Tell me one fact about {t} in a single sentence."]

_CLEAN = re.compile(r"^[A-Za-z][A-Za-z ,.'?!;:-]*[.?!]$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _fill(template: str, rng: np.random.Generator) -> str:
    pick = lambda values: str(values[int(rng.integers(len(values)))])  # noqa: E731
    act = _ACTIVITIES[int(rng.integers(len(_ACTIVITIES)))]
    names = rng.choice(_NAMES, size=2, replace=False)
    goods = rng.choice(_GOOD, size=2, replace=False)
    animals = pick(_ANIMALS)
    slots = dict(name=str(names[0]), name2=str(names[1]), Rel=pick(_RELATIONS).capitalize(), place=pick(_PLACES),
                 time=pick(_TIMES), act=act[0], acted=act[1], obj=pick(_OBJECTS), adj=pick(_ADJECTIVES),
                 room=pick(_ROOMS), weather=pick(_WEATHER), food=pick(_FOODS), drink=pick(_DRINKS), day=pick(_DAYS),
                 num=pick(_NUMBERS), city=pick(_CITIES), country=pick(_COUNTRIES), rsub=pick(_REVIEW_SUBJECTS),
                 good=str(goods[0]), good2=str(goods[1]), bad=pick(_BAD), animals=animals,
                 Animals=animals.capitalize(), Org=pick(_ORGS).capitalize(), civic=pick(_CIVIC), theme=pick(_THEMES))
    text = template.format(**slots)
    return text[0].upper() + text[1:]


def template_sentences(n: int, templates: list[str], rng: np.random.Generator, seen: set[str]) -> list[str]:
    out: list[str] = []
    for _ in range(n * 50):
        if len(out) == n:
            break
        text = _fill(str(templates[int(rng.integers(len(templates)))]), rng)
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def _plain(sentence: str) -> bool:
    """The filter every source shares: ASCII letters and punctuation only (no digits), 6-25 words."""
    return bool(_CLEAN.match(sentence)) and 6 <= len(sentence.split()) <= 25


def _plain_sentences(text: str) -> list[str]:
    """The capitalised plain sentences of a running text (its whitespace already made single spaces)."""
    return [s for s in _SENTENCE_END.split(text) if s[:1].isupper() and _plain(s)]


def real_text_sentences(seen: set[str]) -> list[str]:
    """Plain sentences (capitalised, ASCII letters and punctuation, 6-25 words) from the Python language
    reference (pydoc_data) and installed distributions' descriptions, sorted, none in `seen`. This project's
    own description (its README.md, which changes with every commit) is left out."""
    from importlib import metadata
    from pydoc_data.topics import topics

    bodies = list(topics.values())
    for dist in metadata.distributions():
        if dist.metadata["Name"] == "cascade-interp":
            continue
        bodies.append(dist.metadata.get_payload() or dist.metadata.get("Description") or "")
    found = set()
    for body in bodies:
        found.update(_plain_sentences(re.sub(r"\s+", " ", str(body))))
    return sorted(found - seen)


def wordnet_sentences(root: Path, seen: set[str]) -> list[str]:
    """WordNet's usage examples (the quoted parts of the glosses in data.noun/verb/adj/adv) as plain sentences:
    first letter capitalised, a full stop added where none ends it, same filter as the other sources; sorted,
    none in `seen`. WordNet 3.0 comes with Debian's wordnet-base (/usr/share/wordnet)."""
    found = set()
    for part in ("noun", "verb", "adj", "adv"):
        path = root / f"data.{part}"
        if not path.exists():
            raise SystemExit(f"{path} not found: --n-extra needs WordNet 3.0 (Debian: apt-get install "
                             "wordnet-base) or --wordnet pointing at its dict folder")
        for line in path.read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or "|" not in line:  # licence header, synsets without a gloss
                continue
            for quoted in re.findall(r'"([^"]+)"', line.split("|", 1)[1]):
                text = quoted.strip()
                text = text[:1].upper() + text[1:] + ("" if text.endswith((".", "?", "!")) else ".")
                if _plain(text):
                    found.add(text)
    return sorted(found - seen)


def fortune_sentences(root: Path, seen: set[str]) -> list[str]:
    """The sentences of the fortune cookies in `root` (Debian's fortunes: quotations, jokes, proverbs,
    definitions; everyday conversational English the other sources lack), same filter as the other sources;
    sorted, none in `seen`. Attribution lines ("-- Author") and the ascii-art file are left out."""
    files = sorted(p for p in root.glob("*") if p.is_file() and not p.suffix and p.name != "ascii-art")
    if not files:
        raise SystemExit(f"no fortune files in {root}: --n-fortunes needs Debian's fortunes (apt-get install "
                         "fortunes) or --fortunes pointing at its folder")
    found = set()
    for path in files:
        for cookie in re.split(r"^%$", path.read_text(encoding="utf-8", errors="replace"), flags=re.M):
            lines = [line for line in cookie.splitlines() if not line.lstrip().startswith("--")]
            found.update(_plain_sentences(" ".join(" ".join(lines).split())))
    return sorted(found - seen)


def clean_sample(text: str) -> str | None:
    """One plain sentence from a SmolLM2 reply, or None: skips 'Sure, here is...' lead-ins, keeps the first
    sentence, requires ASCII letters and punctuation only (no digits) and 6-25 words."""
    lines = [line.strip().strip('"').strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if not line.endswith(":") and not line.lower().startswith(("sure", "here"))]
    if not lines:
        return None
    match = re.match(r"^(.*?[.?!])(\s|$)", lines[0])
    sentence = (match.group(1) if match else lines[0]).strip().strip('"')
    if not _plain(sentence):
        return None
    return sentence


@torch.no_grad()
def generate_left_padded(lm, rows: list[list[int]], pad_id: int, **kwargs):
    """HF generate on left-padded prompt ids; returns the generate output and the prompt width."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], device=lm.device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=lm.device)
    out = lm.generate(input_ids=ids, attention_mask=mask, pad_token_id=pad_id, return_dict_in_generate=True,
                      **kwargs)
    return out, width


def lm_sentences(stack, n: int, topics: list[str], styles: list[str], seed: int, seen: set[str]) -> list[str]:
    """n sentences sampled from SmolLM2 (temperature 0.9, top-p 0.95, seeded per batch)."""
    batch = min(16, max(4, n))
    model, tok = stack["model"].language_model, stack["tokenizer"]
    rng = np.random.default_rng(seed)
    out: list[str] = []
    for attempt in range(max(4, 4 * math.ceil(n / batch) + 4)):
        if len(out) >= n:
            break
        prompts = [str(styles[int(rng.integers(len(styles)))]).format(t=topics[int(rng.integers(len(topics)))])
                   for _ in range(batch)]
        rows = [tok(chat_text(tok, p), add_special_tokens=False)["input_ids"] for p in prompts]
        torch.manual_seed(seed * 100_003 + attempt)
        result, width = generate_left_padded(model, rows, stack["pad_id"], do_sample=True, temperature=0.9,
                                             top_p=0.95, max_new_tokens=40)
        for seq in result.sequences:
            sentence = clean_sample(tok.decode(seq[width:], skip_special_tokens=True))
            if sentence and sentence not in seen and len(out) < n:
                seen.add(sentence)
                out.append(sentence)
    return out


def suite_texts() -> set[str]:
    """Transcripts of the built-in text suites at their default seed, to keep out of the training data."""
    from interp.data.tasks import synthesize_suite

    texts: set[str] = set()
    for task in ("sentiment", "topic", "yesno", "pitch"):
        texts.update(item.transcript for item in synthesize_suite(task, n=400, seed=0))
    return texts


def val_settings(engine: str, rng: np.random.Generator):
    """Voice settings outside vary_settings' training ranges."""
    from interp.data.tts import EspeakSettings, PiperSettings

    def band(low: tuple[float, float], high: tuple[float, float]) -> float:
        lo, hi = low if rng.random() < 0.5 else high
        return float(rng.uniform(lo, hi))

    if engine == "piper":
        return PiperSettings(length_scale=round(band((0.75, 0.85), (1.2, 1.3)), 3),
                             noise_scale=round(band((0.3, 0.4), (0.8, 0.9)), 3),
                             noise_w=round(band((0.3, 0.5), (1.0, 1.1)), 3), seed=int(rng.integers(2**31)))
    return EspeakSettings(voice=f"{rng.choice(['en-us', 'en', 'en-gb-x-rp'])}+{rng.choice(['m5', 'm6', 'f5'])}",
                          rate_wpm=int(band((125, 140), (200, 215))), pitch=int(band((25, 35), (65, 75))),
                          pitch_range=int(rng.integers(30, 70)))


# flite voices training may use (16 kHz ones), with the range of mean pitch (Hz) each is given; rms ignores
# flite's pitch target (measured with Praat: 102 Hz asked for 80 or 200), so it gets none.
FLITE_VOICES: dict[str, tuple[float, float] | None] = {
    "slt": (150.0, 230.0), "awb": (95.0, 170.0), "kal16": (85.0, 140.0), "rms": None}


def flite_settings(rng: np.random.Generator) -> dict:
    """A flite voice with a duration stretch of 0.8-1.3 and, where the voice takes one, a mean pitch."""
    voice = str(rng.choice(list(FLITE_VOICES)))
    settings = {"voice": voice, "duration_stretch": round(float(rng.uniform(0.8, 1.3)), 3)}
    if FLITE_VOICES[voice] is not None:
        settings["f0_mean"] = round(float(rng.uniform(*FLITE_VOICES[voice])), 1)
    return {"engine": "flite", "settings": settings}


def flite_speak(text: str, settings: dict) -> np.ndarray:
    """`text` spoken by Debian's flite with `settings` (flite_settings): 16 kHz float32 samples in [-1, 1]."""
    if shutil.which("flite") is None:
        raise SystemExit("--n-flite needs Debian's flite on the PATH: apt-get install flite")
    command = ["flite", "-voice", settings["voice"], "--setf", f"duration_stretch={settings['duration_stretch']}"]
    if "f0_mean" in settings:
        command += ["--setf", f"int_f0_target_mean={settings['f0_mean']}"]
    import soundfile

    with tempfile.TemporaryDirectory() as folder:
        wav = Path(folder) / "speech.wav"
        subprocess.run([*command, "-t", text, "-o", str(wav)], check=True, capture_output=True)
        samples, rate = soundfile.read(str(wav), dtype="float32")
    if rate != 16_000:
        raise SystemExit(f"flite voice {settings['voice']} speaks at {rate} Hz, not 16 kHz")
    return samples


def flite_items(args, data: dict) -> list[dict]:
    """--n-flite: the first N training sentences again, each in a flite voice, keeping its KL prompt."""
    rng = np.random.default_rng([args.seed, 6])
    return [{"id": f"flite-{i:05d}", "text": it["text"], "source": it["source"], "kl_prompt": it["kl_prompt"],
             **flite_settings(rng)} for i, it in enumerate(data["items"]["train"][:args.n_flite])]


def speak(item: dict) -> np.ndarray:
    """An item's 16 kHz audio in the engine and settings it was given."""
    if item["engine"] == "flite":
        return flite_speak(item["text"], item["settings"])
    from interp.data.tts import open_engine, settings_from_dict

    return open_engine(item["engine"]).speak(item["text"], settings_from_dict(item["settings"])).samples


# ---------------------------------------------------------------------------------------------- prompts

def kl_prompts() -> list[str]:
    """Task-style and continuation prompts for the KL term (each with one audio placeholder)."""
    # the few-shot task prompts (those of v2-v14 ended in "Answer: ", with a space, before issue 33)
    return [task_prompt("sentiment", "few-shot").prompt, task_prompt("topic", "few-shot").prompt,
            task_prompt("yesno", "few-shot").prompt,
            "Continue this text: <|audio|>", "What is this sentence about? <|audio|>", "<|audio|>",
            "Is the following positive, negative or neutral? <|audio|>", "Answer briefly: <|audio|>",
            PlainPrompt("<|audio|>"), PlainPrompt("Text: <|audio|>\nSummary:")]


def with_text(prompt: str, text: str) -> str:
    """The prompt with the transcript in place of the audio placeholder (stays a PlainPrompt if it was one)."""
    filled = prompt.replace(AUDIO_PLACEHOLDER, text)
    return PlainPrompt(filled) if isinstance(prompt, PlainPrompt) else filled


@lru_cache(maxsize=None)
def _prompt_parts(tok_id: int, prompt: str, plain: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    tok = _TOKENIZERS[tok_id]
    before, after = split_prompt(chat_text(tok, PlainPrompt(prompt) if plain else prompt))
    return (tuple(tok(before, add_special_tokens=False)["input_ids"]),
            tuple(tok(after, add_special_tokens=False)["input_ids"]))


_TOKENIZERS: dict[int, object] = {}


def prompt_parts(tok, prompt: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Token ids before and after the audio span, exactly as UltravoxSpeechLM._encode builds them."""
    _TOKENIZERS[id(tok)] = tok
    return _prompt_parts(id(tok), str(prompt), isinstance(prompt, PlainPrompt))


# ---------------------------------------------------------------------------------------------- stack

@lru_cache(maxsize=None)
def load_stack(name: str = "mini-ultravox", device: str = "cpu") -> dict:
    """The frozen parts, on `device`: UltravoxModel (audio tower + LLM), tokenizer, feature extractor.
    `name` is mini-ultravox (Whisper-base + SmolLM2, what is shipped) or tiny-ultravox (seeded random
    weights, seconds per run: for smoke tests of the loop, e.g. on a new device)."""
    if name == "mini-ultravox":
        from interp.models.mini import build_mini_ultravox

        speech_lm = build_mini_ultravox(trained=False)
    else:
        from interp.models.tiny import tiny_ultravox

        speech_lm = tiny_ultravox()
    return stack_dict(speech_lm, name, device)


def stack_dict(speech_lm, name: str, device: str) -> dict:
    """The frozen parts of an UltravoxSpeechLM as the training code takes them, on `device`."""
    model = speech_lm.model.eval().to(device)
    model.requires_grad_(False)
    return {"model": model, "tokenizer": speech_lm.tokenizer, "feature_extractor": speech_lm.feature_extractor,
            "pad_id": speech_lm.pad_id, "eos_id": int(speech_lm.tokenizer.eos_token_id), "name": name,
            "device": torch.device(device)}


def fresh_projector(stack: dict, seed: int) -> UltravoxProjector:
    """Seeded initial projector, made on the CPU (the same weights whatever the device), then moved."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        projector = UltravoxProjector(stack["model"].config)
    finally:
        torch.random.set_rng_state(state)
    return projector.to(stack["device"]).train()


# ---------------------------------------------------------------------------------------------- data prep

def make_sentences(args, stack, work: Path) -> dict:
    path = work / "sentences.json"
    spec = {"version": DATA_VERSION, "n_train": args.n_train, "n_val": args.n_val, "seed": args.seed,
            "lm_fraction": args.lm_fraction, "real_fraction": args.real_fraction,
            "piper_fraction": args.piper_fraction}
    source = path if path.exists() else args.sentences  # the folder's own list wins over --sentences
    if source is not None:
        raw = source.read_bytes()
        data = json.loads(gzip.decompress(raw) if source.suffix == ".gz" else raw)
        if data["spec"] != spec:
            raise SystemExit(f"{source} was made with {data['spec']}, not {spec}: " + (
                "use a new --work folder" if source == path else "give the arguments it was made with"))
        if source != path:
            _atomic_write_text(path, json.dumps(data, indent=1))
        return data
    start = time.perf_counter()
    seen = suite_texts()
    banned = set(seen)
    rng = np.random.default_rng([args.seed, 1])
    n_lm = round(args.n_train * args.lm_fraction)
    train_lm = lm_sentences(stack, n_lm, _LM_TRAIN_TOPICS, _LM_TRAIN_STYLES, args.seed * 2 + 1, seen)
    real = real_text_sentences(seen)
    n_real = min(len(real), round(args.n_train * args.real_fraction))
    if n_real < round(args.n_train * args.real_fraction):
        _log.warning("only %d real-text sentences on this installation; templates fill the rest", len(real))
    train_real = [real[i] for i in sorted(rng.choice(len(real), size=n_real, replace=False))] if n_real else []
    seen.update(train_real)
    train = [("lm", s) for s in train_lm] + [("real", s) for s in train_real] + [("template", s) for s in
             template_sentences(args.n_train - len(train_lm) - len(train_real), _TRAIN_TEMPLATES, rng, seen)]
    n_val_lm = round(args.n_val * 0.5)
    val_lm = lm_sentences(stack, n_val_lm, _LM_VAL_TOPICS, _LM_VAL_STYLES, args.seed * 2 + 2, seen)
    val = [("lm-heldout", s) for s in val_lm] + [("template-heldout", s) for s in template_sentences(
        args.n_val - len(val_lm), _VAL_TEMPLATES, rng, seen)]
    assert not banned & {s for _, s in train + val}
    order = rng.permutation(len(train))
    train = [train[i] for i in order]
    from interp.data.tts import vary_settings

    prompts = kl_prompts()
    items = {"train": [], "val": []}
    for split, sentences in (("train", train), ("val", val)):
        voice_rng = np.random.default_rng([args.seed, 2 if split == "train" else 3])
        for index, (source, text) in enumerate(sentences):
            voice = pick_voice(voice_rng, args.piper_fraction, vary_settings if split == "train" else val_settings)
            items[split].append({"id": f"{split}-{index:05d}", "text": text, "source": source, **voice,
                                 "kl_prompt": int(voice_rng.integers(len(prompts)))})
    data = {"spec": spec, "items": items, "seconds": time.perf_counter() - start,
            "counts": {split: {src: sum(1 for it in items[split] if it["source"] == src)
                               for src in {it["source"] for it in items[split]}} for split in items}}
    _atomic_write_text(path, json.dumps(data, indent=1))
    return data


def pick_voice(rng: np.random.Generator, piper_fraction: float, vary) -> dict:
    """An utterance's TTS engine (piper with probability piper_fraction) and its settings drawn by `vary`."""
    from interp.data.tts import settings_to_dict

    engine = "piper" if rng.random() < piper_fraction else "espeak"
    return {"engine": engine, "settings": settings_to_dict(vary(engine, rng))}


@dataclass(frozen=True)
class ExtraBlock:
    """One block of extra training sentences (no teacher logits): the option that sizes it, its sentence file,
    its split (shard and id prefix) and its source. Each block picks from the sentences the blocks before it
    left, so that a folder holding links to an earlier folder's shards grows by a new block without preparing
    them again."""

    arg: str
    file: str
    split: str
    rng_key: tuple[int, ...]
    source: str = "wordnet"

    @property
    def option(self) -> str:
        return "--" + self.arg.replace("_", "-")

    @property
    def count_key(self) -> str:
        """Its name in prep_stats.json's counts: the source, numbered from its second block on."""
        nth = [b for b in EXTRA_BLOCKS if b.source == self.source].index(self) + 1
        return self.source if nth == 1 else f"{self.source}_{nth}"


# source -> (its reader, its name on the model card); ExtraBlock.source names one, and so does its folder option
SOURCES = {"wordnet": (wordnet_sentences, "WordNet 3.0 usage examples"),
           "fortunes": (fortune_sentences, "fortune-cookie sentences (Debian fortunes)")}
EXTRA_BLOCKS = (ExtraBlock("n_extra", "extra_sentences.json", "extra", (4,)),
                ExtraBlock("n_extra_2", "extra_sentences_2.json", "extra2", (4, 2)),
                ExtraBlock("n_fortunes", "fortune_sentences.json", "fortune", (5,), source="fortunes"),
                ExtraBlock("n_fortunes_2", "fortune_sentences_2.json", "fortune2", (5, 2), source="fortunes"),
                ExtraBlock("n_fortunes_3", "fortune_sentences_3.json", "fortune3", (5, 3), source="fortunes"))


def _block_counts(args) -> dict[str, int]:
    """Utterances the extra blocks add, summed by source (for the model card)."""
    counts = dict.fromkeys(SOURCES, 0)
    for block in EXTRA_BLOCKS:
        counts[block.source] += getattr(args, block.arg)
    return counts


def make_extra_sentences(args, work: Path, data: dict, index: int = 0) -> list[dict]:
    """Block `index` of EXTRA_BLOCKS: WordNet usage examples or fortune-cookie sentences spoken for vocabulary
    and style (no teacher logits: they join the CTC and "repeat" rows, not the KL rows). Kept apart from
    sentences.json so that a folder's main data stays as it was made."""
    block = EXTRA_BLOCKS[index]
    n, path = getattr(args, block.arg), work / block.file
    earlier = [b for b in EXTRA_BLOCKS[:index] if getattr(args, b.arg)]
    spec = {"version": DATA_VERSION, "seed": args.seed, block.source: str(getattr(args, block.source)),
            **{b.arg: getattr(args, b.arg) for b in [*earlier, block]}}
    if path.exists():
        extra = json.loads(path.read_text())
        if extra["spec"] != spec:
            raise SystemExit(f"{path} was made with {extra['spec']}, not {spec}: use a new --work folder")
        return extra["items"]
    seen = suite_texts() | {it["text"] for split in data["items"].values() for it in split}
    for b in earlier:
        seen |= {it["text"] for it in make_extra_sentences(args, work, data, EXTRA_BLOCKS.index(b))}
    found = SOURCES[block.source][0](getattr(args, block.source), seen)
    if len(found) < n:
        raise SystemExit(f"{block.option} {n}: {block.source} gives only {len(found)} new sentences")
    rng = np.random.default_rng([args.seed, *block.rng_key])
    picked = [found[i] for i in sorted(rng.choice(len(found), size=n, replace=False))]
    from interp.data.tts import vary_settings

    items = [{"id": f"{block.split}-{i:05d}", "text": text, "source": block.source,
              **pick_voice(rng, args.piper_fraction, vary_settings)} for i, text in enumerate(picked)]
    _atomic_write_text(path, json.dumps({"spec": spec, "available": len(found), "items": items}, indent=1))
    return items


@torch.no_grad()
def encode_audio(stack, samples: np.ndarray) -> Tensor:
    """Frozen encoder output of one clip alone: (valid encoder frames, d_audio)."""
    fe = stack["feature_extractor"]
    features = fe([np.asarray(samples, dtype=np.float32)], sampling_rate=16_000, padding="longest",
                  pad_to_multiple_of=fe.hop_length, truncation=False, return_attention_mask=True,
                  return_tensors="pt")
    audio_lens = features["attention_mask"].sum(-1)
    device = stack["device"]
    hidden = stack["model"].audio_tower(features["input_features"].to(device), audio_lens.to(device))
    valid = int((audio_lens[0] - 1) // 2 + 1)
    return hidden[0, :valid].cpu(), int(audio_lens[0])


@torch.no_grad()
def teacher_targets(stack, items: list[dict], prompts: list[str], top_k: int, max_tokens: int) -> list[dict]:
    """Greedy teacher response and its top-k log-probs for each item's KL prompt with the transcript as text."""
    tok, lm = stack["tokenizer"], stack["model"].language_model
    rows = [tok(chat_text(tok, with_text(prompts[it["kl_prompt"]], it["text"])), add_special_tokens=False)
            ["input_ids"] for it in items]
    out, _ = generate_left_padded(lm, rows, stack["pad_id"], do_sample=False, max_new_tokens=max_tokens,
                                  output_logits=True)
    top = torch.log_softmax(torch.stack(out.logits, dim=1).float(), dim=-1).topk(top_k, dim=-1)  # (batch, steps, k)
    indices, values = top.indices.to(torch.int32).cpu(), top.values.cpu()
    new = out.sequences[:, -indices.shape[1]:].cpu()
    results = []
    for row in range(len(items)):
        ids = new[row].tolist()
        length = ids.index(stack["eos_id"]) + 1 if stack["eos_id"] in ids else len(ids)
        results.append({"response": ids[:length], "idx": indices[row, :length], "logp": values[row, :length]})
    return results


def prepare_split(args, stack, work: Path, split: str, items: list[dict], stats: dict) -> None:
    shard_dir = work / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    tok, prompts = stack["tokenizer"], kl_prompts()
    shards = range(math.ceil(len(items) / SHARD_SIZE))
    todo = [k for k in shards if not (shard_dir / f"{split}-{k:04d}.json").exists()]
    if not todo:
        return
    from tqdm import tqdm

    for k in tqdm(todo, desc=f"prep {split}", unit="shard"):
        chunk = items[k * SHARD_SIZE:(k + 1) * SHARD_SIZE]
        tensors, meta = {}, []
        kept = []
        for it in chunk:
            t0 = time.perf_counter()
            samples = speak(it)
            duration = len(samples) / 16_000
            t1 = time.perf_counter()
            stats["tts_s"] += t1 - t0
            if duration > MAX_SECONDS:
                _log.warning("skipping %s: %.1f s of audio", it["id"], duration)
                continue
            enc, mel_frames = encode_audio(stack, samples)
            stats["encoder_s"] += time.perf_counter() - t1
            stats["audio_s"] += duration
            stats["utterances"] += 1
            tensors[f"enc.{it['id']}"] = enc.to(torch.float16).contiguous()
            kept.append(it)
            meta.append({**it, "mel_frames": mel_frames, "duration": duration,
                         "tokens": tok(it["text"], add_special_tokens=False)["input_ids"]})
        if split in TEACHER_SPLITS and kept:
            t0 = time.perf_counter()
            targets = first_voicing_targets(work, k) if split == "flite" else {}
            missing = [it for it in kept if it["id"] not in targets]
            for start in range(0, len(missing), 16):
                part = missing[start:start + 16]
                targets.update(zip([it["id"] for it in part],
                                   teacher_targets(stack, part, prompts, args.top_k, args.kl_max_tokens)))
            for it, m in zip(kept, meta):
                target = targets[it["id"]]
                m["response"] = target["response"]
                tensors[f"kl_idx.{it['id']}"] = target["idx"].contiguous()
                tensors[f"kl_logp.{it['id']}"] = target["logp"].contiguous()
            stats["teacher_s"] += time.perf_counter() - t0
        save_file(tensors, str(shard_dir / f"{split}-{k:04d}.safetensors"))
        _atomic_write_text(shard_dir / f"{split}-{k:04d}.json", json.dumps(meta))
        _atomic_write_text(work / "prep_stats.json", json.dumps(stats, indent=1))


def first_voicing_targets(work: Path, k: int) -> dict[str, dict]:
    """The teacher targets of train shard k, keyed by the flite ids of the same sentences: flite chunk k
    speaks train chunk k's sentences again with their KL prompts, so their targets are these (an item the
    train split skipped is absent, and the teacher runs for it)."""
    path = work / "shards" / f"train-{k:04d}"
    with safe_open(str(path.with_suffix(".safetensors")), framework="pt") as f:
        return {"flite-" + m["id"].split("-", 1)[1]: {"response": m["response"],
                                                     "idx": f.get_tensor(f"kl_idx.{m['id']}"),
                                                     "logp": f.get_tensor(f"kl_logp.{m['id']}")}
                for m in json.loads(path.with_suffix(".json").read_text())}


def load_split(work: Path, split: str) -> list[dict]:
    out = []
    for meta_path in sorted((work / "shards").glob(f"{split}-*.json")):
        tensors = load_file(str(meta_path.with_suffix(".safetensors")))
        for m in json.loads(meta_path.read_text()):
            m["enc"] = tensors[f"enc.{m['id']}"]
            if f"kl_idx.{m['id']}" in tensors:
                m["kl_idx"] = tensors[f"kl_idx.{m['id']}"].long()
                m["kl_logp"] = tensors[f"kl_logp.{m['id']}"]
            out.append(m)
    return out


def training_pool(work: Path) -> list[dict]:
    """The items training draws its batches from (and its CTC vocabulary): the main training split, each
    extra block in order, then the flite voicing of the training sentences."""
    return (load_split(work, "train") + [it for block in EXTRA_BLOCKS for it in load_split(work, block.split)]
            + load_split(work, "flite"))


def prepare(args, stack, work: Path) -> tuple[list[dict], list[dict], dict]:
    stats_path = work / "prep_stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {
        "utterances": 0, "audio_s": 0.0, "tts_s": 0.0, "encoder_s": 0.0, "teacher_s": 0.0}
    t0 = time.perf_counter()
    data = make_sentences(args, stack, work)
    stats["sentences_s"] = data["seconds"]
    stats["counts"] = data["counts"]
    for split in ("train", "val"):
        prepare_split(args, stack, work, split, data["items"][split], stats)
    extra = {}
    for index, block in enumerate(EXTRA_BLOCKS):
        if getattr(args, block.arg):
            prepare_split(args, stack, work, block.split, make_extra_sentences(args, work, data, index), stats)
            extra[block.count_key] = getattr(args, block.arg)
    if args.n_flite:
        prepare_split(args, stack, work, "flite", flite_items(args, data), stats)
        extra["flite"] = args.n_flite
    if extra:
        stats["counts"] = {**data["counts"], "extra": extra}
    stats["last_prep_call_s"] = time.perf_counter() - t0
    _atomic_write_text(stats_path, json.dumps(stats, indent=1))
    return training_pool(work), load_split(work, "val"), stats


# ---------------------------------------------------------------------------------------------- training

def drawn_pool(train: list[dict], draw_from: str | None) -> list[dict]:
    """The part of the training pool batches come from: items of the --draw-from splits (an id's prefix), in
    pool order; all of it without --draw-from. The CTC vocabulary stays the whole pool's."""
    if draw_from is None:
        return train
    wanted = set(draw_from.split(","))
    splits = [it["id"].rsplit("-", 1)[0] for it in train]
    if wanted - set(splits):
        raise SystemExit(f"--draw-from {draw_from}: this folder has no {', '.join(sorted(wanted - set(splits)))} "
                         f"split (it has {', '.join(sorted(set(splits)))})")
    return [it for it, split in zip(train, splits) if split in wanted]


def batch_indices(seed: int, step: int, batch_size: int, n: int) -> list[int]:
    """Items of step `step` (0-based): consecutive slices of per-epoch permutations seeded by (seed, epoch)."""
    out = []
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(position, n)
        out.append(int(_epoch_order(seed, epoch, n)[offset]))
    return out


@lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The item order of one epoch (made once: a permutation of a 40,000-item pool costs about 0.3 ms)."""
    return np.random.default_rng([seed, 7, epoch]).permutation(n)


def augment_frames(enc: Tensor, n_tokens: int, stack_factor: int, seed: int, step: int, row: int) -> Tensor:
    """One random perturbation of an utterance's encoder frames, a function of (seed, step, row).

    - start shifted by 0 to stack_factor - 1 frames, which moves every stacking boundary;
    - speed: resampled (linear) to 0.9-1.2 times its length, never so short that the transcript has more
      than 0.9 tokens per audio position (CTC needs room for blanks) unless even 1.2 cannot give that;
    - one time mask per 50 frames, each 0-6 frames (up to 120 ms) set to zero;
    - 10 % of the values dropped (zeroed, the rest scaled by 1/0.9)."""
    rng = np.random.default_rng([seed, 11, step, row])
    frames = enc.float()[int(rng.integers(0, stack_factor)):]
    shortest = min(1.2, max(0.9, stack_factor * n_tokens / 0.9 / frames.shape[0]))
    length = max(1, math.ceil(frames.shape[0] * rng.uniform(shortest, 1.2)))
    frames = F.interpolate(frames.T[None], size=length, mode="linear", align_corners=False)[0].T.contiguous()
    for _ in range(max(1, frames.shape[0] // 50)):
        width = int(rng.integers(0, 7))
        start = int(rng.integers(0, max(1, frames.shape[0] - width)))
        frames[start:start + width] = 0
    keep = torch.from_numpy(rng.random(frames.shape) >= 0.1)
    return frames * keep / 0.9


def augmented(stack, items: list[dict], seed: int, step: int) -> list[dict]:
    """Copies of a training batch's items with freshly perturbed encoder frames."""
    factor = stack["model"].config.stack_factor
    return [dict(it, enc=augment_frames(it["enc"], len(it["tokens"]), factor, seed, step, row))
            for row, it in enumerate(items)]


def project(projector: UltravoxProjector, encs: list[Tensor]) -> Tensor:
    """Projected audio of a batch of encoder outputs, zero-padded to the longest."""
    width = max(e.shape[0] for e in encs)
    padded = torch.stack([F.pad(e.float(), (0, 0, 0, width - e.shape[0])) for e in encs])
    return projector(padded.to(next(projector.parameters()).device))


def build_rows(stack, audio: Tensor, items: list[dict], prompts: list[str], suffixes: list[list[int]],
               ) -> tuple[Tensor, Tensor, list[int]]:
    """inputs_embeds (rows, seq, d), attention mask and the prompt length of each row (suffix starts there)."""
    tok, model = stack["tokenizer"], stack["model"]
    embed = model.get_input_embeddings()
    pieces, lengths, prompt_lens = [], [], []
    for row, (it, prompt, suffix) in enumerate(zip(items, prompts, suffixes)):
        head, tail = prompt_parts(tok, prompt)
        n_audio = audio_positions(stack, it)
        with torch.no_grad():
            before = embed(torch.tensor(head, dtype=torch.long, device=audio.device))
            after = embed(torch.tensor(list(tail) + list(suffix), dtype=torch.long, device=audio.device))
        pieces.append(torch.cat([before, audio[row, :n_audio], after]))
        prompt_lens.append(len(head) + n_audio + len(tail))
        lengths.append(pieces[-1].shape[0])
    width = max(lengths)
    embeds = torch.stack([F.pad(p, (0, 0, 0, width - p.shape[0])) for p in pieces])
    mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths], device=audio.device)
    return embeds, mask, prompt_lens


def shared_head(tok, prompts: list[str]) -> int:
    """How many leading tokens the rows of these prompts share (SmolLM2's system prompt and the chat template up
    to the instruction): the same positions in every row, with the same keys and values."""
    heads = [prompt_parts(tok, prompt)[0] for prompt in prompts]
    return next((n for n, column in enumerate(zip(*heads)) if len(set(column)) > 1), min(map(len, heads)))


def suffix_logits(stack, embeds: Tensor, mask: Tensor, starts: list[int], counts: list[int],
                  shared: int = 0) -> list[Tensor]:
    """LLM logits predicting each row's `counts[r]` suffix tokens (positions starts[r]-1 ...).

    The first `shared` positions (shared_head) are the same in every row and constant (token embeddings of
    the frozen LLM): they run once, for one row, and their keys and values are reused by every row as a KV
    cache. The rows then cost forward and backward only from the audio on (~40 % of a repeat row's positions
    fewer); the logits equal a full pass up to float rounding."""
    lm = stack["model"].language_model
    cache = None
    if shared:
        with torch.no_grad():
            cache = lm.model(inputs_embeds=embeds[:1, :shared], use_cache=True).cache
        cache.batch_repeat_interleave(embeds.shape[0])
    hidden = lm.model(inputs_embeds=embeds[:, shared:], attention_mask=mask, cache=cache,
                      use_cache=cache is not None).last_hidden_state
    picked = [hidden[r, s - 1 - shared:s - 1 - shared + c] for r, (s, c) in enumerate(zip(starts, counts))]
    logits = lm.lm_head(torch.cat(picked)).float()
    return list(logits.split(counts))


def topk_kl(student_logits: Tensor, idx: Tensor, teacher_logp: Tensor) -> Tensor:
    """Sum over positions of KL(teacher || student) on the teacher's top-k tokens + one bucket for the rest."""
    s_logp = torch.log_softmax(student_logits, dim=-1).gather(-1, idx)
    t_logp = teacher_logp.float()
    t_rest = torch.log(torch.clamp(1 - t_logp.exp().sum(-1), min=1e-6))
    s_rest = torch.log(torch.clamp(1 - s_logp.exp().sum(-1), min=1e-6))
    kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1) + t_rest.exp() * (t_rest - s_rest)
    return kl.sum()


def ctc_vocabulary(stack, train: list[dict]) -> Tensor:
    """Token ids the CTC head scores: the blank (single space) first, then every training transcript token."""
    blank = stack["tokenizer"](" ", add_special_tokens=False)["input_ids"]
    assert len(blank) == 1, blank
    tokens = sorted({t for it in train for t in it["tokens"]} - set(blank))
    return torch.tensor(blank + tokens, device=stack["device"])


def ctc_logits(stack, audio: Tensor, vocab: Tensor) -> Tensor:
    """Each audio position against SmolLM2's embeddings of `vocab` (index 0 = blank): (batch, positions, |vocab|)."""
    return audio @ stack["model"].get_input_embeddings().weight[vocab].T


def audio_positions(stack, item: dict) -> int:
    """LLM audio positions of an item's encoder frames (as audio_token_count gives for its mel frames)."""
    return math.ceil(item["enc"].shape[0] / stack["model"].config.stack_factor)


def ctc_loss(stack, audio: Tensor, items: list[dict], vocab: Tensor) -> Tensor:
    """CTC of the transcripts' tokens over the audio positions, each row's loss per target token, averaged.

    Rows holding a token outside `vocab` (or the blank) are left out; a row too short for its transcript
    counts 0 (zero_infinity)."""
    position = torch.full((int(vocab.max()) + 1,), -1, dtype=torch.long)
    position[vocab.cpu()] = torch.arange(len(vocab))
    targets = [position[torch.tensor(it["tokens"], dtype=torch.long)] for it in items]
    keep = [r for r, t in enumerate(targets) if len(t) and bool((t > 0).all())]
    if not keep:
        return audio.sum() * 0
    lengths = [audio_positions(stack, it) for it in items]
    logp = torch.log_softmax(ctc_logits(stack, audio[keep], vocab).float(), dim=-1)
    return F.ctc_loss(logp.transpose(0, 1), torch.cat([targets[r] for r in keep]).to(audio.device),
                      torch.tensor([lengths[r] for r in keep]),
                      torch.tensor([len(targets[r]) for r in keep]), blank=0, reduction="mean", zero_infinity=True)


def ctc_read(stack, audio: Tensor, length: int, vocab: Tensor) -> str:
    """Greedy CTC reading of one item's audio positions: best token per position, repeats merged, blanks dropped."""
    best = ctc_logits(stack, audio[:length], vocab).argmax(-1).tolist()
    ids = [int(vocab[b]) for j, b in enumerate(best) if b != 0 and (j == 0 or b != best[j - 1])]
    return stack["tokenizer"].decode(ids).strip()


def loss_for(stack, projector, items: list[dict], kl_batch: int, prompts: list[str], vocab: Tensor,
             reuse_head: bool = True) -> dict:
    """Phase-2 losses: ce, kl and ctc. With `reuse_head` the head every row of a pass shares runs once
    (suffix_logits), and the KL rows run in one pass per prompt, so that each pass shares its prompt's whole
    head (one pass of all KL rows would share nothing: plain prompts have no chat template) and none is padded
    to the long few-shot prompts; without it, each loss runs full rows in one pass, as every shipped projector
    was trained (the same losses up to float rounding)."""
    eos, tok = stack["eos_id"], stack["tokenizer"]
    audio = project(projector, [it["enc"] for it in items])
    ctc = ctc_loss(stack, audio, items, vocab)
    targets = [list(it["tokens"]) + [eos] for it in items]
    embeds, mask, starts = build_rows(stack, audio, items, [REPEAT_PROMPT] * len(items), targets)
    logits = suffix_logits(stack, embeds, mask, starts, [len(t) for t in targets],
                           shared_head(tok, [REPEAT_PROMPT]) if reuse_head else 0)
    ce = F.cross_entropy(torch.cat(logits), torch.tensor([x for t in targets for x in t], device=audio.device))
    kl = torch.zeros((), device=audio.device)
    rows = [r for r, it in enumerate(items[:kl_batch]) if "kl_idx" in it]
    by_prompt: dict[int, list[int]] = {}
    for r in rows:
        by_prompt.setdefault(items[r]["kl_prompt"], []).append(r)
    for group in by_prompt.values() if reuse_head else [rows]:
        kl_items = [items[r] for r in group]
        responses = [it["response"] for it in kl_items]
        row_prompts = [prompts[it["kl_prompt"]] for it in kl_items]
        embeds, mask, starts = build_rows(stack, audio[group], kl_items, row_prompts, responses)
        logits = suffix_logits(stack, embeds, mask, starts, [len(r) for r in responses],
                               shared_head(tok, row_prompts) if reuse_head else 0)
        kl = kl + sum(topk_kl(lg, it["kl_idx"].to(lg.device), it["kl_logp"].to(lg.device))
                      for lg, it in zip(logits, kl_items))
    if rows:
        kl = kl / sum(len(items[r]["response"]) for r in rows)
    return {"ce": ce, "kl": kl, "ctc": ctc}


def step_loss(stack, projector, items: list[dict], vocab: Tensor, *, distil: bool, kl_batch: int = 0,
              kl_weight: float = 1.0, ctc_weight: float = 0.5, prompts: list[str] | tuple = (),
              reuse_head: bool = True) -> tuple[Tensor, dict]:
    """A training step's loss and its parts: phase 1 (distil False) CTC alone; phase 2
    ce + kl_weight * kl + ctc_weight * ctc (loss_for)."""
    if not distil:
        losses = {"ctc": ctc_loss(stack, project(projector, [it["enc"] for it in items]), items, vocab)}
        return losses["ctc"], losses
    losses = loss_for(stack, projector, items, kl_batch, prompts, vocab, reuse_head)
    return losses["ce"] + kl_weight * losses["kl"] + ctc_weight * losses["ctc"], losses


@torch.no_grad()
def evaluate(stack, projector, items: list[dict], vocab: Tensor) -> tuple[dict, list[dict]]:
    """WER of greedy 'repeat' generation through the student, one item at a time, and of the CTC head's reading."""
    from interp.text_metrics import word_error_rate

    was_training = projector.training
    projector.eval()
    lm, tok = stack["model"].language_model, stack["tokenizer"]
    hyps, ctc_hyps = [], []
    for it in items:
        audio = project(projector, [it["enc"]])
        ctc_hyps.append(ctc_read(stack, audio[0], audio_positions(stack, it), vocab))
        embeds, mask, _ = build_rows(stack, audio, [it], [REPEAT_PROMPT], [[]])
        out = lm.generate(inputs_embeds=embeds, attention_mask=mask, do_sample=False, pad_token_id=stack["pad_id"],
                          max_new_tokens=2 * len(it["text"].split()) + 4)
        hyps.append(tok.decode(out[0], skip_special_tokens=True).strip())
    projector.train(was_training)
    refs = [it["text"] for it in items]
    wers = {"val_wer": word_error_rate(refs, hyps), "val_ctc_wer": word_error_rate(refs, ctc_hyps)}
    return wers, [{"id": it["id"], "ref": r, "hyp": h, "ctc": c} for it, r, h, c in zip(items, refs, hyps, ctc_hyps)]


def lr_lambda(warmup: int, total: int, floor: float = 0.05, ctc_steps: int = 0, ctc_warmup: int = 1):
    """Linear warmup then cosine to `floor`, once over the CTC phase (if any) and once over the main phase."""
    def phase(step: int, warm: int, length: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, length - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    def f(step: int) -> float:
        return phase(step, ctc_warmup, ctc_steps) if step < ctc_steps else phase(step - ctc_steps, warmup, total)
    return f


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(work: Path, projector, optimizer, scheduler, step: int) -> None:
    tmp = work / "checkpoint.safetensors.tmp"
    save_file({k: v.detach().cpu().contiguous() for k, v in projector.state_dict().items()}, str(tmp),
              metadata={"step": str(step)})
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step},
               work / "train_state.pt.tmp")
    os.replace(work / "train_state.pt.tmp", work / "train_state.pt")
    os.replace(tmp, work / "checkpoint.safetensors")


def resume(work: Path, projector, optimizer, scheduler, device) -> tuple[int, list[dict]]:
    """Load the folder's last checkpoint, if any, into projector, optimizer and scheduler; drop the log lines
    after it. Returns the step to go on from and the log kept."""
    step = 0
    if (work / "checkpoint.safetensors").exists():
        projector.load_state_dict(load_file(str(work / "checkpoint.safetensors")), strict=True)
        state = torch.load(work / "train_state.pt", weights_only=True, map_location=device)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])
        _log.info("resumed from step %d", step)
    log = [entry for entry in read_log(work) if entry["step"] <= step]
    _atomic_write_text(work / "log.jsonl", "".join(json.dumps(e) + "\n" for e in log))
    return step, log


def optimizer_step(loss: Tensor, params: list, optimizer, scheduler) -> float:
    """Backward, clip the gradient norm to 1, step; returns the learning rate the step used."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    return lr


def read_log(work: Path) -> list[dict]:
    path = work / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def projector_card(stack, projector, work: Path, *, data: dict, training: dict, init: Path | None,
                   **more) -> dict:
    """The card written beside an exported projector (by both trainers): what it is, what it heard, how it was
    trained and on what, its mean losses over the last 50 distillation steps of `work`'s log, `more` (e.g.
    validation WERs) and, after --init, the card of the projector it started from: a chain of --init runs nests
    to its first."""
    recent = [e for e in read_log(work) if "ce" in e][-50:]
    device = stack["device"]
    hardware = (torch.cuda.get_device_name(device) if device.type == "cuda" else
                f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, CPU")
    card = {"model": f"{stack['name']} projector (UltravoxProjector, stack 8, hidden "
                     f"{stack['model'].config.hidden_size}, ln_mid)",
            "keys": "UltravoxModel.multi_modal_projector.state_dict()", "dtype": "float32",
            "parameters": sum(p.numel() for p in projector.parameters()),
            "frozen": "Whisper-base encoder (mini-whisper) + SmolLM2-135M-Instruct",
            "data": data, "training": {**training, "hardware": hardware},
            "final_losses_mean_last_50": {k: float(np.mean([e[k] for e in recent]))
                                          for k in ("loss", "ce", "kl", "ctc")} if recent else None,
            **more, "log": "log.jsonl in the --work folder"}
    if init is not None and init.with_suffix(".json").is_file():
        card["init_card"] = json.loads(init.with_suffix(".json").read_text())
    return card


def export(path: Path, projector, card: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().float().cpu().contiguous() for k, v in projector.state_dict().items()}, str(path),
              metadata={"format": "pt", "model": card["model"].split(" (")[0]})
    _atomic_write_text(path.with_suffix(".json"), json.dumps(card, indent=1))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="cache, checkpoints and log folder")
    p.add_argument("--stack", choices=["mini-ultravox", "tiny-ultravox"], default="mini-ultravox",
                   help="frozen encoder + LLM (tiny-ultravox: seeded random weights, for smoke tests)")
    p.add_argument("--device", default="cpu",
                   help="torch device for the frozen models and the projector (cuda: a GPU)")
    p.add_argument("--n-train", type=int, default=3000)
    p.add_argument("--n-val", type=int, default=120)
    p.add_argument("--lm-fraction", type=float, default=0.35, help="share of training sentences from SmolLM2")
    p.add_argument("--real-fraction", type=float, default=0.25,
                   help="share of training sentences from real text on disk (Python reference, package descriptions)")
    p.add_argument("--sentences", type=Path, default=None,
                   help="start the folder's sentences.json from this file (.json or .json.gz) instead of sampling "
                        "it; experiments/mini_ultravox/data/sentences.json.gz: the shipped projector's list as "
                        "remade on 2026-11-26 (made with --n-train 3000 --n-val 120 --lm-fraction 0.2 "
                        "--real-fraction 0.3 --seed 0)")
    p.add_argument("--n-extra", type=int, default=0,
                   help="more training utterances from WordNet's usage examples, without teacher logits")
    p.add_argument("--n-extra-2", type=int, default=0,
                   help="a second block of WordNet utterances, from those --n-extra left: grows a folder that "
                        "links an earlier folder's --n-extra shards without preparing them again")
    p.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet"),
                   help="WordNet 3.0 dict folder (data.noun, ...) for --n-extra")
    p.add_argument("--n-fortunes", type=int, default=0,
                   help="more training utterances from fortune cookies' sentences (quotations, jokes, proverbs), "
                        "without teacher logits; none that an earlier block picked")
    p.add_argument("--n-fortunes-2", type=int, default=0,
                   help="a second block of fortune utterances, from those --n-fortunes left (grows a folder that "
                        "links an earlier folder's shards, like --n-extra-2)")
    p.add_argument("--n-fortunes-3", type=int, default=0,
                   help="a third block of fortune utterances, from those the first two left")
    p.add_argument("--fortunes", type=Path, default=Path("/usr/share/games/fortunes"),
                   help="fortune files folder for --n-fortunes (Debian: apt-get install fortunes)")
    p.add_argument("--n-flite", type=int, default=0,
                   help="speak the first N training sentences again in flite's voices, with teacher targets "
                        "(needs `apt-get install flite`)")
    p.add_argument("--piper-fraction", type=float, default=0.6, help="share of utterances spoken by piper")
    p.add_argument("--top-k", type=int, default=32)
    p.add_argument("--kl-max-tokens", type=int, default=16, help="teacher response length for the KL term")
    p.add_argument("--ctc-steps", type=int, default=1500,
                   help="phase-1 steps: CTC alignment only, no LLM pass (0: none)")
    p.add_argument("--ctc-batch-size", type=int, default=16)
    p.add_argument("--ctc-weight", type=float, default=0.5, help="weight of the CTC term in phase 2")
    p.add_argument("--steps", type=int, default=2000, help="phase-2 steps (cross-entropy + KL + CTC)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--kl-batch", type=int, default=None, help="KL rows per step (default batch-size // 2)")
    p.add_argument("--kl-weight", type=float, default=1.0)
    p.add_argument("--augment", action="store_true",
                   help="perturb the training encoder frames at each step (see augment_frames; default: as cached)")
    p.add_argument("--init", type=Path, default=None,
                   help="start from this exported projector (safetensors) instead of a fresh one, e.g. to "
                        "continue distillation with --ctc-steps 0")
    p.add_argument("--first-batch", type=int, default=0,
                   help="phase-2 batches start at this batch of the seeded order instead of the first: with --init "
                        "on the same data, the phase-2 steps the init run took, so that the continuation draws "
                        "the items that run did not (with 0 it draws that run's batches again)")
    p.add_argument("--draw-from", default=None,
                   help="comma-separated splits the batches are drawn from (train, "
                        f"{', '.join(block.split for block in EXTRA_BLOCKS)}, flite; "
                        "default: all of the folder's): with --init, e.g. train,fortune keeps the batches on the "
                        "teacher-logit items and a new block instead of utterances the init run heard already")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup", type=int, default=None, help="warmup steps (default 5%% of --steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-items", type=int, default=40)
    p.add_argument("--ckpt-every", type=int, default=50)
    p.add_argument("--max-minutes", type=float, default=None, help="wall budget from process start")
    p.add_argument("--threads", type=int, default=2,
                   help="torch threads (on a busy 2-core machine 1 is faster than 2)")
    p.add_argument("--export", type=Path, default=None, help="write the projector (safetensors) + .json card")
    p.add_argument("--prep-only", action="store_true", help="stop after data preparation")
    p.add_argument("--no-final-eval", action="store_true", help="skip the full validation WER at the end")
    args = p.parse_args(argv)
    for block, before in zip(EXTRA_BLOCKS[1:], EXTRA_BLOCKS):
        if block.source == before.source and getattr(args, block.arg) and not getattr(args, before.arg):
            p.error(f"{block.option} needs {before.option} (it picks from the {block.source} sentences that block "
                    "left)")
    if args.n_flite > args.n_train:
        p.error(f"--n-flite {args.n_flite}: there are only {args.n_train} training sentences (--n-train)")
    args.kl_batch = args.batch_size // 2 if args.kl_batch is None else args.kl_batch
    args.warmup = max(1, round(0.05 * args.steps)) if args.warmup is None else args.warmup
    return args


# A work folder's cached data is fixed by the data keys; its training run (checkpoint, log) by both.
_DATA_KEYS = ("stack", "n_train", *(block.arg for block in EXTRA_BLOCKS), "n_flite", "n_val", "lm_fraction",
              "real_fraction", "piper_fraction", "top_k", "kl_max_tokens", "seed")
_TRAIN_KEYS = ("ctc_steps", "ctc_batch_size", "ctc_weight", "steps", "batch_size", "kl_batch", "kl_weight", "lr",
               "weight_decay", "warmup", "augment", "init", "first_batch", "draw_from")
# Keys added after the first work folders were made, with the value those folders had without naming it.
_ADDED_KEYS = {"stack": "mini-ultravox", **{block.arg: 0 for block in EXTRA_BLOCKS}, "n_flite": 0, "augment": False,
               "init": None, "first_batch": 0, "draw_from": None}


def _lock_config(path: Path, config: dict) -> None:
    """Record `config` in `path`, or refuse when the folder was made with other values (a key added since
    the folder was made counts as its value of then, _ADDED_KEYS)."""
    if path.exists():
        recorded = {**{k: v for k, v in _ADDED_KEYS.items() if k in config}, **json.loads(path.read_text())}
        if recorded != config:
            raise SystemExit(f"{path} differs from these arguments ({config}); use a new --work folder")
    _atomic_write_text(path, json.dumps(config, indent=1))


def main(argv: list[str] | None = None) -> dict:
    started = time.perf_counter()
    args = parse_args(argv)
    for name, given in (("--init", args.init), ("--sentences", args.sentences)):
        if given is not None and not given.is_file():
            raise SystemExit(f"{name} {given}: no such file")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    _lock_config(work / "data_config.json", {k: getattr(args, k) for k in _DATA_KEYS})

    stack = load_stack(args.stack, args.device)
    train, val, stats = prepare(args, stack, work)
    _log.info("data: %d train, %d val utterances; prep stats %s", len(train), len(val), stats)
    if args.prep_only:
        return {"train": len(train), "val": len(val), "prep": stats}
    config = {k: getattr(args, k) for k in _DATA_KEYS + _TRAIN_KEYS}
    if args.init is not None:
        config["init"] = f"{args.init} (sha256 {hashlib.sha256(args.init.read_bytes()).hexdigest()[:16]})"
    _lock_config(work / "train_config.json", config)

    projector = fresh_projector(stack, args.seed)
    if args.init is not None:
        projector.load_state_dict(load_file(str(args.init)), strict=True)
    params = [p for p in projector.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    total = args.ctc_steps + args.steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(
        args.warmup, args.steps, ctc_steps=args.ctc_steps, ctc_warmup=max(1, round(0.05 * args.ctc_steps))))
    step, log = resume(work, projector, optimizer, scheduler, stack["device"])
    train_seconds = sum(e.get("step_s", 0.0) for e in log)
    prompts = kl_prompts()
    vocab = ctc_vocabulary(stack, train)
    pool = drawn_pool(train, args.draw_from)

    from tqdm import tqdm

    bar = tqdm(total=total, initial=step, desc="train", unit="step")
    stopped = False
    last = {}
    with open(work / "log.jsonl", "a") as log_file:
        while step < total:
            t0 = time.perf_counter()
            if step < args.ctc_steps:
                drawn = step
                batch = batch_indices(args.seed, drawn, args.ctc_batch_size, len(pool))
            else:  # --first-batch moves phase 2 only
                drawn = step + args.first_batch
                batch = batch_indices(args.seed, drawn - args.ctc_steps, args.batch_size, len(pool))
            items = [pool[i] for i in batch]
            items = augmented(stack, items, args.seed, drawn) if args.augment else items
            loss, losses = step_loss(stack, projector, items, vocab, distil=step >= args.ctc_steps,
                                     kl_batch=args.kl_batch, kl_weight=args.kl_weight, ctc_weight=args.ctc_weight,
                                     prompts=prompts)
            values = {k: float(v.detach()) for k, v in (("loss", loss), *losses.items())}
            lr = optimizer_step(loss, params, optimizer, scheduler)
            step += 1
            dt = time.perf_counter() - t0
            train_seconds += dt
            last = {"step": step, **values,
                    "lr": lr, "items_per_s": len(items) / dt, "step_s": dt,
                    "elapsed_s": time.perf_counter() - started}
            log_file.write(json.dumps(last) + "\n")
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in values.items()})
            out_of_time = args.max_minutes is not None and time.perf_counter() - started > 60 * args.max_minutes
            if (step % args.eval_every == 0 or step == args.ctc_steps) and step < total and not out_of_time:
                wers, _ = evaluate(stack, projector, val[:args.eval_items], vocab)
                n_eval = min(len(val), args.eval_items)
                log_file.write(json.dumps({"step": step, **wers, "val_items": n_eval,
                                           "elapsed_s": time.perf_counter() - started}) + "\n")
                bar.write(f"step {step}: val WER {wers['val_wer']:.3f} (CTC reading {wers['val_ctc_wer']:.3f}) "
                          f"on {n_eval} items")
            if step % args.ckpt_every == 0 or step == total or out_of_time:
                log_file.flush()
                save_checkpoint(work, projector, optimizer, scheduler, step)
            if out_of_time and step < total:
                bar.write(f"--max-minutes reached at step {step}; checkpoint saved, rerun to continue")
                stopped = True
                break
    bar.close()

    result = {"step": step, "completed": step >= total and not stopped, "last": last}
    eval_items = val if not args.no_final_eval else val[:args.eval_items]
    if val and (result["completed"] or args.export):
        wers, samples = evaluate(stack, projector, eval_items, vocab)
        result.update(wers, val_items=len(eval_items))
        _atomic_write_text(work / f"val_samples_step{step}.json", json.dumps(samples, indent=1))
        with open(work / "log.jsonl", "a") as log_file:
            log_file.write(json.dumps({"step": step, **wers, "val_items": len(eval_items), "final": True,
                                       "elapsed_s": time.perf_counter() - started}) + "\n")
        print(f"validation WER at step {step}: {wers['val_wer']:.3f} (CTC reading {wers['val_ctc_wer']:.3f}) "
              f"on {len(eval_items)} held-out utterances")
    if args.export:
        card = projector_card(
            stack, projector, work, init=args.init,
            data={"train_utterances": len(train), "drawn_utterances": len(pool), "val_utterances": len(val),
                  "sources": stats.get("counts"),
                  "tts": "piper (vary_settings) and espeak-ng (vary_settings)"
                         + (f"; flite ({args.n_flite} training sentences again, flite_settings)"
                            if args.n_flite else "")
                         + "; validation voices outside those ranges",
                  "real_text": "; ".join(
                      ["Python language reference (pydoc_data) and installed packages' descriptions"]
                      + [f"{n} {SOURCES[source][1]}" for source, n in _block_counts(args).items() if n])},
            training={**config, "steps_done": step, "completed": result["completed"],
                      "train_seconds": round(train_seconds, 1),
                      "wall_seconds_this_call": round(time.perf_counter() - started, 1)},
            val_wer=result.get("val_wer"), val_ctc_wer=result.get("val_ctc_wer"), val_wer_items=result.get("val_items"))
        export(args.export, projector, card)
        print(f"exported {args.export} and {args.export.with_suffix('.json')}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
