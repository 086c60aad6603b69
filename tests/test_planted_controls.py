"""Planted outcomes of the controls, on the real mini stack (small sets).

mini-disguise is a cascade by construction (its audio positions hold SmolLM2's own input embeddings of
Whisper-base's timed transcript, interp.models.disguise), and the swap ablation gives every item another item's
audio (interp.data.ablation). What each instrument must then report is asserted here, at thresholds taken from
what the construction guarantees; where an outcome asked for does not follow from the construction on this stack,
the test asserts what does, and its docstring gives the measured numbers and the reason.

One 24-item balanced sentiment set (piper, `interp data synth sentiment --n 24 --seed 0`: 12 positive) serves every
test: with 24 items one answer moves accuracy by 0.042, so "within 0.1 of chance" means within 2 answers of 12/24
(with 12 items it would mean 1). One mini-disguise (its Whisper runs once per clip, interp.models.disguise's memo),
one cache of it (`llm.layers.*` at the audio positions, few-shot prompts) and one run folder (the clean runs are
made once and resumed by later tests) serve the lens, the erasure and the swap. Prompts are few-shot throughout, as
the mini stack's demo runs them (README: SmolLM2-135M reads them better than its chat template).

The numbers measured here (a 2-core machine under load, one torch thread) are in each test's docstring.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from activations import ActivationCache
from activations.extract import extract, plan_extraction
from interp.behavior import read_predictions, run_system
from interp.compare_text.text_side import text_states
from interp.data import SpokenSet
from interp.data.ablation import swap_sources
from interp.erasure import fit_eraser
from interp.erasure_eval import evaluate_erasure
from interp.lens import TokenNormalizer, Unembed, logit_lens, score_lens, token_score
from interp.models.base import describe_model
from interp.models.mini import load_model
from interp.task_prompts import task_prompt
from tests.helpers import run_cli

pytestmark = pytest.mark.slow

PROMPTS = "few-shot"
CHANCE = 0.5  # balanced binary set
N_ITEMS = 24


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread for the whole module (its fixtures are module-scoped, so the function-scoped
    one_torch_thread of conftest would not cover them): a second thread only adds waits on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def spoken(tmp_path_factory: pytest.TempPathFactory) -> SpokenSet:
    out = tmp_path_factory.mktemp("planted") / "sentiment"
    result = run_cli("--threads", "1", "data", "synth", "sentiment", "--n", str(N_ITEMS), "--seed", "0", "--out", out)
    assert result.returncode == 0, result.stderr
    spoken = SpokenSet.open(out)
    assert len(spoken.items) == N_ITEMS and sum(int(item.label) for item in spoken.items) == N_ITEMS // 2
    return spoken


@pytest.fixture(scope="module")
def disguise():
    return load_model("mini-disguise")


def prompt_for(item) -> str:
    return task_prompt(item.task, PROMPTS).for_item(item)


@pytest.fixture(scope="module")
def cache(disguise, spoken: SpokenSet, tmp_path_factory: pytest.TempPathFactory) -> ActivationCache:
    """What `interp extract --model mini-disguise --sites "llm.layers.*" --prompts few-shot --dtype float32` makes."""
    out = tmp_path_factory.mktemp("planted-cache") / "cache"
    extract(disguise, spoken, out, plan=plan_extraction(disguise, "llm.layers.*", "audio"), prompt_for=prompt_for,
            dtype="float32", model_info=describe_model(disguise, "mini-disguise"))
    return ActivationCache.open(out)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One behaviour run folder for the module: a clean run made by one test is resumed (not recomputed) by another."""
    return tmp_path_factory.mktemp("planted-run") / "run"


def accuracy(path: Path) -> float:
    predictions = read_predictions(path)
    assert len(predictions) == N_ITEMS
    return float(np.mean([p.correct for p in predictions]))


def clean_run(system, name: str, spoken: SpokenSet, run: Path) -> Path:
    return run_system(system, spoken, run, system_name=name, prompt_style=PROMPTS)


# --- 1. the logit lens --------------------------------------------------------------------------------------------


