"""Fit an eraser on a cache: label its audio rows, stream each site into a SiteFitter, record how it was made.

`fit_eraser` streams an activation cache site by site (batches of whole items, float64 statistics) on the cache's
AUDIO rows with a label only (interp.erasure.concepts), and keeps the fitted eraser of every site. One pass over
the cache per site; memory: the row labels, one batch and a d × d float64 covariance.

The random control matches another concept by rank (default: the same number of directions, whitened or raw
space) or, with ``match_by="variance"``, by the share of the raw variance removed: rank alone does not match a
control (on mini-ultravox, text LEACE of rank 32 removes ~40 % of the audio rows' raw variance, the whitened
random control of the same rank ~5 %), so the variance-matched control is the raw-space random eraser of the
smallest rank that removes at least what the concept's LEACE eraser removes at that site
(SiteFitter.random_matching_variance); the eraser's metadata records the target and achieved share per site.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from activations import ActivationCache
from interp.data.manifest import SpokenSet
from interp.erasure.concepts import CONCEPTS, DEFINITIONS, ConceptLabels, concept_labels
from interp.erasure.eraser import Eraser, SiteEraser
from interp.erasure.fitter import LEACE_SETTINGS, RandomSpace, SiteFitter
from interp.errors import InterpError
from interp.provenance import package_versions, provenance
from interp.sites import SiteError, describe_sites, expand_sites

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["MatchBy", "fit_eraser"]

MatchBy = Literal["rank", "variance"]

_log = logging.getLogger(__name__)
_BATCH_BYTES = 64 << 20  # float32 rows per streamed batch
_VERSIONS = ("concept-erasure", "torch", "safetensors", "cascade-interp")


@dataclass(frozen=True)
class _Target:
    """What a fit removes: the concept, the concept whose labels it streams, and for ``random`` what it matches
    (a concept, whose per-site rank or raw variance it copies, or a rank given outright)."""

    concept: str
    label_concept: str
    match: str | int | None = None
    matched_rank: int | None = None
    match_by: MatchBy = "rank"


def _target(concept: str, match: str | int | None, random_space: str, match_by: str = "rank") -> _Target:
    if concept not in CONCEPTS:
        raise InterpError(f"unknown concept {concept!r}; choose one of {', '.join(CONCEPTS)}")
    if concept != "random" and (match is not None or match_by != "rank"):
        raise InterpError("match and match_by belong to the random concept")
    if random_space not in ("whitened", "raw"):
        raise InterpError(f"random space must be whitened or raw, got {random_space!r}")
    if match_by not in ("rank", "variance"):
        raise InterpError(f"match_by must be rank or variance, got {match_by!r}")
    if concept != "random":
        return _Target(concept, concept)
    match = "text" if match is None else match
    if isinstance(match, str) and match.strip().isdigit():
        match = int(match)
    if isinstance(match, (int, np.integer)) and not isinstance(match, bool):
        if match < 0:
            raise InterpError(f"a random eraser's rank must be 0 or more, got {match}")
        if match_by == "variance":
            raise InterpError("match_by variance needs a concept to match (its LEACE eraser's variance), not a rank")
        return _Target(concept, "boc", match, int(match))  # boc: any labels will do to stream the moments
    if match in CONCEPTS and match != "random":
        if match_by == "variance" and random_space != "raw":
            raise InterpError("match_by variance searches raw-space ranks: pass random_space raw")
        return _Target(concept, str(match), match, match_by=match_by)
    raise InterpError(f"match must be a concept other than random, or a rank; got {match!r}")


def _fit_sites(sites: Sequence[str] | str | None, cache: ActivationCache) -> list[str]:
    if isinstance(sites, str):
        return expand_sites(sites, cache.sites)
    chosen = list(cache.sites if sites is None else sites)
    missing = [s for s in chosen if s not in cache.sites]
    if missing or not chosen:
        raise SiteError(f"unknown site {missing[0] if missing else '(none given)'!r}: this cache has "
                        f"{describe_sites(cache.sites)}")
    return chosen


def _model_tokenizer(cache: ActivationCache) -> PreTrainedTokenizerBase:
    """The cache model's tokenizer (the text concept aligns words to its tokens)."""
    from interp.models.mini import load_tokenizer

    return load_tokenizer(cache.header.model_info.get("spec") or cache.model)


