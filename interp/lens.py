"""RMSNorm logit lens on cached activations, bag-of-tokens precision, and the implicit cascade.

The lens
--------
For each audio row of a cached `llm.layers.{i}` site, `unembed(final_norm(h))` with the model's OWN final norm
module and unembedding (`model.final_norm`, `model.unembed`; Llama/SmolLM2 RMSNorm, Gemma's (1 + w) RMSNorm,
whatever the adapter returns), computed in chunks of rows so that at most `chunk_rows x vocab` logits exist at
once, never rows x vocab for the whole cache. Only the top-k token ids and their logits are kept. At the last
layer this equals the model's own logits at those positions (HF applies the same norm and lm_head there).

`norm=False` skips the norm and unembeds the raw residual stream. The argmax is invariant to the per-row
scalar 1 / rms(h), so what changes is the missing elementwise norm weight (and Gemma's +1): dimensions the
model scales down before unembedding (often massive-activation dims) then dominate the logits, and the top-1
tokens of early layers in particular are mostly junk. Logit values are also on another scale (x rms(h)).

Bag-of-tokens precision (NORMALISATION_RULE)
--------------------------------------------
Each token id becomes text by decoding it alone with the model's tokenizer; then: surrounding whitespace and
leading-space markers (byte-level `Ġ`, SentencePiece `▁`, a leading space) are stripped, the text is
lower-cased, and the token is DROPPED when it is a special token (tokenizer.all_special_ids, special added
tokens, ids beyond the tokenizer) or when what is left is empty or has no letter or digit (punctuation-only,
whitespace, undecodable byte pieces). Dropped tokens count nowhere (neither numerator nor denominator).

The transcript's reference tokens are normalised the same way, from the transcript tokenised with the model's
tokenizer four ways: as written, with a leading space, and both of those lower-cased (so a word-initial token
matches with or without its space, and "GREAT" -> `GRE`,`AT` still matches a lens token `great`).

* precision of an item = share of its kept top-1 lens tokens (one per audio row; a token repeated on several
  rows counts once per row) whose normalised text is among the reference tokens; undefined (NaN, item left
  out of that layer's mean) when no top-1 token of the item is kept.
* recall of an item = share of the DISTINCT normalised tokens of the transcript tokenised with a leading space
  (its words as they occur mid-utterance) that occur among the item's kept top-1 lens tokens.
* per layer: the mean over items, with a percentile bootstrap interval over items
  (`interp.stats.bootstrap_ci`, seeded).

The implicit cascade
--------------------
The lens text of an item at one layer (LENS_TEXT_RULE: its top-1 tokens in row order, non-word tokens dropped
as above, consecutive repeats of the same normalised token collapsed to the first, then decoded together) is
given to the model's own text LLM in the task's prompt, in place of the transcript the real cascade would
give it; answers are scored like every system (interp.behavior.answer_item: forced choice by summed
log-likelihood, batch calibration) and written in the behaviour layout (`RUN/implicit-cascade-L<layer>/<set>
.jsonl` + `<set>.json`), so `interp stats RUN` compares it with the real cascade.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from activations.format import AUDIO, ItemMeta
from interp.errors import InterpError
from interp.sites import LLM_LAYER_PREFIX, describe_layers, llm_layers, parse_layers

__all__ = [
    "DEFAULT_CHUNK_ROWS", "NORMALISATION_RULE", "PRECISION_RULE", "LENS_TEXT_RULE",
    "LayerLens", "LensResult", "TokenNormalizer", "TokenScore", "LayerScore", "LensScores",
    "lens_modules", "lens_rows", "logit_lens", "token_score", "score_lens",
    "lens_text", "implicit_cascade_llm", "implicit_cascade_name", "run_implicit_cascade", "lens_report",
    "write_report", "precision_figure", "strip_figure",
]

_log = logging.getLogger(__name__)

DEFAULT_CHUNK_ROWS = 2048
_READ_ROWS = 32768  # rows read from the cache at a time (whole items); the lens then works in chunk_rows

NORMALISATION_RULE = (
    "decode each token id alone with the model's tokenizer; strip surrounding whitespace and leading-space markers "
    "(Ġ, ▁, a space); lower-case; drop special tokens and tokens left empty or without any letter or digit "
    "(punctuation-only); dropped tokens count in neither numerator nor denominator. Reference tokens: the "
    "transcript tokenised as written, with a leading space, and both lower-cased, normalised the same way")
PRECISION_RULE = (
    "precision = share of an item's kept top-1 lens tokens (one per audio row, repeats counted per row) found "
    "among the reference tokens; recall = share of the distinct normalised tokens of ' ' + transcript found "
    "among the item's kept top-1 lens tokens; per layer the mean over items with a defined value, 95% "
    "percentile bootstrap interval over items")
LENS_TEXT_RULE = (
    "top-1 lens token per audio row in row order; non-word tokens dropped (same rule as the precision); "
    "consecutive repeats of the same normalised token collapsed to the first; the kept ids decoded together, "
    "whitespace collapsed")

_MARKERS = "Ġ▁ \t\n\r"
_SPACES = re.compile(r"\s+")


# ---------------------------------------------------------------------------------------------------------------
# layers


# ---------------------------------------------------------------------------------------------------------------
# the lens


def lens_modules(model: object) -> tuple[nn.Module, nn.Module]:
    """(final_norm, unembed) of a speech LLM or text LLM; InterpError when the model has none (a cascade)."""
    try:
        norm, unembed = model.final_norm, model.unembed
    except AttributeError:
        raise InterpError(f"{getattr(model, 'name', type(model).__name__)} has no final norm and unembedding "
                          "to read a logit lens with; use the speech LLM the cache was made with") from None
    return norm, unembed


def _unembed_width(unembed: nn.Module) -> int:
    weight = getattr(unembed, "weight", None)
    if weight is None or weight.ndim != 2:
        raise InterpError(f"the unembedding {type(unembed).__name__} has no (vocab, d) weight")
    return int(weight.shape[1])


@torch.no_grad()
def lens_rows(rows: np.ndarray | torch.Tensor, final_norm: nn.Module, unembed: nn.Module, *, top_k: int = 5,
              norm: bool = True, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Top-k token ids (rows, k) int64 and their logits (rows, k) float32 of `unembed(final_norm(rows))`.

    Rows go through in chunks of chunk_rows (at most chunk_rows x vocab float32 logits at once), on the device
    of the unembedding's weight. Ids are sorted by falling logit (torch.topk).
    """
    if top_k < 1:
        raise InterpError(f"--top-k must be at least 1, got {top_k}")
    if chunk_rows < 1:
        raise InterpError(f"chunk_rows must be at least 1, got {chunk_rows}")
    weight = unembed.weight
    n = int(rows.shape[0])
    ids = np.empty((n, top_k), dtype=np.int64)
    logits = np.empty((n, top_k), dtype=np.float32)
    for start in range(0, n, chunk_rows):
        chunk = rows[start:start + chunk_rows]
        h = (chunk if isinstance(chunk, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(chunk)))
        h = h.to(device=weight.device, dtype=weight.dtype)
        if norm:
            h = final_norm(h)
        values, indices = torch.topk(unembed(h).float(), k=top_k, dim=-1)
        ids[start:start + len(chunk)] = indices.cpu().numpy()
        logits[start:start + len(chunk)] = values.cpu().numpy()
    return ids, logits


