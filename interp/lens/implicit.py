"""An item's lens text (LENS_TEXT_RULE), and the implicit cascade that answers from it.

The lens text of an item at one layer is its top-1 lens tokens in row order, non-word tokens dropped (the
normalisation rule of interp.lens.tokens), consecutive repeats of the same normalised token collapsed to the
first, then decoded together. `implicit_cascade` gives the lens texts of a set's items to the model's own text
LLM as an `ImplicitCascade` (interp.models.implicit_cascade), a system the behaviour harness runs like any
other: forced choice by summed log-likelihood, the run's calibration, `transcribe` items scored against the real
transcript, predictions in the run's layout (`RUN/implicit-cascade-L<layer>/<set>.jsonl`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

import numpy as np

from interp.data.manifest import SpokenSet
from interp.errors import InterpError
from interp.lens.logit_lens import LensResult
from interp.lens.tokens import TokenNormalizer
from interp.models.implicit_cascade import ImplicitCascade
from interp.models.text_lm import TextLM
from interp.sites import describe_layers

__all__ = ["LENS_TEXT_RULE", "lens_text", "implicit_cascade"]

_log = logging.getLogger(__name__)

LENS_TEXT_RULE = (
    "top-1 lens token per audio row in row order; non-word tokens dropped (same rule as the precision); "
    "consecutive repeats of the same normalised token collapsed to the first; the kept ids decoded together, "
    "whitespace collapsed")

_SPACES = re.compile(r"\s+")


def lens_text(top1: Iterable[int], normalizer: TokenNormalizer) -> str:
    """An item's lens text by LENS_TEXT_RULE: non-word tokens dropped, consecutive repeats collapsed, decoded.

    top1: `(rows,)` token ids of one item's audio rows, in row order.
    """
    kept: list[int] = []
    previous: str | None = None
    for token_id in top1:
        text = normalizer.token(token_id)
        if text is None or text == previous:
            continue
        kept.append(int(token_id))
        previous = text
    return _SPACES.sub(" ", normalizer.decode(kept)).strip() if kept else ""


def implicit_cascade(result: LensResult, spoken_set: SpokenSet, *, layer: int, llm: TextLM,
                     normalizer: TokenNormalizer) -> ImplicitCascade:
    """`llm` reading the lens text at `layer` of each item of the set that the lens result holds.

    Run it on `system.restrict(spoken_set)` (interp.behavior.run_system): items of the set missing from the
    cache are left out with a warning; none in common, or a layer the lens did not read, raises InterpError.
    """
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
    top1 = result.layers[layer].top1
    texts = {item.id: lens_text(top1[result.item_rows(position[item.id])], normalizer) for item in items}
    return ImplicitCascade(llm=llm, texts=texts, model=result.model, cache=result.cache,
                           cache_model=result.cache_model, layer=layer, norm=result.norm, text_rule=LENS_TEXT_RULE)
