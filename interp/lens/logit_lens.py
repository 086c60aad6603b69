"""The logit lens over a cache: every audio row of some `llm.layers.{i}` sites read through the model's head.

For each audio row of a cached `llm.layers.{i}` site, logits = W_U · RMSNorm_final(h) with the model's own
`Unembed` bundle, computed in chunks of rows so that at most chunk_rows x vocab logits exist at once, never
rows x vocab for the whole cache. Only the top-k token ids and their logits are kept (`LensResult`). Layers are
chosen with interp.sites' spec (`all`, `20,25,29`, `20-29`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from activations import ActivationCache
from activations.format import AUDIO, ItemMeta
from interp.errors import InterpError
from interp.lens.unembed import DEFAULT_CHUNK_ROWS, Unembed
from interp.models.base import SpeechLM
from interp.models.text_lm import TextLM
from interp.sites import LLM_LAYER_PREFIX, llm_layers, parse_layers

__all__ = ["LayerLens", "LensResult", "logit_lens"]

_log = logging.getLogger(__name__)

_READ_ROWS = 32768  # rows read from the cache at a time (whole items); the lens then works in chunk_rows


@dataclass(frozen=True)
class LayerLens:
    """The lens at one layer: ids `(rows, top_k)` int64 and logits `(rows, top_k)` float32 of every audio row of
    the result, in row order, each row's ids sorted by falling logit."""

    layer: int
    ids: np.ndarray
    logits: np.ndarray

    @property
    def site(self) -> str:
        return f"{LLM_LAYER_PREFIX}{self.layer}"

    @property
    def top1(self) -> np.ndarray:
        """`(rows,)` int64: the top-1 token id of each row."""
        return self.ids[:, 0]


@dataclass(frozen=True)
class LensResult:
    """Lens of a cache's audio rows at some layers.

    items: the cache's items (in cache order); item / pos / t_start / t_end: `(rows,)` per audio row (item
    indexes `items`; t_start / t_end in seconds, NaN where unknown), rows in cache order (by item, then
    position). layers: layer number -> LayerLens.
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


def _model_name(model: SpeechLM | TextLM) -> str:
    return str(getattr(model, "name", type(model).__name__))


def _check_widths(cache: ActivationCache, layers: Sequence[int], unembed: Unembed, model: SpeechLM | TextLM) -> None:
    """InterpError when a chosen layer's rows are not as wide as the unembedding reads; a warning when the cache
    was made with another model of the same width."""
    for layer in layers:
        site = f"{LLM_LAYER_PREFIX}{layer}"
        if cache.dims[site] != unembed.d:
            raise InterpError(f"{cache.path}: {site} rows are {cache.dims[site]} wide but {_model_name(model)}'s "
                              f"unembedding reads {unembed.d}; the cache was made with {cache.model!r}: pass that "
                              "model")
    if _model_name(model) != cache.model:
        _log.warning("lens of a cache made with %s read with %s's norm and unembedding", cache.model,
                     _model_name(model))


def _empty_result(cache: ActivationCache, model: SpeechLM | TextLM, items: list[str] | None, *, top_k: int,
                  norm: bool, chunk_rows: int) -> LensResult:
    """The result's audio-row table, with no layer read yet; InterpError when the cache has no audio rows."""
    table = cache.row_table(items)
    audio = table["kind"] == AUDIO
    if not audio.any():
        raise InterpError(f"{cache.path} has no audio rows (positions {cache.positions!r}); the lens reads audio "
                          "positions: extract with --positions audio or all")
    return LensResult(cache=str(cache.path), model=_model_name(model), cache_model=cache.model, norm=norm,
                      top_k=top_k, chunk_rows=chunk_rows, items=cache.items, item=table["item"][audio],
                      pos=table["pos"][audio], t_start=table["t_start"][audio], t_end=table["t_end"][audio])


def _read_layer(cache: ActivationCache, layer: int, unembed: Unembed, result: LensResult, items: list[str] | None,
                progress: Callable[[int], None] | None) -> LayerLens:
    """Stream one layer's audio rows through the lens, in cache order."""
    parts_ids, parts_logits = [], []
    for x, rows in cache.iter_batches(f"{LLM_LAYER_PREFIX}{layer}", batch_rows=max(result.chunk_rows, _READ_ROWS),
                                      items=items):
        keep = rows["kind"] == AUDIO
        if not keep.any():
            continue
        ids, logits = unembed.top_k(x[keep], k=result.top_k, norm=result.norm, chunk_rows=result.chunk_rows)
        parts_ids.append(ids)
        parts_logits.append(logits)
        if progress is not None:
            progress(int(keep.sum()))
    ids = np.concatenate(parts_ids) if parts_ids else np.zeros((0, result.top_k), dtype=np.int64)
    if len(ids) != result.rows:
        raise InterpError(f"{cache.path} changed while the lens read it (layer {layer}); rerun")
    return LayerLens(layer, ids, np.concatenate(parts_logits))


def logit_lens(cache: ActivationCache | Path, layers: Sequence[int] | str | None = None, *,
               model: SpeechLM | TextLM | None = None, top_k: int = 5, norm: bool = True,
               chunk_rows: int = DEFAULT_CHUNK_ROWS, items: Iterable[str] | None = None,
               progress: Callable[[int], None] | None = None) -> LensResult:
    """The logit lens of an ActivationCache (or a path to one) at the given layers (default: all it holds).

    model: anything with `final_norm` and `unembed` (a SpeechLM adapter, a TextLM); default
    `load_model(cache.model)`. Raises InterpError when the cache's widths do not match the model's, when a
    layer is missing, or when the cache has no audio rows. progress(rows) is called after each chunk.
    Memory: chunk_rows x vocab float32 logits at once, plus `(rows, top_k)` ids and logits per layer.
    """
    if not isinstance(cache, ActivationCache):
        cache = ActivationCache.open(cache)
    if layers is not None and not isinstance(layers, str):
        layers = ",".join(str(int(layer)) for layer in layers)
    chosen = parse_layers(layers, llm_layers(cache.sites))
    if model is None:
        from interp.models.mini import load_model

        model = load_model(cache.header.model_info.get("spec") or cache.model)
    unembed = Unembed.from_model(model)
    _check_widths(cache, chosen, unembed, model)
    item_list = list(items) if items is not None else None
    result = _empty_result(cache, model, item_list, top_k=top_k, norm=norm, chunk_rows=chunk_rows)
    for layer in chosen:
        result.layers[layer] = _read_layer(cache, layer, unembed, result, item_list, progress)
    return result