@dataclass(frozen=True)
class LayerLens:
    """The lens at one layer: top-k ids and logits of every audio row of the result, in row order."""

    layer: int
    ids: np.ndarray
    logits: np.ndarray

    @property
    def site(self) -> str:
        return f"{LLM_LAYER_PREFIX}{self.layer}"

    @property
    def top1(self) -> np.ndarray:
        return self.ids[:, 0]


@dataclass(frozen=True)
class LensResult:
    """Lens of a cache's audio rows at some layers.

    items: the cache's items (in cache order); item / pos / t_start / t_end: per audio row (item indexes
    `items`), rows in cache order (by item, then position). layers: layer number -> LayerLens.
    """

    cache: str
    model: str
    cache_model: str
    norm: bool
    top_k: int
    chunk_rows: int
    items: tuple[ItemMeta, ...]
    item: np.ndarray
    pos: np.ndarray
    t_start: np.ndarray
    t_end: np.ndarray
    layers: dict[int, LayerLens] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return int(self.item.shape[0])

    def item_rows(self, index: int) -> np.ndarray:
        """Row indices (into the result's arrays) of item `index`, in position order."""
        bounds = np.searchsorted(self.item, [index, index + 1])
        return np.arange(bounds[0], bounds[1])


def _model_name(model: object) -> str:
    return str(getattr(model, "name", type(model).__name__))