def _streamed(cache: ActivationCache, labels: ConceptLabels, items: list[str] | None) -> ConceptLabels:
    """The labels of the rows a pass over `items` (None: all) reads, in cache order."""
    if items is None:
        return labels
    wanted = set(items)
    streamed = np.array([meta.id in wanted for meta in cache.items])[cache.row_table()["item"]]
    return replace(labels, z=labels.z[streamed], keep=labels.keep[streamed])


def _stream(cache: ActivationCache, site: str, labels: ConceptLabels, items: list[str] | None,
            batch_rows: int | None) -> SiteFitter:
    """One pass over `site`'s rows of `items` (None: all) into a SiteFitter of the labelled rows; `labels` are
    those of the rows the pass reads (_streamed)."""
    d = cache.dims[site]
    fitter, start = SiteFitter(d, labels.z.shape[1]), 0
    for x, _ in cache.iter_batches(site, batch_rows or max(1, _BATCH_BYTES // (4 * d)), items=items):
        keep = labels.keep[start:start + len(x)]
        if keep.any():
            fitter.update(torch.from_numpy(x[keep]).double(), torch.from_numpy(labels.z[start:start + len(x)][keep]))
        start += len(x)
    return fitter


def _site_eraser(fitter: SiteFitter, target: _Target, *, site: str, seed: int,
                 space: RandomSpace) -> tuple[SiteEraser, dict[str, Any] | None]:
    """The site's eraser, and for a variance-matched control what it matched: the matched LEACE eraser's rank
    and share of the raw variance (target), the control's rank and share (achieved)."""
    if target.concept != "random":
        return fitter.leace(), None
    if target.match_by == "variance":
        matched = fitter.leace()
        eraser = fitter.random_matching_variance(matched.variance_removed or 0.0, seed=seed, site=site)
        return eraser, {"matched_rank": matched.rank, "target": matched.variance_removed, "rank": eraser.rank,
                        "achieved": eraser.variance_removed}
    rank = target.matched_rank if target.matched_rank is not None else fitter.leace().rank
    return fitter.random(rank, seed=seed, site=site, space=space), None


def _concept_meta(target: _Target, labels: ConceptLabels, *, text_classes: int, pitch_bins: int,
                  random_space: str, seed: int) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": target.concept, "definition": DEFINITIONS[target.concept], "kind": labels.kind,
                            "columns": list(labels.columns), "labels": labels.info}
    if target.label_concept == "text":
        meta["text_classes"] = text_classes
    if target.label_concept == "pitch":
        meta["pitch_bins"] = pitch_bins
    if target.concept == "random":
        matched = None if target.matched_rank is not None else target.label_concept
        meta.update(match=target.match, match_by=target.match_by, matched_concept=matched,
                    matched_definition=None if matched is None else DEFINITIONS[matched], space=random_space, seed=seed)
    return meta


def _eraser_meta(cache: ActivationCache, target: _Target, labels: ConceptLabels, *, config: dict[str, Any],
                 seed: int, matched: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The eraser file's JSON metadata: the concept, the model, the cache, the fitter, versions and provenance;
    `matched`: per site, what a variance-matched control matched (concept.variance_match)."""
    concept = _concept_meta(target, labels, text_classes=config["text_classes"], pitch_bins=config["pitch_bins"],
                            random_space=config["random_space"], seed=seed)
    if matched:
        concept["variance_match"] = matched
    meta = {
        "concept": concept,
        "method": "leace" if target.concept != "random" else
                  f"random-{config['random_space']}" + ("-variance" if target.match_by == "variance" else ""),
        "model": cache.model, "model_info": cache.header.model_info,
        "cache": {"path": str(cache.path), "header_digest": cache.header.digest(), "dataset": cache.header.dataset,
                  "positions": cache.positions, "dtype": cache.dtype, "items": len(cache.items)},
        "fitted_rows": "audio rows of the cache (kind audio) with a label",
        "default_positions": "audio",
        "fitter": dict(LEACE_SETTINGS),
        "versions": package_versions(_VERSIONS),
        "provenance": provenance(command="interp erase fit", config=config, seed=seed),
    }
    return json.loads(json.dumps(meta, allow_nan=False, default=str))


def fit_eraser(cache: ActivationCache | str | Path, spoken_set: SpokenSet | str | Path, concept: str,
               sites: Sequence[str] | str | None = None, *, match: str | int | None = None, text_classes: int = 32,
               pitch_bins: int = 8, random_space: RandomSpace = "whitened", match_by: MatchBy = "rank", seed: int = 0,
               tokenizer: PreTrainedTokenizerBase | None = None, items: Sequence[str] | None = None,
               batch_rows: int | None = None, progress: Callable[[int, int, str], None] | None = None) -> Eraser:
    """Fit an eraser of `concept` at `sites` (a list, a site spec such as ``llm.layers.0,4,8`` or None for every
    cached site) on the cache's audio rows, with labels from `spoken_set` (see interp.erasure.concepts).

    match: for ``random``, the concept whose per-site rank it copies (default ``text``) or an int rank.
    text_classes: K of ``text`` (its rank is ≤ K); pitch_bins: bins of ``pitch`` (0: real-valued); random_space:
    ``whitened`` or ``raw``; match_by: ``rank`` (default) or ``variance`` (random only, raw space, a concept
    match: per site the smallest raw random eraser removing ≥ the concept's share of raw variance); seed: of the
    random basis; tokenizer: for ``text`` (default: the cache model's, loaded by name);
    items: fit on these item ids only (default all; e.g. a training split, to test erasure on held-out items);
    batch_rows: rows per streamed batch (default: ~64 MB); progress(sites done, sites in all, site) after each site.
    Raises InterpError for an unknown concept or site, or labels that cannot be made.
    """
    cache = cache if isinstance(cache, ActivationCache) else ActivationCache.open(cache)
    spoken_set = spoken_set if isinstance(spoken_set, SpokenSet) else SpokenSet.open(Path(spoken_set))
    target = _target(concept, match, random_space, match_by)
    chosen = _fit_sites(sites, cache)
    if target.label_concept == "text" and target.matched_rank is None and tokenizer is None:
        tokenizer = _model_tokenizer(cache)
    labels = concept_labels(cache, spoken_set, target.label_concept, text_classes=text_classes, pitch_bins=pitch_bins,
                            tokenizer=tokenizer, items=items)
    if labels.keep.sum() < 2:
        raise InterpError(f"only {int(labels.keep.sum())} row has a {target.label_concept} label; LEACE needs at "
                          "least 2")
    wanted = None if items is None else set(items)
    selection = None if wanted is None else [meta.id for meta in cache.items if meta.id in wanted]
    streamed = _streamed(cache, labels, selection)
    fitted: dict[str, SiteEraser] = {}
    matched: dict[str, dict[str, Any]] = {}
    for done, site in enumerate(chosen, start=1):
        fitter = _stream(cache, site, streamed, selection, batch_rows)
        fitted[site], match_info = _site_eraser(fitter, target, site=site, seed=seed, space=random_space)
        if match_info is not None:
            matched[site] = match_info
        _log.info("%s: %s eraser of rank %d of %d, %.1f%% of the raw variance", site, concept, fitted[site].rank,
                  cache.dims[site], 100 * (fitted[site].variance_removed or 0.0))
        if progress is not None:
            progress(done, len(chosen), site)
    meta = _eraser_meta(cache, target, labels, config={
        "cache": str(cache.path), "data": str(spoken_set.root), "concept": concept, "sites": chosen,
        "items": None if selection is None else len(selection), "match": target.match, "match_by": match_by,
        "text_classes": text_classes, "pitch_bins": pitch_bins, "random_space": random_space}, seed=seed,
        matched=matched)
    return Eraser(concept, fitted, meta)