def test_the_lens_reads_the_disguise_as_its_llm_reads_the_transcript(disguise, spoken, cache, tmp_path) -> None:
    """Asked for: bag-of-tokens precision >= 0.8 at the disguise's best layer. That does not follow from the
    construction on this stack, and was not met: measured 0.479 at its best layer (L15, where only 8 items keep a
    top-1 token that is no punctuation; 0.13-0.38 at the other layers but 0 and 10, 0.284 at L29), because
    SmolLM2-135M's RMSNorm logit lens does not spell the token a position holds at any layer, even when it reads
    text: on three transcripts read alone, top-1 = the input token at 62 % of positions at the embeddings and at
    0-4 % at the output of every layer 0-29 (it spells punctuation, function words and, late, the next token).
    The construction's guarantee is relative: the disguise's audio rows are the transcript's own embeddings, so
    the lens should find in them about what it finds when the same LLM reads the transcript in the same prompt
    (interp.compare_text's text side): measured 0.582 at that side's best layer (L15 too), a gap of 0.10. The
    fillers (" -" on ~40 % of the audio rows: 349 rows for 211 transcript tokens) and Whisper's words in place of
    the gold ones change the context, hence the tolerance 0.15 (the report's own "no gap" is 0.1,
    interp.report.lens.SAME). And the words it spells are the item's own: against
    another item's transcript (a derangement) the same lens tokens score 0.312 at L15 (0.14-0.31 at layers 1-29:
    the transcripts share templates and function words), so the best layer must beat that by 0.1."""
    normalizer = TokenNormalizer(disguise.tokenizer)
    lens = logit_lens(cache, model=disguise, top_k=1)
    scores = score_lens(lens, normalizer, n_boot=100)
    best_layer, best = max(((layer, s.precision.value) for layer, s in scores.layers.items() if s.precision),
                           key=lambda pair: pair[1])
    assert len(scores.layers) == 30 and lens.rows > 10 * N_ITEMS

    sites = [f"llm.layers.{layer}" for layer in range(30)]
    states = text_states(disguise.llm, spoken.items, prompt_for, sites, tmp_path / "text_states.h5",
                         {"model": disguise.name, "prompts": PROMPTS})
    unembed, text_side = Unembed.from_model(disguise.llm), {}
    for layer, site in enumerate(sites):
        top1 = unembed.top_k(states.read(site), k=1)[0][:, 0]
        text_side[layer] = np.nanmean([
            token_score(top1[states.offsets[k]:states.offsets[k + 1]], item.transcript, normalizer).precision
            for k, item in enumerate(spoken.items)])
    assert best >= max(text_side.values()) - 0.15, (best_layer, best, text_side)

    derangement = swap_sources([meta.id for meta in lens.items], seed=0)
    transcripts = {meta.id: meta.transcript for meta in lens.items}
    others = np.nanmean([token_score(lens.layers[best_layer].top1[lens.item_rows(index)],
                                     transcripts[derangement[meta.id]], normalizer).precision
                         for index, meta in enumerate(lens.items)])
    assert best >= others + 0.1, (best_layer, best, others)


# --- 2. LEACE erasure ---------------------------------------------------------------------------------------------


def test_text_leace_at_the_audio_positions_takes_the_disguise_to_chance(disguise, spoken, cache, run) -> None:
    """`interp erase fit CACHE --concept text` (K = 32 aligned tokens + other, every cached layer) then `interp erase
    eval`: fitted on the cache's 24 items and evaluated on the same 24, as those two commands do (the sweep's half
    split, fit on 12 and evaluate on the other 12, gave the same 0.583 from a clean 0.833). Measured: clean 0.750,
    text-erased 0.583 (rank 32 at every layer, 36 % of the audio rows' raw variance; the erased disguise answers
    "negative" to 22 of 24, SmolLM2's prior here). Text LEACE with the full token identity (K = 64 covers every
    aligned token of this set) gives 0.500, but random LEACE of that rank (64) drops to 0.625 too (0.375 at
    layers 0-14), so the default K, the one the CLI fits, is asserted. The labels are a proxy (each row's word by
    piper's timing; the disguise lays a token at Whisper's timestamp, on the word's own position for 36 % of
    words), which is why the default eraser does not reach exactly 0.5."""
    clean = accuracy(clean_run(disguise, "mini-disguise", spoken, run))
    assert clean >= 0.7  # measured 0.750: the erasure has something to remove
    text = fit_eraser(cache, spoken, "text", "llm.layers.*", tokenizer=disguise.tokenizer)
    assert {eraser.rank for eraser in text.sites.values()} == {32} and len(text.sites) == 30
    erased = accuracy(evaluate_erasure(disguise, text, spoken, run, prompt_style=PROMPTS))
    assert abs(erased - CHANCE) <= 0.1, (clean, erased)