def logit_lens(cache: Any, layers: Sequence[int] | str | None = None, *, model: object | None = None,
               top_k: int = 5, norm: bool = True, chunk_rows: int = DEFAULT_CHUNK_ROWS,
               items: Iterable[str] | None = None, progress: Callable[[int], None] | None = None) -> LensResult:
    """The logit lens of an ActivationCache (or a path to one) at the given layers (default: all it holds).

    model: anything with `final_norm` and `unembed` (a SpeechLM adapter, a TextLM); default
    `load_model(cache.model)`. Raises InterpError when the cache's widths do not match the model's, when a
    layer is missing, or when the cache has no audio rows. progress(rows) is called after each chunk.
    """
    from activations import ActivationCache

    if not hasattr(cache, "iter_batches"):
        cache = ActivationCache.open(cache)
    if layers is not None and not isinstance(layers, str):
        layers = ",".join(str(int(layer)) for layer in layers)
    chosen = parse_layers(layers, llm_layers(cache.sites))
    if model is None:
        from interp.models.mini import load_model

        model = load_model(cache.header.model_info.get("spec") or cache.model)
    final_norm, unembed = lens_modules(model)
    width = _unembed_width(unembed)
    for layer in chosen:
        site = f"{LLM_LAYER_PREFIX}{layer}"
        if cache.dims[site] != width:
            raise InterpError(f"{cache.path}: {site} rows are {cache.dims[site]} wide but {_model_name(model)}'s "
                              f"unembedding reads {width}; the cache was made with {cache.model!r}: pass that model")
    if _model_name(model) != cache.model:
        _log.warning("lens of a cache made with %s read with %s's norm and unembedding", cache.model,
                     _model_name(model))
    item_list = list(items) if items is not None else None
    table = cache.row_table(item_list)
    audio = table["kind"] == AUDIO
    if not audio.any():
        raise InterpError(f"{cache.path} has no audio rows (positions {cache.positions!r}); the lens reads audio "
                          "positions: extract with --positions audio or all")
    result = LensResult(cache=str(cache.path), model=_model_name(model), cache_model=cache.model, norm=norm,
                        top_k=top_k, chunk_rows=chunk_rows, items=cache.items, item=table["item"][audio],
                        pos=table["pos"][audio], t_start=table["t_start"][audio], t_end=table["t_end"][audio])
    for layer in chosen:
        parts_ids, parts_logits = [], []
        for x, rows in cache.iter_batches(f"{LLM_LAYER_PREFIX}{layer}", batch_rows=max(chunk_rows, _READ_ROWS),
                                          items=item_list):
            keep = rows["kind"] == AUDIO
            if not keep.any():
                continue
            ids, logits = lens_rows(x[keep], final_norm, unembed, top_k=top_k, norm=norm, chunk_rows=chunk_rows)
            parts_ids.append(ids)
            parts_logits.append(logits)
            if progress is not None:
                progress(int(keep.sum()))
        ids = np.concatenate(parts_ids) if parts_ids else np.zeros((0, top_k), dtype=np.int64)
        if len(ids) != result.rows:
            raise InterpError(f"{cache.path} changed while the lens read it (layer {layer}); rerun")
        result.layers[layer] = LayerLens(layer, ids, np.concatenate(parts_logits))
    return result


