"""Speech vs text inside one LLM, by layer: the analysis behind `interp compare-text`.

If a speech LLM were an ASR → LLM cascade in disguise, its LLM's states at the audio positions of a word would
look like the same LLM's states at that word's tokens when it reads the transcript. For every cached
`llm.layers.N` this reads both, word by word (interp.compare_text.align), and scores them with linear CKA and a
cross-modal bag-of-characters probe (interp.compare_text.measures).

Only items with word timings (TTS-made sets carry them) can be aligned; an item without them is left out with
a warning and counted in the results (`skipped_items.no_word_timings`). Whisper word timestamps for recorded
speech are a later step.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse

from activations import ActivationCache
from activations.extract import dataset_identity
from interp.compare_text.align import align_words
from interp.compare_text.figure import compare_text_figure
from interp.compare_text.measures import cross_modal_probe, linear_cka, shuffled_cka, split_items
from interp.compare_text.text_side import TEXT_STATES, TextStates, text_llm_of, text_states
from interp.data.manifest import Item, SpokenSet
from interp.errors import InterpError
from interp.io import write_atomic, write_text_atomic
from interp.models.base import other_weights
from interp.sites import llm_layers, parse_layers
from interp.task_prompts import DEFAULT_PROMPT_STYLE, check_prompt_style, task_prompt
from probes.targets import bag_of_characters

__all__ = ["RESULTS", "FIGURE", "cache_prompt_for", "compare_text", "write_compare_text"]

_log = logging.getLogger(__name__)

RESULTS, FIGURE = "compare_text.json", "compare_text.html"


def cache_prompt_for(cache: ActivationCache, style: str | None = None) -> tuple[Callable[[Item], str], str]:
    """(prompt of each item, its description): by default the prompt the cache's audio was read with, from the
    cache's provenance (`interp extract --prompt` or `--prompts`); `style` overrides it (a log line says when
    it differs). A cache that records neither gets the default style, with a warning."""
    config = cache.header.provenance.get("config") or {}
    if style is None and config.get("prompt"):
        literal = str(config["prompt"])
        return (lambda item: literal), f"prompt {literal!r}"
    recorded = config.get("prompts")
    if style is not None and recorded is not None and style != recorded:
        _log.warning("the cache's audio was read with --prompts %s; the text side gets %s", recorded, style)
    if style is None and recorded is None:
        _log.warning("%s records no prompt style; the text side gets %s", cache.path, DEFAULT_PROMPT_STYLE)
    chosen = check_prompt_style(style or recorded or DEFAULT_PROMPT_STYLE)
    return (lambda item: task_prompt(item.task, chosen).for_item(item)), chosen


def _check(cache: ActivationCache, spoken: SpokenSet, system: object) -> None:
    """InterpError (one line) for a cache of another model or weights, of another set, or without audio rows."""
    name = str(getattr(system, "name", type(system).__name__))
    if cache.model != name:
        raise InterpError(f"{cache.path} was made with {cache.model!r}, not {name!r}; compare it with its own model")
    if other_weights(cache.header.model_info, system, None):
        raise InterpError(f"{cache.path} was made with other weights of {name!r} "
                          f"({cache.header.model_info.get('weights')})")
    if cache.header.dataset != dataset_identity(spoken):
        raise InterpError(f"{cache.path} was extracted from {cache.header.dataset}, not from {spoken.root} "
                          f"({dataset_identity(spoken)})")
    if cache.positions == "text":
        raise InterpError(f"{cache.path} holds text positions only; extract with --positions audio (or all)")


def _timed_items(cache: ActivationCache, spoken: SpokenSet) -> tuple[list[Item], int]:
    """(the cached items with word timings, in cache order; how many cached items have none)."""
    by_id = {item.id: item for item in spoken.items}
    cached = [by_id[meta.id] for meta in cache.items if meta.id in by_id]
    timed = [item for item in cached if item.words]
    if len(timed) < len(cached):
        _log.warning("%d of %d items have no word timings and are left out (only TTS-made items carry them)",
                     len(cached) - len(timed), len(cached))
    return timed, len(cached) - len(timed)


def _audio_means(cache: ActivationCache, site: str, ids: list[str], weights: sparse.csr_matrix) -> np.ndarray:
    """(words, d) float64 word means of one site's audio rows, streamed batch by batch."""
    columns, out, start = weights.tocsc(), np.zeros((weights.shape[0], cache.dims[site])), 0
    for x, _ in cache.iter_batches(site, items=ids):
        out += columns[:, start:start + len(x)] @ x.astype(np.float64)
        start += len(x)
    return out


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _test_words(word_item: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, int]:
    """(test mask over words, number of test items): the split is over the items that have aligned words."""
    present = np.unique(word_item)
    test_items = present[split_items(present.size, test_fraction, seed)]
    return np.isin(word_item, test_items), int(test_items.size)


