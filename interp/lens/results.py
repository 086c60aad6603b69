"""The results file of `interp lens`: per-layer scores, per-item values and token strips, as one JSON.

Layout: cache, model, cache_model, norm, top_k, chunk_rows, n_items, n_audio_rows; the rules (normalisation,
scores) and the bootstrap settings; `layers` (per layer: site, precision and recall as {value, low, high, n} or
null, n_items, n_rows, n_tokens); `per_item` (ids and per-layer precision / recall, null where undefined);
`strips` (the first items' top-1 token per audio row and layer, with whether each was found in the transcript);
`implicit_cascade` (the caller's summary of its run, or null); provenance. Figures: interp.lens.figures.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from interp.estimates import estimate_dict
from interp.io import write_text_atomic
from interp.lens.figures import precision_figure, strip_figure
from interp.lens.logit_lens import LensResult
from interp.lens.scores import PRECISION_RULE, LensScores
from interp.lens.tokens import NORMALISATION_RULE, TokenNormalizer
from interp.provenance import provenance
from interp.sites import LLM_LAYER_PREFIX

__all__ = ["lens_report", "write_report"]


def _finite(values: Iterable[float], digits: int | None = None) -> list[float | None]:
    return [None if math.isnan(v) else (float(v) if digits is None else round(float(v), digits)) for v in values]


def _strip(result: LensResult, index: int, normalizer: TokenNormalizer) -> dict[str, Any]:
    """One item's top-1 token per audio row at every layer, and whether each is among the transcript's tokens."""
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
    """The results JSON of `interp lens` (layout in the module docstring)."""
    present = np.unique(result.item).tolist()
    ids = [result.items[i].id for i in present]
    return {
        "cache": result.cache, "model": result.model, "cache_model": result.cache_model, "norm": result.norm,
        "top_k": result.top_k, "chunk_rows": result.chunk_rows, "n_items": len(present), "n_audio_rows": result.rows,
        "normalisation": NORMALISATION_RULE, "scores": PRECISION_RULE,
        "bootstrap": {"n_boot": scores.n_boot, "level": scores.level, "seed": scores.seed},
        "layers": [{"layer": layer, "site": f"{LLM_LAYER_PREFIX}{layer}",
                    "precision": None if s.precision is None else estimate_dict(s.precision),
                    "recall": None if s.recall is None else estimate_dict(s.recall),
                    "n_items": s.n_items, "n_rows": s.n_rows, "n_tokens": s.n_tokens}
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
    write_text_atomic(out, json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    written = [out]
    if figures:
        for figure, suffix in ((precision_figure(report), "precision"), (strip_figure(report), "strip")):
            path = out.with_name(f"{out.stem}_{suffix}.html")
            figure.write_html(str(path), include_plotlyjs=True, full_html=True)
            written.append(path)
    return written