# ---------------------------------------------------------------------------------------------------------------
# bag-of-tokens precision


def _normalise_piece(text: str) -> str | None:
    text = text.strip().lstrip(_MARKERS).strip().lower()
    return text if any(ch.isalnum() for ch in text) else None


class TokenNormalizer:
    """Token ids -> normalised text (or None for dropped tokens), by NORMALISATION_RULE; memoised per id."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        special = set(int(i) for i in getattr(tokenizer, "all_special_ids", []) or [])
        for token_id, added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
            if getattr(added, "special", False):
                special.add(int(token_id))
        self.special_ids = frozenset(special)
        self.vocab_size = len(tokenizer)
        self._memo: dict[int, str | None] = {}

    def token(self, token_id: int) -> str | None:
        token_id = int(token_id)
        if token_id not in self._memo:
            if token_id in self.special_ids or not 0 <= token_id < self.vocab_size:
                self._memo[token_id] = None
            else:
                self._memo[token_id] = _normalise_piece(self.decode([token_id]))
        return self._memo[token_id]

    def tokens(self, ids: Iterable[int]) -> list[str | None]:
        return [self.token(i) for i in ids]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False,
                                     clean_up_tokenization_spaces=False)

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def reference(self, transcript: str) -> frozenset[str]:
        """Normalised tokens of the transcript tokenised as written, with a leading space, and both lower-cased."""
        variants = {transcript, " " + transcript, transcript.lower(), " " + transcript.lower()}
        return frozenset(t for text in variants for t in self.tokens(self._encode(text)) if t is not None)

    def transcript_tokens(self, transcript: str) -> list[str]:
        """Distinct normalised tokens of ' ' + transcript, in order (the denominator of recall)."""
        return list(dict.fromkeys(t for t in self.tokens(self._encode(" " + transcript)) if t is not None))


@dataclass(frozen=True)
class TokenScore:
    """Bag-of-tokens scores of one item at one layer (NaN where undefined)."""

    precision: float
    recall: float
    kept: int
    found: int
    reference: int


def token_score(top1: Iterable[int], transcript: str, normalizer: TokenNormalizer) -> TokenScore:
    """Precision and recall of an item's top-1 lens tokens against its transcript (see PRECISION_RULE)."""
    kept = [t for t in normalizer.tokens(top1) if t is not None]
    reference = normalizer.reference(transcript)
    found = sum(t in reference for t in kept)
    words = normalizer.transcript_tokens(transcript)
    lens_set = set(kept)
    recall = sum(t in lens_set for t in words) / len(words) if words else math.nan
    return TokenScore(precision=found / len(kept) if kept else math.nan, recall=recall, kept=len(kept),
                      found=found, reference=len(words))


@dataclass(frozen=True)
class LayerScore:
    """Mean precision / recall over items at one layer with bootstrap intervals (None when no item counts)."""

    layer: int
    precision: Any
    recall: Any
    n_items: int
    n_rows: int
    n_tokens: int


@dataclass(frozen=True)
class LensScores:
    """Per layer: LayerScore; per item and layer: precision / recall (arrays of shape (items,), NaN undefined)."""

    layers: dict[int, LayerScore]
    precision: dict[int, np.ndarray]
    recall: dict[int, np.ndarray]
    n_boot: int
    level: float
    seed: int