def compare_text(cache: ActivationCache, spoken: SpokenSet, system: object, *, text_states_path: Path,
                 layers: str | None = None, prompts: str | None = None, test_fraction: float = 0.25,
                 n_folds: int = 5, seed: int = 0, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """The comparison as a JSON-ready dict (no provenance): one entry per layer with CKA, the probes' R²,
    n_words and n_items. system: the model the cache was made with (its own LLM reads the transcripts);
    layers: a spec of cached layers (interp.sites.parse_layers, default all); prompts: the text side's prompt
    style (default the cache's own); the text side is cached at text_states_path (see text_side).
    """
    chosen = parse_layers(layers, llm_layers(cache.sites))
    sites = [f"llm.layers.{layer}" for layer in chosen]
    _check(cache, spoken, system)
    llm = text_llm_of(system)
    width = int(llm.model.config.hidden_size)
    if cache.dims[sites[0]] != width:
        raise InterpError(f"{cache.path}: {sites[0]} rows are {cache.dims[sites[0]]} wide; {llm.name} has {width}")
    items, untimed = _timed_items(cache, spoken)
    if not items:
        raise InterpError(f"no item of {spoken.root} has word timings; compare-text aligns words by their timings")
    prompt_for, described = cache_prompt_for(cache, prompts)
    header = {"model": cache.model, "model_info": cache.header.model_info, "dataset": cache.header.dataset,
              "prompts": described}
    states = text_states(llm, items, prompt_for, sites, text_states_path, header, progress=progress)
    ids = [item.id for item in items]
    alignment = align_words(items, cache.row_table(items=ids), states.offsets, states.rows)
    if len(alignment.words) < 4:
        raise InterpError(f"only {len(alignment.words)} words of {len(items)} items align to both sides "
                          f"(left out: {alignment.skipped}); the measures need at least 4")
    test, n_test = _test_words(alignment.word_item, test_fraction, seed)
    targets = np.stack([bag_of_characters(word) for word in alignment.words])
    rows = []
    for layer, site in zip(chosen, sites):
        audio = _audio_means(cache, site, ids, alignment.audio)
        text = alignment.text @ states.read(site).astype(np.float64)
        probe = cross_modal_probe(text, audio, targets, alignment.word_item, test, n_folds=n_folds, seed=seed)
        rows.append({"layer": layer, "site": site, "cka": _finite(linear_cka(audio, text)),
                     "cka_shuffled": _finite(shuffled_cka(audio, text, seed=seed)), "probe": probe.to_dict(),
                     "n_words": len(alignment.words), "n_items": alignment.n_items})
        _log.info("%s: CKA %s, probe text→audio R² %.3f", site, rows[-1]["cka"], probe.text_to_audio)
    return _report(cache, spoken, llm.name, states, described, alignment, untimed, rows,
                   split={"test_fraction": test_fraction, "n_test_items": n_test,
                          "n_train_items": alignment.n_items - n_test, "n_folds": n_folds, "seed": seed})


def _report(cache: ActivationCache, spoken: SpokenSet, text_llm: str, states: TextStates, prompts: str,
            alignment: Any, untimed: int, rows: list[dict[str, Any]], *, split: dict[str, Any]) -> dict[str, Any]:
    return {
        "analysis": "compare_text", "cache": str(cache.path), "model": cache.model, "text_llm": text_llm,
        "data": str(spoken.root), "prompts": prompts, "text_states": str(states.path),
        "n_items": alignment.n_items, "n_words": len(alignment.words),
        "skipped_items": {"no_word_timings": untimed}, "skipped_words": dict(alignment.skipped), "split": split,
        "measures": {
            "cka": "linear CKA (Kornblith et al. 2019) between audio-side and text-side word means",
            "cka_shuffled": "mean linear CKA over 10 random re-pairings of the words: the chance level",
            "probe": "ridge from word means to the word's bag of characters (28 counts), held-out R² over the "
                     "test items' words; text_to_audio: trained on text, tested on audio",
        },
        "layers": rows,
    }


def write_compare_text(cache: ActivationCache, spoken: SpokenSet, system: object, out: Path, *,
                       provenance: dict[str, Any], **options: Any) -> list[Path]:
    """Run `compare_text` (options: its keywords) with the text side cached in out/text_states.h5, then write
    out/compare_text.json (with `provenance`) and out/compare_text.html (plotly.js inlined: no network request).
    Returns the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = compare_text(cache, spoken, system, text_states_path=out / TEXT_STATES, **options)
    report["provenance"] = provenance
    results = write_text_atomic(out / RESULTS, json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False)
                                + "\n")
    figure = compare_text_figure(report)
    html = write_atomic(out / FIGURE, lambda tmp: figure.write_html(str(tmp), include_plotlyjs=True,
                                                                    full_html=True))
    return [results, html, out / TEXT_STATES]