def test_random_leace_of_small_rank_leaves_the_disguise_as_it_was(disguise, spoken, cache, run) -> None:
    """The random control at rank 4 (0.7 % of d = 576) at every layer: measured 0.750, the clean accuracy (answers'
    log-likelihood margins r = 0.98 with the clean ones). This is the regime the control's construction covers
    (rank << d). Asked for as well: random LEACE of the SAME rank as text (32) within 0.05 of clean. Measured, it
    is not: 0.542 (the margins' AUC for the labels falls from 0.99 to 0.56; text@32: 0.81), 0.625 at rank 16 and
    0.625 at rank 64; on the sweep's half split 0.583 at rank 32 and at rank 8 from a clean 0.833. At d = 576 a
    rank of 16-64 is not small: whitened random directions at every layer (9 % of the raw variance at rank 32)
    break SmolLM2-135M's reading as much as the text does, as docs/analyses.md found on mini-ultravox. So on the
    mini stack text LEACE at the rank that reaches chance is not told apart from random LEACE by accuracy, and the
    matched-rank claim is not asserted."""
    clean = accuracy(clean_run(disguise, "mini-disguise", spoken, run))
    control = fit_eraser(cache, spoken, "random", "llm.layers.*", match=4)
    assert {eraser.rank for eraser in control.sites.values()} == {4}
    erased = accuracy(evaluate_erasure(disguise, control, spoken, run, system_name="mini-disguise+erase-random4",
                                       prompt_style=PROMPTS))
    assert abs(erased - clean) <= 0.05, (clean, erased)


# --- 3. the swap ablation -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mini-disguise", "mini-cascade", "mini-ultravox"])
def test_under_swap_each_system_answers_the_item_it_heard(name, disguise, spoken, run) -> None:
    """`interp behave --systems NAME --ablate swap --prompts few-shot` (seed 0). Asked for: accuracy within 0.1 of
    chance. A system that uses its audio answers, under swap, what it answers to the item it heard: that much the
    construction guarantees, and it holds for every item (measured: 24 of 24 for each system). Its accuracy is then
    fixed by one derangement: right where the heard item's clean answer is the item's label. Measured at seed 0
    (10 of 24 pairs share a label): mini-disguise 0.500 (clean 0.750), mini-cascade 0.458 (0.708) and mini-ultravox
    0.667 (0.583), 0.167 above chance: it answers "negative" to 20 of 24 items (a label prior), and seed 0 gives
    each of the 4 clips it calls positive to a positive item (the 99.5th percentile of its accuracy over
    derangements). Over derangements, answers that follow the heard item score (n/2 - clean accuracy)/(n - 1) on a
    balanced set, 0.49-0.50 here, with a standard deviation of 0.08-0.09 at n = 24 (2000 seeds): one derangement's
    accuracy is not held within 0.1 of chance by anything, and mini-ultravox's also rests on two near-ties
    (log-likelihood margins 0.0003 and 0.002), so it is not asserted. Chance is asserted where the construction
    puts it: on the mean over 500 derangements of the accuracy the system's own answers imply (within 0.05)."""
    system = disguise if name == "mini-disguise" else load_model(name)
    clean = {p.id: p for p in read_predictions(clean_run(system, name, spoken, run))}
    swapped = read_predictions(run_system(system, spoken, run, system_name=name, prompt_style=PROMPTS,
                                          ablation="swap", seed=0))
    ids = [item.id for item in spoken.items]
    sources = swap_sources(ids, seed=0)
    assert [p.id for p in swapped] == ids
    assert all(p.audio_from == sources[p.id] != p.id for p in swapped)
    assert [p.prediction for p in swapped] == [clean[p.audio_from].prediction for p in swapped]

    implied = [np.mean([clean[heard[i]].prediction == clean[i].label for i in ids])
               for heard in (swap_sources(ids, seed) for seed in range(500))]
    assert abs(float(np.mean(implied)) - CHANCE) <= 0.05


# --- 4. speech vs text inside one LLM -----------------------------------------------------------------------------


def test_compare_text_reads_the_disguises_audio_rows_as_its_transcript(disguise, spoken, cache, tmp_path) -> None:
    """The disguise's audio positions hold SmolLM2's own embeddings of Whisper's transcript at the words' times, so
    at the early layers, where a token's state is still mostly its own embedding, its word means match the text
    side's (the same tokens read in the transcript) far above the shuffled pairing. Not near 1, by construction: a
    word's audio mean also averages the filler positions inside the word's time (a 160 ms position holds at most
    one token), and Whisper's transcript is not always the gold text. Measured on this set: CKA 0.52-0.54 at layers
    2-8 against a chance of 0.01-0.02 (mini-ultravox reads 0.15-0.18 at layers 3-6 on 16 items: the early layers
    are where the two differ). The late layers are not asserted: there both read 0.6-0.8 (disguise: 0.71 at layer
    28, chance 0.10), since an LLM's deep states of a word in context look alike whichever way the word came in."""
    from interp.compare_text import compare_text

    report = compare_text(cache, spoken, disguise, text_states_path=tmp_path / "text.h5", prompts=PROMPTS)
    assert report["n_items"] == N_ITEMS and report["text_llm"] == "smollm2-135m-instruct"
    early = [row for row in report["layers"] if 2 <= row["layer"] <= 8]
    assert len(early) == 7
    assert all(row["cka"] >= 0.45 and row["cka_shuffled"] <= 0.1 for row in early), early