def _mean_ci(values: np.ndarray, *, n_boot: int, level: float, seed: int) -> Any:
    from interp.stats import bootstrap_ci

    defined = values[~np.isnan(values)]
    if defined.size == 0:
        return None
    return bootstrap_ci(np.mean, defined, n_boot=n_boot, level=level, seed=seed)


def score_lens(result: LensResult, normalizer: TokenNormalizer, *, n_boot: int = 1000, level: float = 0.95,
               seed: int = 0) -> LensScores:
    """Bag-of-tokens precision and recall of every item at every layer of the result, with bootstrap CIs."""
    present = np.unique(result.item)
    layers, precision, recall = {}, {}, {}
    for layer, lens in result.layers.items():
        p = np.full(len(result.items), np.nan)
        r = np.full(len(result.items), np.nan)
        kept = 0
        for index in present.tolist():
            score = token_score(lens.top1[result.item_rows(index)], result.items[index].transcript, normalizer)
            p[index], r[index] = score.precision, score.recall
            kept += score.kept
        precision[layer], recall[layer] = p, r
        layers[layer] = LayerScore(layer, _mean_ci(p, n_boot=n_boot, level=level, seed=seed),
                                   _mean_ci(r, n_boot=n_boot, level=level, seed=seed),
                                   n_items=int((~np.isnan(p)).sum()), n_rows=result.rows, n_tokens=kept)
    return LensScores(layers, precision, recall, n_boot, level, seed)


# ---------------------------------------------------------------------------------------------------------------
# the implicit cascade


def lens_text(top1: Iterable[int], normalizer: TokenNormalizer) -> str:
    """An item's lens text by LENS_TEXT_RULE: non-word tokens dropped, consecutive repeats collapsed, decoded."""
    kept: list[int] = []
    previous: str | None = None
    for token_id in top1:
        text = normalizer.token(token_id)
        if text is None or text == previous:
            continue
        kept.append(int(token_id))
        previous = text
    return _SPACES.sub(" ", normalizer.decode(kept)).strip() if kept else ""


def implicit_cascade_llm(model: object) -> Any:
    """The text LLM inside a speech LLM, as a TextLM: SmolLM2 for mini-ultravox, the language model of any
    Ultravox adapter; InterpError for other architectures (their LLM has no stand-alone causal-LM head here)."""
    from interp.models.text_lm import TextLM
    from interp.models.ultravox_lm import UltravoxSpeechLM

    name = _model_name(model)
    if isinstance(model, TextLM):
        return model
    if isinstance(model, UltravoxSpeechLM):
        if name == "mini-ultravox":
            from interp.models.mini import _smollm2

            llm = _smollm2()
            if llm.model is model.model.language_model:
                return llm
        return TextLM(model.model.language_model, model.tokenizer, name=f"{name}.language_model")
    raise InterpError(f"the implicit cascade needs the text LLM inside {name}; it is supported for Ultravox models "
                      "(mini-ultravox, tiny-ultravox, ultravox:PATH) only")


def implicit_cascade_name(layer: int, *, norm: bool = True) -> str:
    """Folder (system) name of the implicit cascade's predictions: implicit-cascade-L<layer>[-nonorm]."""
    return f"implicit-cascade-L{layer}" + ("" if norm else "-nonorm")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def run_implicit_cascade(result: LensResult, spoken_set: Any, run_dir: Path, *, layer: int, llm: Any,
                         normalizer: TokenNormalizer, progress: Callable[[int, int], None] | None = None,
                         seed: int = 0, prompt_style: str = "chat", calibration: str = "none") -> Path:
    """Answer the set's items that are in the lens result with `llm` reading their lens text at `layer`.

    Writes `run_dir/implicit-cascade-L<layer>[-nonorm]/<set>.jsonl` (one line per item, set order, under the
    run's prompt style and calibration (interp.task_prompts); `lens_text` holds what the LLM read) and its `<set>.json` sidecar (status done), the layout of
    interp.behavior, and returns the predictions path. Items of the set missing from the cache are skipped
    with a warning; none in common raises InterpError.
    """
    from interp.behavior import (CALIBRATION_RULES, LENGTH_POLICY, OPEN_ANSWER_RULE, PARSE_RULE, PREDICTIONS_SUFFIX,
                                 SIDECAR_SUFFIX, answer_item, finalise_choices, set_name)
    from interp.models.prompting import PlainPrompt
    from interp.provenance import provenance
    from interp.task_prompts import task_prompt
    from interp.text_metrics import normalize_transcript, word_error_rate

    if layer not in result.layers:
        raise InterpError(f"layer {layer} was not read by the lens (it read {describe_layers(sorted(result.layers))})")
    position = {meta.id: index for index, meta in enumerate(result.items)}
    present = set(np.unique(result.item).tolist())
    items = [item for item in spoken_set.items if position.get(item.id) in present]
    if not items:
        raise InterpError(f"no item of {spoken_set.root} is in the cache {result.cache}: was it extracted from "
                          "this set?")
    if len(items) < len(spoken_set.items):
        _log.warning("%d of %d items of %s are not in the cache; the implicit cascade answers the %d others",
                     len(spoken_set.items) - len(items), len(spoken_set.items), spoken_set.root, len(items))
    prompts = {task: task_prompt(task, prompt_style) for task in dict.fromkeys(item.task for item in items)}
    top1 = result.layers[layer].top1
    records, by_id = [], {}
    for done, item in enumerate(items, start=1):
        text = lens_text(top1[result.item_rows(position[item.id])], normalizer)
        record = answer_item(llm, spoken_set, dataclasses.replace(item, transcript=text), prompts[item.task])
        if item.task == "transcribe":  # scored against the real transcript, not the lens text it read
            record.update(correct=normalize_transcript(record["prediction"]) == normalize_transcript(item.transcript),
                          wer=word_error_rate([item.transcript], [record["prediction"]]),
                          ref_words=len(normalize_transcript(item.transcript).split()))
        record["lens_text"] = text
        records.append(record)
        by_id[item.id] = item
        if progress is not None:
            progress(done, len(items))
    final = finalise_choices(records, by_id, calibration=calibration)

    system = implicit_cascade_name(layer, norm=result.norm)
    name = set_name(Path(spoken_set.root))
    folder = Path(run_dir) / system
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}{PREDICTIONS_SUFFIX}"
    _write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in final))
    correct = sum(bool(r["correct"]) for r in final)
    by_task: dict[str, dict[str, int]] = {}
    for r in final:
        entry = by_task.setdefault(r["task"], {"items": 0, "correct": 0})
        entry["items"] += 1
        entry["correct"] += bool(r["correct"])
    counts: dict[str, Any] = {"items": len(final), "correct": correct,
                              "unparsed": sum(1 for r in final if r.get("prediction") == -1), "by_task": by_task}
    config = {
        "system": {"name": system, "spec": None, "class": "ImplicitCascade", "model": result.model,
                   "llm": getattr(llm, "name", None), "cache": result.cache, "cache_model": result.cache_model,
                   "layer": layer, "norm": result.norm},
        "prompts": {task: {"prompt": str(p.prompt), "style": p.style, "plain": isinstance(p.prompt, PlainPrompt),
                           "max_new_tokens": p.max_new_tokens}
                    for task, p in prompts.items()},
        "prompt_style": prompt_style,
        "calibration": {"name": calibration, "rule": CALIBRATION_RULES[calibration]},
        "rules": {"forced_choice": "log-likelihood", "length_policy": LENGTH_POLICY,
                  "parse": PARSE_RULE, "open_answers": OPEN_ANSWER_RULE, "lens_text": LENS_TEXT_RULE},
        "input": "logit-lens text",
    }
    sidecar = {
        "status": "done", "config": config,
        "set": {"name": name, "path": str(spoken_set.root), "items": len(spoken_set.items)},
        "limit": None, "seed": seed, "counts": counts, "accuracy": correct / len(final) if final else None,
        "provenance": provenance(command="interp lens --implicit-cascade",
                                 config={"cache": result.cache, "set": str(spoken_set.root), "layer": layer,
                                         "norm": result.norm}, seed=seed),
    }
    _write_atomic(folder / f"{name}{SIDECAR_SUFFIX}", json.dumps(sidecar, indent=2, ensure_ascii=False) + "\n")
    return path


# ---------------------------------------------------------------------------------------------------------------
# results file


def _estimate(estimate: Any) -> dict[str, Any] | None:
    if estimate is None:
        return None
    return {"value": estimate.value, "low": estimate.low, "high": estimate.high, "n": estimate.n}


def _finite(values: Iterable[float], digits: int | None = None) -> list[float | None]:
    return [None if math.isnan(v) else (float(v) if digits is None else round(float(v), digits)) for v in values]


def _strip(result: LensResult, index: int, normalizer: TokenNormalizer) -> dict[str, Any]:
    rows = result.item_rows(index)
    meta = result.items[index]
    reference = normalizer.reference(meta.transcript)
    layers = {}
    for layer, lens in result.layers.items():
        ids = lens.top1[rows]
        normalised = normalizer.tokens(ids)
        layers[str(layer)] = {"ids": ids.tolist(), "tokens": [normalizer.decode([i]) for i in ids],
                              "found": [None if t is None else t in reference for t in normalised]}
    return {"id": meta.id, "transcript": meta.transcript, "pos": result.pos[rows].tolist(),
            "t_start": _finite(result.t_start[rows].tolist(), 4), "t_end": _finite(result.t_end[rows].tolist(), 4),
            "layers": layers}


def lens_report(result: LensResult, scores: LensScores, normalizer: TokenNormalizer, *, strip_items: int = 3,
                implicit: dict[str, Any] | None = None, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The results JSON of `interp lens` (see the CLI's help and README for the layout)."""
    from interp.provenance import provenance

    present = np.unique(result.item).tolist()
    ids = [result.items[i].id for i in present]
    return {
        "cache": result.cache, "model": result.model, "cache_model": result.cache_model, "norm": result.norm,
        "top_k": result.top_k, "chunk_rows": result.chunk_rows, "n_items": len(present), "n_audio_rows": result.rows,
        "normalisation": NORMALISATION_RULE, "scores": PRECISION_RULE,
        "bootstrap": {"n_boot": scores.n_boot, "level": scores.level, "seed": scores.seed},
        "layers": [{"layer": layer, "site": f"{LLM_LAYER_PREFIX}{layer}", "precision": _estimate(s.precision),
                    "recall": _estimate(s.recall), "n_items": s.n_items, "n_rows": s.n_rows, "n_tokens": s.n_tokens}
                   for layer, s in sorted(scores.layers.items())],
        "per_item": {"ids": ids,
                     "precision": {str(layer): _finite(v[present]) for layer, v in sorted(scores.precision.items())},
                     "recall": {str(layer): _finite(v[present]) for layer, v in sorted(scores.recall.items())}},
        "strips": [_strip(result, index, normalizer) for index in present[:max(strip_items, 0)]],
        "implicit_cascade": implicit,
        "provenance": provenance(command="interp lens", config=config or {}, seed=scores.seed),
    }


def write_report(report: dict[str, Any], out: Path, *, figures: bool = True) -> list[Path]:
    """Write the results JSON (atomically) and, with figures, `<stem>_precision.html` and `<stem>_strip.html`
    beside it (self-contained, plotly.js inlined). Returns the paths written."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(out, json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    written = [out]
    if figures:
        for figure, suffix in ((precision_figure(report), "precision"), (strip_figure(report), "strip")):
            path = out.with_name(f"{out.stem}_{suffix}.html")
            figure.write_html(str(path), include_plotlyjs=True, full_html=True)
            written.append(path)
    return written


# ---------------------------------------------------------------------------------------------------------------
# figures


def precision_figure(report: dict[str, Any]) -> Any:
    """Bag-of-tokens precision and recall by layer, each with its bootstrap interval as a band."""
    import plotly.graph_objects as go

    figure = go.Figure()
    colours = {"precision": ("#1f77b4", "rgba(31,119,180,0.2)"), "recall": ("#d62728", "rgba(214,39,40,0.15)")}
    for metric, (line, band) in colours.items():
        rows = [r for r in report["layers"] if r[metric] is not None]
        x = [r["layer"] for r in rows]
        figure.add_trace(go.Scatter(x=x + x[::-1], y=[r[metric]["high"] for r in rows]
                                    + [r[metric]["low"] for r in rows][::-1], fill="toself", fillcolor=band,
                                    line={"width": 0}, hoverinfo="skip", showlegend=False, legendgroup=metric))
        figure.add_trace(go.Scatter(x=x, y=[r[metric]["value"] for r in rows], mode="lines+markers", name=metric,
                                    legendgroup=metric, line={"color": line},
                                    customdata=[[r[metric]["low"], r[metric]["high"], r["n_items"]] for r in rows],
                                    hovertemplate="layer %{x}: %{y:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}]"
                                                  " n=%{customdata[2]}<extra>" + metric + "</extra>"))
    level = report.get("bootstrap", {}).get("level", 0.95)
    norm = "final norm applied" if report.get("norm", True) else "NO final norm"
    figure.update_layout(title=f"Logit lens at audio positions: bag-of-tokens precision / recall by layer "
                               f"({report['model']}, {norm}, {level:.0%} bootstrap CI, {report['n_items']} items)",
                         xaxis={"title": "layer", "dtick": 1 if len(report["layers"]) <= 32 else None},
                         yaxis={"title": "share of tokens", "range": [0, 1]})
    return figure


def strip_figure(report: dict[str, Any]) -> Any:
    """Per strip item: rows = layers, columns = audio rows, cell text = top-1 lens token; colour = found in the
    transcript (1), not found (0), dropped by the normalisation (blank). Title of each panel: the transcript."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    strips = report.get("strips", [])
    if not strips:
        figure = go.Figure()
        figure.add_annotation(text="no strip items", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
        return figure
    titles = [f"{s['id']}: “{s['transcript']}”" for s in strips]
    figure = make_subplots(rows=len(strips), cols=1, subplot_titles=titles, vertical_spacing=0.25 / len(strips))
    for row, strip in enumerate(strips, start=1):
        layers = sorted(strip["layers"], key=int)
        z = [[None if f is None else float(f) for f in strip["layers"][layer]["found"]] for layer in layers]
        text = [[t.replace("\n", "⏎") for t in strip["layers"][layer]["tokens"]] for layer in layers]
        x = [f"{s:.2f}s" if s is not None else str(p) for s, p in zip(strip["t_start"], strip["pos"])]
        figure.add_trace(go.Heatmap(z=z, x=list(range(len(x))), y=[f"L{layer}" for layer in layers], text=text,
                                    texttemplate="%{text}", textfont={"size": 9}, zmin=0, zmax=1,
                                    colorscale=[[0, "#f4f4f4"], [1, "#8fd18f"]], showscale=False,
                                    customdata=[x] * len(layers),
                                    hovertemplate="%{y} row %{x} (%{customdata}): %{text}<extra></extra>"),
                         row=row, col=1)
        figure.update_xaxes(title_text="audio row", row=row, col=1)
    figure.update_layout(title="Top-1 logit-lens token per audio row and layer (green: in the transcript)",
                         height=max(400, 60 + len(strips) * (40 + 22 * max(len(s["layers"]) for s in strips))),
                         width=max(900, 60 * max(len(s["pos"]) for s in strips)))
    return figure
